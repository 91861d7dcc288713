package releaser

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestLock(t *testing.T) {
	e := newEnv(t, Config{})
	e.r.now = time.Now
	unlock, err := e.r.Lock("alice")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.r.Lock("bob")
	var le *LockedError
	if !errors.As(err, &le) || !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock: %v, want a *LockedError", err)
	}
	if le.Holder != "alice" || time.Since(le.Since) > time.Minute || time.Since(le.Since) < 0 {
		t.Errorf("LockedError = %+v, want alice since just now", le)
	}
	if !regexp.MustCompile(`^deploy in progress by alice since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+s ago\)$`).MatchString(err.Error()) {
		t.Errorf("Error() = %q", err)
	}
	if err := e.r.Recover(); !errors.Is(err, ErrLocked) {
		t.Errorf("Recover while locked: %v, want ErrLocked", err)
	}

	unlock()
	unlock() // a second call is harmless
	if _, err := os.Stat(filepath.Join(e.r.Path(), ".slipway", "deploy.lock")); err != nil {
		t.Errorf("lock file after unlock: %v (it must stay)", err)
	}
	if _, err := os.Stat(filepath.Join(e.r.Path(), ".slipway", "deploy.holder")); !os.IsNotExist(err) {
		t.Errorf("holder file after unlock: %v, want it gone", err)
	}
	unlock, err = e.r.Lock("bob")
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock()
}

func TestLockedErrorMessage(t *testing.T) {
	tests := []struct {
		err  *LockedError
		want string
	}{
		{&LockedError{Holder: "alice", Since: time.Now().Add(-72 * time.Second)}, "deploy in progress by alice since %s (1m12s ago)"},
		{&LockedError{}, "deploy in progress (holder unknown)"},
	}
	for _, tt := range tests {
		want := tt.want
		if !tt.err.Since.IsZero() {
			want = fmt.Sprintf(want, tt.err.Since.UTC().Format(time.RFC3339))
		}
		if got := tt.err.Error(); got != want {
			t.Errorf("Error() = %q, want %q", got, want)
		}
	}
}

// TestLockReleasedOnKill takes the lock in another process, kills it with SIGKILL, and
// takes the lock at once: no manual unlock, no stale lock.
func TestLockReleasedOnKill(t *testing.T) {
	e := newEnv(t, Config{})
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$")
	cmd.Env = append(os.Environ(), "RELEASER_LOCK_HELPER="+e.r.Path())
	stdin, err := cmd.StdinPipe() // held open: the child waits on it until killed
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "locked" {
	}
	if sc.Text() != "locked" {
		t.Fatalf("helper did not lock: %v", sc.Err())
	}

	_, err = e.r.Lock("parent")
	var le *LockedError
	if !errors.As(err, &le) || le.Holder != "child" {
		t.Fatalf("Lock while the child holds it: %v, want a *LockedError by child", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	unlock, err := e.r.Lock("parent")
	if err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	unlock()
}

// TestLockHelperProcess is the child of TestLockReleasedOnKill.
func TestLockHelperProcess(t *testing.T) {
	path := os.Getenv("RELEASER_LOCK_HELPER")
	if path == "" {
		t.Skip("helper process of TestLockReleasedOnKill")
	}
	r, err := New(Config{Path: path}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lock("child"); err != nil {
		t.Fatal(err)
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
}
