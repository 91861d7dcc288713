package releaser

import (
	"bufio"
	"context"
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
	defer stdin.Close() // the child is killed anyway: its error is of no use
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill fails on one dead already and Wait reports the signal: only the reaping matters.
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
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
	if h, err := e.r.Holder(); err != nil || h == nil || h.Holder != "child" {
		t.Fatalf("Holder() while the child holds it: %+v, %v", h, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // "signal: killed", as it should be
	// The child could not remove its holder file; it is stale now, and ignored.
	if _, err := os.Stat(filepath.Join(e.r.Path(), ".slipway", "deploy.holder")); err != nil {
		t.Fatalf("holder file of the killed child: %v (the test means nothing without it)", err)
	}
	if h, err := e.r.Holder(); err != nil || h != nil {
		t.Errorf("Holder() after the holder was killed: %+v, %v; want nil", h, err)
	}
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
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent kills us while we wait here
}

func TestHolder(t *testing.T) {
	e := newEnv(t, Config{})
	other, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	holderFile := filepath.Join(e.r.Path(), ".slipway", "deploy.holder")
	steps := []struct {
		name string
		do   func()
		want string // "" : free
	}{
		{"free", func() {}, ""},
		{"stale holder file, lock free", func() {
			stale := `{"holder":"ghost","since":"2026-01-01T00:00:00Z","pid":1}` + "\n"
			if err := os.WriteFile(holderFile, []byte(stale), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"held", func() {
			unlock, err := e.r.Lock("alice")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(unlock)
		}, "alice"},
	}
	for _, s := range steps {
		s.do()
		for i, r := range []*Releaser{e.r, other} {
			h, err := r.Holder()
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			switch {
			case s.want == "" && h != nil:
				t.Errorf("%s (releaser %d): Holder() = %+v, want nil", s.name, i, h)
			case s.want != "" && (h == nil || h.Holder != s.want || !h.Since.Equal(e.clock)):
				t.Errorf("%s (releaser %d): Holder() = %+v, want %s since %v", s.name, i, h, s.want, e.clock)
			}
		}
	}
	// Lock's refusal names the same holder.
	var le *LockedError
	if _, err := other.Lock("bob"); !errors.As(err, &le) || le.Holder != "alice" {
		t.Errorf("Lock while alice holds it: %v", err)
	}
}

func TestLockWait(t *testing.T) {
	e := newEnv(t, Config{})
	unlockA, err := e.r.Lock("alice")
	if err != nil {
		t.Fatal(err)
	}

	// It waits for the unlock: alice lets go only once bob has been refused.
	busy := make(chan struct{}, 1)
	e.r.lockBusy = func() {
		select {
		case busy <- struct{}{}:
		default:
		}
	}
	type result struct {
		unlock func()
		err    error
	}
	res := make(chan result)
	go func() {
		unlock, err := e.r.LockWait(t.Context(), "bob")
		res <- result{unlock, err}
	}()
	<-busy
	unlockA()
	got := <-res
	if got.err != nil {
		t.Fatalf("LockWait: %v", got.err)
	}
	if h, err := e.r.Holder(); err != nil || h == nil || h.Holder != "bob" {
		t.Errorf("Holder() after LockWait = %+v, %v; want bob", h, err)
	}

	// It gives up when ctx is done, with the holder's error.
	ctx, cancel := context.WithCancel(t.Context())
	e.r.lockBusy = cancel
	_, err = e.r.LockWait(ctx, "carol")
	var le *LockedError
	if !errors.As(err, &le) || le.Holder != "bob" {
		t.Errorf("LockWait with ctx done: %v, want a *LockedError by bob", err)
	}
	got.unlock()

	// A done ctx still gets one try.
	e.r.lockBusy = nil
	unlock, err := e.r.LockWait(ctx, "dave")
	if err != nil {
		t.Fatalf("LockWait on a free lock with ctx done: %v", err)
	}
	unlock()
}

func TestFreeze(t *testing.T) {
	e := newEnv(t, Config{})
	other, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	other.now = func() time.Time { return e.clock }
	frozen := func(want *Freeze) {
		t.Helper()
		for _, r := range []*Releaser{e.r, other} {
			f, err := r.Frozen()
			if err != nil {
				t.Fatal(err)
			}
			if (f == nil) != (want == nil) || (f != nil && (f.By != want.By || f.Message != want.Message || !f.Since.Equal(want.Since))) {
				t.Errorf("Frozen() = %+v, want %+v", f, want)
			}
		}
	}
	frozen(nil)
	if err := e.r.Unfreeze(); !errors.Is(err, ErrNotFrozen) {
		t.Errorf("Unfreeze when not frozen: %v, want ErrNotFrozen", err)
	}
	if err := e.r.Freeze("alice", "release week"); err != nil {
		t.Fatal(err)
	}
	frozen(&Freeze{By: "alice", Message: "release week", Since: e.clock})
	e.tick(time.Hour)
	if err := other.Freeze("bob", "incident 42"); err != nil {
		t.Fatal(err)
	}
	frozen(&Freeze{By: "bob", Message: "incident 42", Since: e.clock})
	// A restart, a lock and an unlock change nothing.
	if err := e.r.Recover(); err != nil {
		t.Fatal(err)
	}
	unlock, err := e.r.Lock("carol")
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	frozen(&Freeze{By: "bob", Message: "incident 42", Since: e.clock})
	if err := e.r.Unfreeze(); err != nil {
		t.Fatal(err)
	}
	frozen(nil)
	if err := other.Unfreeze(); !errors.Is(err, ErrNotFrozen) {
		t.Errorf("second Unfreeze: %v, want ErrNotFrozen", err)
	}
	if m, _ := filepath.Glob(filepath.Join(e.r.Path(), ".slipway", ".freeze*")); len(m) != 0 { // the only error: a bad pattern
		t.Errorf("temporary files left: %v", m)
	}
	// Unreadable is not "not frozen".
	if err := os.WriteFile(filepath.Join(e.r.Path(), ".slipway", "freeze.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := e.r.Frozen(); err == nil {
		t.Errorf("Frozen() with a corrupt file = %+v, nil", f)
	}
}
