package gitserver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	gossh "golang.org/x/crypto/ssh"
)

func TestPushDeploys(t *testing.T) {
	t.Parallel()
	var message string
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		c, err := object.GetCommit(p.Objects, plumbing.NewHash(p.NewSHA))
		if err != nil {
			return err
		}
		message = c.Message
		for i := 1; i <= 20; i++ {
			_, _ = fmt.Fprintf(out, "step %02d\n", i) // the test checks what the pusher sees
		}
		return nil
	}}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")

	stderr, err := h.push(work, "-o", "message=hi", "production", "main")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	pushes := d.got()
	if len(pushes) != 1 {
		t.Fatalf("Deploy called %d times, want 1", len(pushes))
	}
	p := pushes[0]
	want := Push{Repo: "myapp/production", Branch: "main", OldSHA: "", NewSHA: head, Pusher: "alice",
		KeyFingerprint: gossh.FingerprintSHA256(h.aliceKey.Key), Options: []string{"message=hi"}}
	p.Objects = nil
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Errorf("Deploy got\n%+v\nwant\n%+v", p, want)
	}
	if message != "edit a.txt\n" {
		t.Errorf("commit message read through Push.Objects = %q", message)
	}
	last := -1
	for i := 1; i <= 20; i++ {
		at := strings.Index(stderr, fmt.Sprintf("remote: step %02d ", i))
		if at < 0 || at < last {
			t.Fatalf("remote: step %02d missing or out of order in\n%s", i, stderr)
		}
		last = at
	}
	if !strings.Contains(stderr, "* [new branch]      main -> main") {
		t.Errorf("no new branch line in\n%s", stderr)
	}
	if got := h.serverRef("refs/heads/main"); got != head {
		t.Errorf("server main = %q, want %q", got, head)
	}
	h.fsckServer("--full", "--strict")
	// A session releases its environment after the client has its report.
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if r, rel := d.counts(); r != 1 || rel != 1 {
		t.Errorf("reserves=%d releases=%d, want 1 and 1", r, rel)
	}
}

func TestPushSecondEditNoThin(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	// A file big enough that git would send the edit as a delta against the old blob.
	big := strings.Repeat("line of text that stays the same\n", 2000)
	first := h.commit(work, "big.txt", big)
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("first push: %v\n%s", err, stderr)
	}
	second := h.commit(work, "big.txt", big+"one more line\n")
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("second push: %v\n%s", err, stderr)
	}
	pushes := d.got()
	if len(pushes) != 2 || pushes[1].OldSHA != first || pushes[1].NewSHA != second {
		t.Fatalf("pushes = %+v, want the second from %s to %s", pushes, first, second)
	}
	if got := h.serverRef("refs/heads/main"); got != second {
		t.Errorf("server main = %q, want %q", got, second)
	}
}

func TestDeployErrorRejects(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		_, _ = fmt.Fprintln(out, "building") // the test checks what the pusher sees
		return fmt.Errorf("build: exit status 1\nsecond line is not shown")
	}}
	h := start(t, d, nil)
	work := h.work()
	stderr, err := h.push(work, "production", "main")
	if err == nil {
		t.Fatalf("push succeeded, want failure\n%s", stderr)
	}
	if !strings.Contains(stderr, "! [remote rejected] main -> main (build: exit status 1)") {
		t.Errorf("no rejection line in\n%s", stderr)
	}
	if !strings.Contains(stderr, "remote: building") {
		t.Errorf("deploy output missing in\n%s", stderr)
	}
	if got := h.serverRef("refs/heads/main"); got != "" {
		t.Errorf("server main = %q, want no branch", got)
	}
}

func TestBigOutput(t *testing.T) {
	t.Parallel()
	const lines = 50000 // 100 bytes each: 5 MB
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		var buf strings.Builder
		for i := 0; i < lines; i++ {
			fmt.Fprintf(&buf, "line %06d %s\n", i, strings.Repeat("x", 88))
		}
		all := buf.String()
		// Writes of many sizes, some far above one sideband packet.
		for _, n := range []int{1, 99, 65515, 65516, 65519, 70000, 300000} {
			if _, err := io.WriteString(out, all[:n]); err != nil {
				return err
			}
			all = all[n:]
		}
		_, err := io.WriteString(out, all)
		return err
	}}
	h := start(t, d, nil)
	work := h.work()
	stderr, err := h.push(work, "production", "main")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr[max(0, len(stderr)-2000):])
	}
	if n := strings.Count(stderr, "remote: line "); n != lines {
		t.Errorf("%d remote lines, want %d", n, lines)
	}
	if !strings.Contains(stderr, fmt.Sprintf("remote: line %06d %s", lines-1, strings.Repeat("x", 88))) {
		t.Errorf("last line missing")
	}
}

