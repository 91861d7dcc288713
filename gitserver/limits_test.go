package gitserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
)

// TestPushTooLarge: a pack over MaxPushSize is refused while it streams, naming the limit,
// by the real git over ssh; nothing is stored and nothing deployed. A push to a busy
// environment reads no more of its pack than that either.
func TestPushTooLarge(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, func(c *Config) { c.MaxPushSize = 64 << 10 })
	work := h.work()
	small := h.pushed(work) // well under the limit
	random := make([]byte, 1<<20)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "big.bin"), random, 0o644); err != nil {
		t.Fatal(err)
	}
	h.git(work, "add", "big.bin")
	h.git(work, "commit", "-q", "-m", "big")
	const reason = "push refused: the pack exceeds max_push_size (64.0 KiB)"

	stderr, err := h.push(work, "production", "main")
	if err == nil {
		t.Fatalf("a 1 MiB pack was taken under a 64 KiB limit\n%s", stderr)
	}
	for _, want := range []string{"error: remote unpack failed: " + reason, "! [remote rejected] main -> main (" + reason + ")"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("missing %q in\n%s", want, stderr)
		}
	}
	if p := d.got(); len(p) != 1 {
		t.Errorf("Deploy called %d times, want 1 (the small push)", len(p))
	}
	if got := h.serverRef("refs/heads/main"); got != small {
		t.Errorf("main = %s, want %s", got, small)
	}
	packDir := filepath.Join(h.reposDir, "myapp", "production.git", "objects", "pack")
	entries, err := os.ReadDir(packDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Size() > 64<<10 {
			t.Errorf("%s holds %d bytes", e.Name(), info.Size())
		}
	}

	// A busy environment refuses git at once: its pack is not read at all, so neither is it
	// counted against the limit (TestBusyRefusalBeforeThePack).
	d.hold(t, "bob")
	stderr, err = h.push(work, "production", "main")
	if err == nil || strings.Contains(stderr, "unpack failed") ||
		!strings.Contains(stderr, "! [remote rejected] main -> main ("+busyReason+")") {
		t.Errorf("a big push to a busy environment: err=%v\n%s", err, stderr)
	}
}

func TestFormatSize(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{
		0: "0 bytes", 1023: "1023 bytes", 1024: "1.0 KiB", 64 << 10: "64.0 KiB", 1536 << 10: "1.5 MiB",
		DefaultMaxPushSize: "2.0 GiB", 3 << 40: "3.0 TiB", 5000 << 40: "5000.0 TiB",
	} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestStalledPusherCancels: a pusher that reads nothing while its deploy writes counts as
// gone once a write has waited StallTimeout: the deploy's context is cancelled with
// ErrStalled, as a disconnect cancels it, later writes fail at once, and the session ends
// and releases the environment.
func TestStalledPusherCancels(t *testing.T) {
	t.Parallel()
	cause := make(chan error, 1)
	after := make(chan error, 1)
	d := &fakeDeployer{deploy: func(ctx context.Context, p Push, out io.Writer) error {
		line := append(bytes.Repeat([]byte("x"), 32<<10), '\n')
		// Far more than the SSH window: the writes block once the client stops reading.
		for ctx.Err() == nil {
			if _, err := out.Write(line); err != nil {
				break
			}
		}
		<-ctx.Done()
		cause <- context.Cause(ctx)
		_, err := out.Write([]byte("after\n"))
		after <- err
		return ctx.Err()
	}}
	h := start(t, d, func(c *Config) { c.StallTimeout = 300 * time.Millisecond })
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	pack := gitPack(t, h, work, head)

	// A client that sends its push and never reads its channel again.
	g := h.rawGit("git-receive-pack 'myapp/production'")
	e := pktline.NewEncoder(g.stdin)
	for _, err := range []error{
		e.EncodeString(fmt.Sprintf("%s %s refs/heads/main\x00report-status side-band-64k", plumbing.ZeroHash, head)),
		e.Flush(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := g.stdin.Write(pack); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-cause:
		if !errors.Is(err, ErrStalled) {
			t.Errorf("deploy cancelled with %v, want ErrStalled", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a pusher that reads nothing still holds its deploy after 60s")
	}
	if err := <-after; err == nil {
		t.Error("a write after the stall succeeded")
	}
	if err := g.sess.Wait(); err == nil {
		t.Error("the stalled session ended cleanly")
	}
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if r, rel := d.counts(); r != 1 || rel != 1 {
		t.Errorf("reserves=%d releases=%d, want 1 and 1", r, rel)
	}
	if got := h.serverRef("refs/heads/main"); got != "" {
		t.Errorf("main = %s after a stalled deploy", got)
	}
	stalled := false
	for _, l := range h.logs.lines(t, "session finished") {
		stalled = stalled || l["outcome"] == "stalled"
	}
	if !stalled {
		t.Error(`no session logged with outcome "stalled"`)
	}
}
