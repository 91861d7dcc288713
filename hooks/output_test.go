package hooks

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// stalled is a requester who reads nothing until released.
type stalled struct {
	release chan struct{}
	mu      sync.Mutex
	got     strings.Builder
}

func (s *stalled) Write(p []byte) (int, error) {
	<-s.release
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got.Write(p)
	return len(p), nil
}

// TestRelayNeverWaits: a requester who stops reading does not slow the deploy: every write
// returns while they read nothing; what did not fit is dropped, counted, and said.
func TestRelayNeverWaits(t *testing.T) {
	s := &stalled{release: make(chan struct{})}
	r := newRelay(s)
	const lines = 200_000
	for i := range lines {
		fmt.Fprintf(r, "line %d\n", i) // would block forever if the relay waited on s
	}
	close(s.release)
	r.Close()

	out := s.got.String()
	shown := strings.Count(out, "line ")
	m := regexp.MustCompile(`\[slipway: (\d+) lines not shown: your connection fell behind; `+"`logs`"+` has them all\]`).FindAllStringSubmatch(out, -1)
	if len(m) != 1 {
		t.Fatalf("want one note of the lines not shown, got %d; output ends %q", len(m), out[max(0, len(out)-300):])
	}
	dropped, _ := strconv.Atoi(m[0][1])
	if shown+dropped != lines || dropped == 0 || shown == 0 {
		t.Errorf("shown %d + dropped %d != %d lines written", shown, dropped, lines)
	}
	// What was shown is a prefix, in order.
	for i, l := range strings.Split(strings.TrimSpace(out), "\n")[:shown] {
		if l != fmt.Sprintf("line %d", i) {
			t.Fatalf("line %d shown as %q", i, l)
		}
	}
}

// TestRelayGapNoteInPlace: after a gap, the note comes before the first line that follows it.
func TestRelayGapNoteInPlace(t *testing.T) {
	s := &stalled{release: make(chan struct{})}
	r := newRelay(s)
	big := strings.Repeat("x", maxBehind/2) + "\n"
	r.Write([]byte(big)) // may be taken by the drainer at once, or stay queued
	r.Write([]byte(big))
	r.Write([]byte(big))                             // does not fit while the requester reads nothing
	r.Write([]byte(big))                             // nor this one
	close(s.release)                                 // the requester catches up
	for queued := 1; queued > 0; runtime.Gosched() { // wait until the queue has drained
		r.mu.Lock()
		queued = len(r.queue)
		r.mu.Unlock()
	}
	r.Write([]byte("after the gap\n"))
	r.Close()
	out := s.got.String()
	i := strings.Index(out, "lines not shown")
	j := strings.Index(out, "after the gap")
	if i < 0 || j < 0 || i > j || strings.Count(out, "x\n") < 1 {
		t.Errorf("the note is not right before the first line after the gap: note at %d, line at %d", i, j)
	}
}

// TestRelayGoneRequester: a requester whose writes fail gets nothing more, and Close returns.
func TestRelayGoneRequester(t *testing.T) {
	r := newRelay(failing{})
	for range 1000 {
		r.Write([]byte("x\n"))
	}
	r.Close()
	if len(r.queue) != 0 || !r.failed {
		t.Errorf("queue %d, failed %v after the requester went away", len(r.queue), r.failed)
	}
}

type failing struct{}

func (failing) Write([]byte) (int, error) { return 0, fmt.Errorf("gone") }

// TestRelayKeepsOwnLines: however far behind the requester is, the pipeline's own lines (a
// step's header and outcome, the deploy's result) reach them, in order, after the note of
// what was dropped before them.
func TestRelayKeepsOwnLines(t *testing.T) {
	s := &stalled{release: make(chan struct{})}
	r := newRelay(s)
	tee := &tee{pusher: r, log: io.Discard}
	for i := range 100_000 {
		fmt.Fprintf(tee, "output %d\n", i)
	}
	indent(tee, "build 1/1 ok")
	say(tee, "abc1234 is live")
	close(s.release)
	r.Close()
	out := s.got.String()
	note := strings.Index(out, "lines not shown")
	ok := strings.Index(out, "       build 1/1 ok\n")
	live := strings.Index(out, "-----> abc1234 is live\n")
	if note < 0 || ok < 0 || live < 0 || !(note < ok && ok < live) {
		t.Errorf("note at %d, step outcome at %d, result at %d; want all three, in that order", note, ok, live)
	}
}

func TestMask(t *testing.T) {
	t.Parallel()
	m := newMask([]string{"hunter2-secret", "hunter2", "abc", "multi\nline-value", "hunter2-secret"})
	tests := []struct{ in, want string }{
		{"pw=hunter2-secret\n", "pw=***\n"},          // the longer secret whole, not "***-secret"
		{"pw=hunter2 and abc\n", "pw=*** and abc\n"}, // a value under MinSecret is left
		{"multi\n", "***\n"},                         // a line of a value of several lines
		{"x line-value y\n", "x *** y\n"},            // a line of a value of several lines
	}
	for _, tt := range tests {
		if got := m.Replace(tt.in); got != tt.want {
			t.Errorf("mask(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if newMask([]string{"abc", ""}) != nil {
		t.Error("a mask of nothing maskable is not nil")
	}
}

func TestMaskFileValues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := "# comment\nAPP_KEY=\"base64:0123456789\"\nexport MAIL='mail-password'\nDEBUG=true\nPORT=3306\nnot a setting\nEMPTY=\n"
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	got, err := maskFileValues(root, ".env")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"base64:0123456789", "mail-password"}; !slices.Equal(got, want) {
		t.Errorf("values = %q, want %q", got, want)
	}
	if _, err := maskFileValues(root, "escape"); err == nil {
		t.Error("a mask file through a symlink out of shared/ was read")
	}
}