// TestSilentDeployOutlivesIdleTimeout: a deploy that prints nothing for over twice the idle
// timeout survives, on keepalives. The idle timeout is 2 s, not less: before the pack
// arrives it is the client that must speak, and a loaded machine (go test -race of every
// package at once) can keep git from starting its pack for over a second.
func TestSilentDeployOutlivesIdleTimeout(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		select {
		case <-time.After(5 * time.Second): // the deploy's own silent work
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	h := start(t, d, func(c *Config) {
		c.IdleTimeout = 2 * time.Second
		c.Keepalive = 200 * time.Millisecond
	})
	work := h.work()
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	if got := h.serverRef("refs/heads/main"); got == "" {
		t.Error("server main not set")
	}
}

func TestDeleteOnlyPushOfOtherBranch(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	h.git(h.dir, "--git-dir", filepath.Join(h.reposDir, "myapp", "production.git"), "update-ref", "refs/heads/feature", head)

	stderr, err := h.push(work, "production", ":feature")
	if err == nil {
		t.Fatalf("delete succeeded, want rejection\n%s", stderr)
	}
	if !strings.Contains(stderr, "! [remote rejected] feature (only refs/heads/main deploys here)") {
		t.Errorf("no rejection line in\n%s", stderr)
	}
	if got := h.serverRef("refs/heads/feature"); got != head {
		t.Errorf("feature = %q, want it unchanged", got)
	}
}

func TestDeleteDeployBranchRejected(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	stderr, err := h.push(work, "production", ":main")
	if err == nil {
		t.Fatalf("delete succeeded\n%s", stderr)
	}
	if !strings.Contains(stderr, "! [remote rejected] main (deleting the deploy branch is not allowed)") {
		t.Errorf("no rejection line in\n%s", stderr)
	}
	if got := h.serverRef("refs/heads/main"); got != head {
		t.Errorf("main = %q, want %q", got, head)
	}
}

func TestOtherRefsRejected(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	h.commit(work, "b.txt", "b\n")
	h.git(work, "tag", "-a", "-m", "release", "v1")
	h.git(work, "branch", "-f", "other")

	stderr, err := h.push(work, "production", "other", "v1", "HEAD:refs/heads/-x")
	if err == nil {
		t.Fatalf("push succeeded\n%s", stderr)
	}
	for _, line := range []string{
		"! [remote rejected] other -> other (only refs/heads/main deploys here; to deploy it: git push production other:main)",
		"! [remote rejected] v1 -> v1 (only refs/heads/main deploys here)",
		"! [remote rejected] HEAD -> -x (invalid ref name)",
	} {
		if !strings.Contains(stderr, line) {
			t.Errorf("missing %q in\n%s", line, stderr)
		}
	}
	for _, ref := range []string{"refs/heads/other", "refs/tags/v1", "refs/heads/-x"} {
		if got := h.serverRef(ref); got != "" {
			t.Errorf("%s = %q, want none", ref, got)
		}
	}
	if got := h.serverRef("refs/heads/main"); got != head {
		t.Errorf("main = %q, want %q", got, head)
	}
	if n := len(d.got()); n != 1 {
		t.Errorf("Deploy called %d times, want 1", n)
	}

	// A tag object pushed to the deploy branch is not a commit.
	stderr, err = h.push(work, "production", "v1:refs/heads/main")
	if err == nil || !strings.Contains(stderr, "not a commit") {
		t.Errorf("tag object to main: err=%v\n%s", err, stderr)
	}
}

func TestUpToDatePush(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	// -q makes git ask for "quiet", which must not hide the deploy's output.
	if stderr, err := h.push(work, "-q", "production", "main"); err != nil || !strings.Contains(stderr, "remote: deploying") {
		t.Fatalf("push -q: %v\n%s", err, stderr)
	}
	stderr, err := h.push(work, "production", "main")
	if err != nil || !strings.Contains(stderr, "Everything up-to-date") {
		t.Fatalf("second push: err=%v\n%s", err, stderr)
	}
	if n := len(d.got()); n != 1 {
		t.Errorf("Deploy called %d times, want 1", n)
	}
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if r, rel := d.counts(); r != 2 || rel != 2 {
		t.Errorf("reserves=%d releases=%d, want 2 and 2", r, rel)
	}
}

func TestForcePushOlderCommit(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	c1 := h.git(work, "rev-parse", "HEAD")
	c2 := h.commit(work, "b.txt", "b\n")
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	stderr, err := h.push(work, "-f", "production", c1+":main")
	if err != nil {
		t.Fatalf("rollback push: %v\n%s", err, stderr)
	}
	pushes := d.got()
	if len(pushes) != 2 || pushes[1].OldSHA != c2 || pushes[1].NewSHA != c1 {
		t.Fatalf("pushes = %+v, want the second from %s to %s", pushes, c2, c1)
	}
	if got := h.serverRef("refs/heads/main"); got != c1 {
		t.Errorf("main = %q, want %q", got, c1)
	}
}

func TestUnknownKeyDenied(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	bob, _ := newKey(t, h.home, "bob")
	_, stderr, err := h.exec(work, bob, "git", "push", "production", "main")
	if err == nil || !strings.Contains(stderr, "Permission denied") {
		t.Fatalf("push with an unknown key: err=%v\n%s", err, stderr)
	}
	if r, _ := d.counts(); r != 0 {
		t.Errorf("Reserve called %d times", r)
	}
}

func TestReserveErrorIsRemoteError(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{reserveErr: fmt.Errorf("alice may not push to myapp/production")}
	h := start(t, d, nil)
	work := h.work()
	stderr, err := h.push(work, "production", "main")
	if err == nil || !strings.Contains(stderr, "fatal: remote error: alice may not push to myapp/production") {
		t.Fatalf("push: err=%v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(h.reposDir, "myapp")); !os.IsNotExist(err) {
		t.Errorf("repository created for a refused push (stat: %v)", err)
	}
}

func TestPusherKilledCancelsDeploy(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	cancelled := make(chan error, 1)
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		_, _ = fmt.Fprintln(out, "building") // the test waits for it at the pusher
		close(started)
		select {
		case <-ctx.Done():
			cancelled <- ctx.Err()
			return ctx.Err()
		case <-time.After(20 * time.Second):
			cancelled <- nil
			return nil
		}
	}}
	h := start(t, d, nil)
	work := h.work()
	cmd := exec.Command("git", "push", "production", "main")
	cmd.Dir, cmd.Env = work, h.env(h.alice)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The deploy's output reaches the pusher while it runs, not at its end.
	live := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "remote: building") {
				close(live)
				break
			}
		}
		_, _ = io.Copy(io.Discard, stderr) // drained until git is killed: the read then fails
	}()
	select {
	case <-live:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // failing anyway; the group may be gone
		t.Fatal("deploy output did not arrive while the deploy ran")
	}
	<-started
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil { // git and its ssh
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: its error is that kill
	if err := <-cancelled; err == nil {
		t.Fatal("deploy's context was not cancelled")
	}
	if got := h.serverRef("refs/heads/main"); got != "" {
		t.Errorf("main = %q after a cancelled deploy", got)
	}
}

