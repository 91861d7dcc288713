package gitserver

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// fakeCommander records the commands it runs. "status" writes to both streams and exits 3;
// "hang" waits for its context; "panic" panics.
type fakeCommander struct {
	started   chan struct{} // closed when "hang" starts
	cancelled chan error    // gets "hang"'s ctx.Err()

	mu    sync.Mutex
	calls []string // "<name> <fingerprint> <args>"
}

func (c *fakeCommander) RunCommand(ctx context.Context, who Identity, args []string, _ io.Reader, stdout, stderr io.Writer) int {
	c.mu.Lock()
	c.calls = append(c.calls, fmt.Sprintf("%s %s %q", who.Name, who.KeyFingerprint, args))
	c.mu.Unlock()
	switch args[0] {
	case "status":
		// The tests check what arrives: a failed write shows there.
		_, _ = fmt.Fprintf(stdout, "status of everything %q\n", args[1:])
		_, _ = fmt.Fprintln(stderr, "a note on stderr")
		return 3
	case "hang":
		close(c.started)
		select {
		case <-ctx.Done():
			c.cancelled <- ctx.Err()
		case <-time.After(20 * time.Second):
			c.cancelled <- nil
		}
		return 0
	case "panic":
		panic("commander bug")
	}
	_, _ = fmt.Fprintf(stderr, "unknown command %q\n", args[0]) // checked where it arrives, if at all
	return 2
}

func (c *fakeCommander) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

func TestOperatorCommand(t *testing.T) {
	t.Parallel()
	c := &fakeCommander{}
	h := start(t, &fakeDeployer{}, func(cfg *Config) { cfg.Commands = c })
	fp := gossh.FingerprintSHA256(h.aliceKey.Key)

	stdout, stderr, err := h.ssh(h.alice, "status", "--json")
	if code := exitCode(err); code != 3 {
		t.Errorf("exit %d, want 3 (%v)", code, err)
	}
	if stdout != "status of everything [\"--json\"]\n" || stderr != "a note on stderr\n" {
		t.Errorf("stdout %q, stderr %q", stdout, stderr)
	}
	// ssh joins its arguments with spaces; the server splits them again like a shell.
	_, _, _ = h.ssh(h.alice, "status", `'a b'`, `"c\"d"`, "e\\ f") // exits 3 as above; what ran is checked below
	want := []string{
		fmt.Sprintf("alice %s %q", fp, []string{"status", "--json"}),
		fmt.Sprintf("alice %s %q", fp, []string{"status", "a b", `c"d`, "e f"}),
	}
	if got := c.got(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("commands run:\n%q\nwant\n%q", got, want)
	}

	// Refused before the Commander: a shell, an unclosed quote, control characters, too long.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "slipway: no shell here"},
		{[]string{"status 'a"}, "slipway: command has an unclosed quote"},
		{[]string{"status a\\"}, "slipway: command ends with a backslash"},
		{[]string{"status\x01"}, "slipway: command holds control characters"},
		{[]string{"status\t--json"}, "slipway: command holds control characters"},
		{[]string{"status " + strings.Repeat("x", 5000)}, "slipway: command is longer than 4096 bytes"},
		{[]string{"''"}, "slipway: empty command"},
	} {
		_, stderr, err := h.ssh(h.alice, append([]string{"-T"}, tc.args...)...)
		if exitCode(err) != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("ssh %q: exit %d, stderr %q; want exit 1 and %q", tc.args, exitCode(err), stderr, tc.want)
		}
	}
	if n := len(c.got()); n != 2 {
		t.Errorf("Commander ran %d commands, want 2", n)
	}

	// git is still git's, also with a Commander.
	work := h.work()
	h.pushed(work)
	if out, stderr, err := h.exec(h.dir, h.alice, "git", "ls-remote", h.url("myapp/production")); err != nil || !strings.Contains(out, "refs/heads/main") {
		t.Errorf("ls-remote: %v %q\n%s", err, out, stderr)
	}
	if n := len(c.got()); n != 2 {
		t.Errorf("Commander ran %d commands, want 2", n)
	}

	// A panicking Commander takes only its own session down.
	if _, stderr, err := h.ssh(h.alice, "panic"); exitCode(err) != 1 || !strings.Contains(stderr, "slipway: internal error") {
		t.Errorf("panic: exit %d, stderr %q", exitCode(err), stderr)
	}
	if _, _, err := h.ssh(h.alice, "status"); exitCode(err) != 3 {
		t.Errorf("status after a panic: %v", err)
	}
}

// TestOperatorCommandOutputBeforeExit: a command's whole output reaches the client before
// its exit status, also when it is large.
func TestOperatorCommandOutputBeforeExit(t *testing.T) {
	t.Parallel()
	big := &bigCommander{lines: 20000}
	h := start(t, &fakeDeployer{}, func(cfg *Config) { cfg.Commands = big })
	sess, err := h.client().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run("releases myapp/production")
	if exitCode(err) != 7 {
		t.Errorf("exit %d, want 7", exitCode(err))
	}
	if n := strings.Count(stdout.String(), "\n"); n != big.lines || stderr.String() != "done\n" {
		t.Errorf("%d lines on stdout, want %d; stderr %q", n, big.lines, stderr.String())
	}
}

type bigCommander struct{ lines int }

func (b *bigCommander) RunCommand(ctx context.Context, who Identity, args []string, _ io.Reader, stdout, stderr io.Writer) int {
	// The test counts what arrives: a failed write shows there.
	w := bufio.NewWriter(stdout)
	for i := 0; i < b.lines; i++ {
		_, _ = fmt.Fprintf(w, "release %06d %s\n", i, strings.Repeat("x", 60))
	}
	_ = w.Flush()
	_, _ = fmt.Fprintln(stderr, "done")
	return 7
}

func TestOperatorCommandClientGoneCancels(t *testing.T) {
	t.Parallel()
	c := &fakeCommander{started: make(chan struct{}), cancelled: make(chan error, 1)}
	h := start(t, &fakeDeployer{}, func(cfg *Config) { cfg.Commands = c })
	argv := append(strings.Fields(h.sshCommand(h.alice))[1:], "-p", h.port, "git@127.0.0.1", "hang")
	cmd := exec.Command("ssh", argv...)
	cmd.Env = h.env(h.alice)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.started:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // failing anyway; the group may be gone
		t.Fatal("command did not start")
	}
	// The client goes away.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: its error is that kill
	if err := <-c.cancelled; err == nil {
		t.Error("the command's context was not cancelled when the client went away")
	}
}
