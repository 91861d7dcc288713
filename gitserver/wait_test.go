package gitserver

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
)

const busyReason = "myapp/production is busy: bob is deploying since 12:00:01"

// TestBusyPushRefused: without a wait option, a push to a busy environment is refused once
// its commands are read; its pack is read and dropped so that git shows the reason.
func TestBusyPushRefused(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	first := h.pushed(work)
	// A pack far bigger than what the SSH channel buffers: it has to be read to the end.
	random := make([]byte, 4<<20)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	h.commit(work, "big.bin", string(random))

	release := d.hold(t, "bob")
	stderr, err := h.push(work, "production", "main")
	if err == nil {
		t.Fatalf("push to a busy environment succeeded\n%s", stderr)
	}
	for _, want := range []string{
		"! [remote rejected] main -> main (" + busyReason + ")",
		"remote: hint: git push -o wait=5m",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("missing %q in\n%s", want, stderr)
		}
	}
	t.Logf("git push to a busy environment:\n%s", stderr)
	if n := len(d.got()); n != 1 {
		t.Errorf("Deploy called %d times, want 1", n)
	}
	if got := h.serverRef("refs/heads/main"); got != first {
		t.Errorf("main = %s, want it unchanged (%s)", got, first)
	}

	release()
	if stderr, err := h.push(work, "production", "main"); err != nil {
		t.Fatalf("push once the environment is free: %v\n%s", err, stderr)
	}
}