func TestPanicInSessionIsContained(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		if calls.Add(1) == 1 {
			panic("deployer bug")
		}
		return nil
	}}
	h := start(t, d, nil)
	work := h.work()
	if stderr, err := h.push(work, "production", "main"); err == nil {
		t.Fatalf("push through a panicking deployer succeeded\n%s", stderr)
	}
	if r, rel := d.counts(); rel != r {
		t.Errorf("reserves=%d releases=%d after a panic", r, rel)
	}
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push after the panic: %v\n%s", err, stderr)
	}
}

func TestShutdownWaitsThenCancels(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	var cancelled atomic.Bool
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		close(started)
		<-ctx.Done()
		cancelled.Store(true)
		return fmt.Errorf("cancelled: %w", context.Cause(ctx))
	}}
	h := start(t, d, nil)
	work := h.work()
	pushed := make(chan error, 1)
	var pushErr string
	go func() {
		_, stderr, err := h.exec(work, h.alice, "git", "push", "production", "main")
		pushErr = stderr
		pushed <- err
	}()
	<-started
	t0 := time.Now()
	if err := h.stop(300 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(t0); took < 300*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before its grace period", took)
	}
	if !cancelled.Load() {
		t.Error("Shutdown returned before the running deploy was cancelled")
	}
	if err := <-pushed; err == nil {
		t.Error("push succeeded through a cut-off session")
	}
	// The deploy was cancelled before the connection closed, so the pusher reads why.
	if want := "! [remote rejected] main -> main (cancelled: the server is shutting down)"; !strings.Contains(pushErr, want) {
		t.Errorf("push output lacks %q:\n%s", want, pushErr)
	}
}

func TestShutdownLetsDeployFinish(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	finish := make(chan struct{})
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		close(started)
		<-finish
		return nil
	}}
	h := start(t, d, nil)
	idle := h.client() // connected before Shutdown, asks for a session during it
	work := h.work()
	pushed := make(chan error, 1)
	go func() {
		_, _, err := h.exec(work, h.alice, "git", "push", "production", "main")
		pushed <- err
	}()
	<-started

	h.stopOnce.Do(func() {}) // this test shuts down by hand
	stopped := make(chan error, 1)
	go func() { stopped <- h.srv.Shutdown(context.Background()) }()
	// Serve returns once Shutdown has closed the listener.
	if err := <-h.served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	if c, err := net.Dial("tcp", h.addr); err == nil {
		// The closed port may already be another listener's (tests run in parallel): only a
		// handshake showing this server's host key counts.
		ours := false
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		// It fails in any case, at the latest at the host key: ours says whose it was.
		_, _, _, _ = gossh.NewClientConn(c, h.addr, &gossh.ClientConfig{
			User: "git",
			HostKeyCallback: func(_ string, _ net.Addr, key gossh.PublicKey) error {
				ours = bytes.Equal(key.Marshal(), h.srv.signer.PublicKey().Marshal())
				return errors.New("host key seen")
			},
		})
		_ = c.Close() // done with it, whatever state the failed handshake left it in
		if ours {
			t.Error("connection accepted during Shutdown")
		}
	}
	sess, err := idle.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.CombinedOutput("git-receive-pack 'myapp/production'")
	if exitCode(err) != 1 || !strings.Contains(string(out), "shutting down") {
		t.Errorf("new session during Shutdown: exit %d, %q", exitCode(err), out)
	}

	close(finish)
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-pushed; err != nil {
		t.Errorf("push during a graceful shutdown: %v", err)
	}
}

func TestBigPack(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	random := make([]byte, 16<<20) // incompressible: a 16 MB pack
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "random.bin"), random, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if err := os.WriteFile(filepath.Join(work, fmt.Sprintf("f%03d.txt", i)), []byte(strings.Repeat(fmt.Sprintf("file %d\n", i), 50)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.git(work, "add", ".")
	h.git(work, "commit", "-q", "-m", "big")
	head := h.git(work, "rev-parse", "HEAD")
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	if got := h.serverRef("refs/heads/main"); got != head {
		t.Errorf("main = %q, want %q", got, head)
	}
	h.fsckServer("--full")
}

// TestBranchFollowsLive: when the branch does not name the live release (a crash came
// between the swap of current and the branch's move), the next session moves it there
// before advertising, so the pusher's old value is the live commit.
func TestBranchFollowsLive(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	first := h.git(work, "rev-parse", "HEAD")
	if out, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	second := h.commit(work, "b.txt", "two")
	if out, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}

	d.mu.Lock()
	d.live = first // the server crashed after swapping back to first, before moving main
	d.mu.Unlock()
	third := h.commit(work, "c.txt", "three")
	if out, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	pushes := d.got()
	if got := pushes[len(pushes)-1]; got.OldSHA != first || got.NewSHA != third {
		t.Fatalf("last push old=%s new=%s, want old=%s (live, not %s) new=%s", got.OldSHA, got.NewSHA, first, second, third)
	}
	if got := h.serverRef("refs/heads/main"); got != third {
		t.Errorf("server main = %s, want %s", got, third)
	}
}