// TestBusyPushWaits: with -o wait=..., a push waits for the running deploy. When that
// deploy moved the branch, the push is refused as stale ("fetch first"), as git's
// receive-pack does: deploying it would silently undo the other deploy. Once the pusher has
// fetched and rebased, the push deploys.
func TestBusyPushWaits(t *testing.T) {
	t.Parallel()
	started, finish := make(chan struct{}), make(chan struct{})
	d := &fakeDeployer{waiting: make(chan time.Duration, 1)}
	h := start(t, d, nil)
	workA := h.work()
	h.pushed(workA)
	workB := filepath.Join(h.dir, "workB")
	h.git(h.dir, "clone", "-q", "-o", "production", h.url("myapp/production"), workB)
	a := h.commit(workA, "a.txt", "from A\n")
	b := h.commit(workB, "b.txt", "from B\n")

	d.mu.Lock()
	d.deploy = func(ctx context.Context, p Push, out io.Writer) error {
		if p.NewSHA == a {
			close(started)
			<-finish
		}
		_, _ = fmt.Fprintf(out, "deploying %s\n", p.NewSHA) // the test checks what the pusher sees
		return nil
	}
	d.mu.Unlock()
	pushedA := make(chan error, 1)
	go func() {
		_, err := h.push(workA, "production", "main")
		pushedA <- err
	}()
	<-started

	type result struct {
		stderr string
		err    error
	}
	pushedB := make(chan result, 1)
	go func() {
		stderr, err := h.push(workB, "-o", "wait=1m", "-o", "message=B", "production", "main")
		pushedB <- result{stderr, err}
	}()
	if w := <-d.waiting; w != time.Minute {
		t.Errorf("Reserve waited up to %v, want 1m", w)
	}
	close(finish)
	if err := <-pushedA; err != nil {
		t.Fatalf("push A: %v", err)
	}
	r := <-pushedB
	if r.err == nil {
		t.Fatalf("push B deployed over A, which went live while it waited\n%s", r.stderr)
	}
	t.Logf("git push -o wait=1m:\n%s", r.stderr)
	for _, want := range []string{
		"remote: -----> waiting up to 1m0s: myapp/production is busy: alice is deploying since 12:00:01",
		fmt.Sprintf("! [remote rejected] main -> main (fetch first: main moved to %s while this push waited)", a[:7]),
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("missing %q in\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "remote: deploying "+b) {
		t.Errorf("B deployed\n%s", r.stderr)
	}
	if pushes := d.got(); len(pushes) != 2 {
		t.Errorf("Deploy called %d times, want 2 (the first push and A)", len(pushes))
	}
	if got := h.serverRef("refs/heads/main"); got != a {
		t.Errorf("main = %s, want A's %s", got, a)
	}

	// B takes A's commit in, and deploys.
	h.git(workB, "pull", "-q", "--rebase", "production", "main")
	rebased := h.git(workB, "rev-parse", "HEAD")
	stderr, err := h.push(workB, "-o", "wait=1m", "production", "main")
	if err != nil {
		t.Fatalf("push B after the rebase: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, a[:7]+".."+rebased[:7]+"  main -> main") {
		t.Errorf("no fast-forward line in\n%s", stderr)
	}
	pushes := d.got()
	if last := pushes[len(pushes)-1]; last.OldSHA != a || last.NewSHA != rebased || fmt.Sprint(last.Options) != "[wait=1m]" {
		t.Errorf("push B = old %s new %s options %q; want old %s (A) new %s", last.OldSHA, last.NewSHA, last.Options, a, rebased)
	}
	if got := h.serverRef("refs/heads/main"); got != rebased {
		t.Errorf("main = %s, want %s", got, rebased)
	}
	// Sessions release their environment after the client has its report.
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	// Reserved: the first push, A, B without waiting (busy), B waiting, and B again.
	if r, rel := d.counts(); r != 5 || rel != 4 {
		t.Errorf("reserves=%d releases=%d, want 5 and 4", r, rel)
	}
}

// TestBusyPushWaitsBranchUnchanged: a push that waited deploys when the deploy it waited
// for left the branch where it was (it failed), from the value the pusher was shown.
func TestBusyPushWaitsBranchUnchanged(t *testing.T) {
	t.Parallel()
	started, finish := make(chan struct{}), make(chan struct{})
	d := &fakeDeployer{waiting: make(chan time.Duration, 1)}
	h := start(t, d, nil)
	workA := h.work()
	base := h.pushed(workA)
	workB := filepath.Join(h.dir, "workB")
	h.git(h.dir, "clone", "-q", "-o", "production", h.url("myapp/production"), workB)
	a := h.commit(workA, "a.txt", "from A\n")
	b := h.commit(workB, "b.txt", "from B\n")
	d.mu.Lock()
	d.deploy = func(ctx context.Context, p Push, out io.Writer) error {
		if p.NewSHA == a {
			close(started)
			<-finish
			return fmt.Errorf("build: exit status 1")
		}
		return nil
	}
	d.mu.Unlock()
	pushedA := make(chan error, 1)
	go func() {
		_, err := h.push(workA, "production", "main")
		pushedA <- err
	}()
	<-started
	pushedB := make(chan error, 1)
	var stderrB string
	go func() {
		var err error
		stderrB, err = h.push(workB, "-o", "wait=1m", "production", "main")
		pushedB <- err
	}()
	<-d.waiting
	close(finish)
	if err := <-pushedA; err == nil {
		t.Error("push A succeeded through a failing deploy")
	}
	if err := <-pushedB; err != nil {
		t.Fatalf("push B: %v\n%s", err, stderrB)
	}
	pushes := d.got()
	if last := pushes[len(pushes)-1]; last.OldSHA != base || last.NewSHA != b {
		t.Errorf("push B = old %s new %s; want old %s new %s", last.OldSHA, last.NewSHA, base, b)
	}
	if got := h.serverRef("refs/heads/main"); got != b {
		t.Errorf("main = %s, want %s", got, b)
	}
}

func TestBusyWaitTimesOut(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	d.hold(t, "bob")
	stderr, err := h.push(work, "-o", "wait=300ms", "production", "main")
	if err == nil {
		t.Fatalf("push succeeded\n%s", stderr)
	}
	for _, want := range []string{
		"remote: -----> waiting up to 300ms: " + busyReason,
		"! [remote rejected] main -> main (" + busyReason + ")",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("missing %q in\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "hint:") {
		t.Errorf("hint about -o wait shown to a push that waited\n%s", stderr)
	}
	if len(d.got()) != 0 {
		t.Error("Deploy called")
	}
}

// TestLongWaitOutlivesIdleTimeout: keepalives run while a push waits, and the wait is capped.
// The idle timeout is 2 s, as in TestSilentDeployOutlivesIdleTimeout: until the server
// waits, it is the client that must speak, and a loaded machine can delay it.
func TestLongWaitOutlivesIdleTimeout(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{waiting: make(chan time.Duration, 1)}
	h := start(t, d, func(c *Config) {
		c.IdleTimeout = 2 * time.Second
		c.Keepalive = 200 * time.Millisecond
	})
	work := h.work()
	release := d.hold(t, "bob")
	go func() {
		if w := <-d.waiting; w != time.Hour {
			t.Errorf("Reserve waited up to %v, want the 1h cap", w)
		}
		// The other deploy runs on for over twice the idle timeout.
		time.AfterFunc(5*time.Second, release)
	}()
	stderr, err := h.push(work, "-o", "wait=5h", "production", "main")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "remote: -----> waiting up to 1h0m0s: "+busyReason) {
		t.Errorf("no waiting line in\n%s", stderr)
	}
}

func TestBadWaitOption(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	for _, tc := range []struct{ opt, reason string }{
		{"wait=soon", `push option wait: "soon" is not a duration like 90s or 5m`},
		{"wait=-1m", `push option wait: "-1m" is negative`},
		{"wait", "push option wait: give a duration, e.g. -o wait=5m"},
	} {
		stderr, err := h.push(work, "-o", tc.opt, "production", "main")
		if err == nil || !strings.Contains(stderr, "! [remote rejected] main -> main ("+tc.reason+")") {
			t.Errorf("-o %s: err=%v\n%s", tc.opt, err, stderr)
		}
	}
	if len(d.got()) != 0 {
		t.Error("Deploy called")
	}
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if r, rel := d.counts(); r != rel {
		t.Errorf("reserves=%d releases=%d", r, rel)
	}
}

// TestBusyRefusalClientKeepsStdinOpen: the refusal of a busy push reads the pack by its
// structure, so a client that keeps its side open (libgit2), here without sideband, still
// gets its report.
func TestBusyRefusalClientKeepsStdinOpen(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	pack := gitPack(t, h, work, head)
	d.hold(t, "bob")

	g := h.rawGit("git-receive-pack 'myapp/production'")
	sess, stdin, out := g.sess, g.stdin, g.out
	e := pktline.NewEncoder(stdin)
	for _, err := range []error{
		e.EncodeString(fmt.Sprintf("%s %s refs/heads/main\x00report-status", plumbing.ZeroHash, head)),
		e.Flush(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stdin.Write(pack); err != nil { // and stdin stays open
		t.Fatal(err)
	}
	done := make(chan struct{})
	var report string
	var err error
	go func() {
		defer close(done)
		report, err = readReport(out, false)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("no report while stdin stays open")
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := "unpack ok\nng refs/heads/main " + busyReason + "\n"; report != want {
		t.Errorf("report = %q, want %q", report, want)
	}
	if err := sess.Wait(); err != nil {
		t.Errorf("session: %v", err)
	}
}

// TestBusyRefusalBeforeThePack: git's own client is refused as soon as its commands are
// read, without uploading its pack: the report comes while the pack has not been sent.
func TestBusyRefusalBeforeThePack(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	d.hold(t, "bob")

	g := h.rawGit("git-receive-pack 'myapp/production'")
	e := pktline.NewEncoder(g.stdin)
	for _, err := range []error{
		e.EncodeString(fmt.Sprintf("%s %s refs/heads/main\x00report-status agent=git/2.39.5", plumbing.ZeroHash, head)),
		e.Flush(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	// No pack is sent: a server that reads it first would never answer.
	done := make(chan struct{})
	var report string
	var err error
	go func() {
		defer close(done)
		report, err = readReport(g.out, false)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("no report before the pack: the server waits for a pack git would upload in vain")
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := "unpack ok\nng refs/heads/main " + busyReason + "\n"; report != want {
		t.Errorf("report = %q, want %q", report, want)
	}
}
