package hooks

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slipway/slipway/configs"
)

// What a deploy tells its requester, and keeps in its log.

// say writes a step's header: a line of the pipeline's own, which a requester who fell
// behind still gets (keeper), unlike the commands' output.
func say(w io.Writer, format string, args ...any) {
	writeKept(w, fmt.Sprintf("-----> "+format+"\n", args...))
}

// indent writes a line of the pipeline's own under a header, as say does.
func indent(w io.Writer, format string, args ...any) {
	writeKept(w, fmt.Sprintf("       "+format+"\n", args...))
}

// keeper is a writer that can be told a line must not be dropped.
type keeper interface {
	keep(line []byte)
}

func writeKept(w io.Writer, line string) {
	if k, ok := w.(keeper); ok {
		k.keep([]byte(line))
		return
	}
	io.WriteString(w, line) //nolint:errcheck // a gone requester cancels the deploy through ctx
}

func since(t time.Time) string {
	d := time.Since(t)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// tee writes everything to the requester and to the deploy's log, secrets masked. A
// requester that hung up does not stop the log.
type tee struct {
	pusher io.Writer
	log    io.Writer
	mask   *strings.Replacer // nil: nothing to mask
}

func (t *tee) Write(b []byte) (int, error) {
	n := len(b)
	if t.mask != nil {
		b = []byte(t.mask.Replace(string(b)))
	}
	t.log.Write(b)    //nolint:errcheck // the log is best effort
	t.pusher.Write(b) //nolint:errcheck // a gone requester cancels the deploy through ctx
	return n, nil
}

func (t *tee) keep(line []byte) {
	if t.mask != nil {
		line = []byte(t.mask.Replace(string(line)))
	}
	t.log.Write(line) //nolint:errcheck // the log is best effort
	writeKept(t.pusher, string(line))
}

// masked is what a secret's value is shown as.
const masked = "***"

// newMask returns a replacer of every value by ***, the longest first (so that a secret that
// holds another is masked whole); nil if there is none. Values shorter than
// configs.MinSecret are left: masking them would hide common strings.
func newMask(values []string) *strings.Replacer {
	values = slices.DeleteFunc(slices.Clone(values), func(v string) bool { return len(v) < configs.MinSecret })
	if len(values) == 0 {
		return nil
	}
	slices.SortFunc(values, func(a, b string) int { return len(b) - len(a) })
	var pairs []string
	for _, v := range slices.Compact(values) {
		// Output reaches the mask a line at a time: a value of several lines is masked line
		// by line.
		for _, line := range strings.Split(v, "\n") {
			if len(line) >= configs.MinSecret {
				pairs = append(pairs, line, masked)
			}
		}
	}
	if len(pairs) == 0 {
		return nil
	}
	return strings.NewReplacer(pairs...)
}

// maxMaskFile bounds a mask_files file read for its values.
const maxMaskFile = 1 << 20

// minMaskFileValue is the shortest value of a mask_files file that is masked: such files
// hold settings too (DEBUG=true, DB_PORT=3306), and masking those would hide common words
// everywhere. A shorter secret belongs in [env.secrets].
const minMaskFileValue = 8

// maskFileValues reads the values of the KEY=VALUE lines of a .env-style file (export
// prefixes, quotes and comments understood) in shared/, those of minMaskFileValue bytes or
// more.
func maskFileValues(shared *os.Root, name string) ([]string, error) {
	f, err := shared.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read only: closing it loses nothing
	b, err := io.ReadAll(io.LimitReader(f, maxMaskFile))
	if err != nil {
		return nil, err
	}
	var values []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "export "))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		_, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		if len(v) >= minMaskFileValue {
			values = append(values, v)
		}
	}
	return values, nil
}

// capped writes at most left bytes, then one truncation marker, then nothing.
type capped struct {
	w    io.Writer
	left int64
}

func (c *capped) Write(b []byte) (int, error) {
	if c.left <= 0 {
		return len(b), nil
	}
	if int64(len(b)) > c.left {
		c.w.Write(b[:c.left])                                  //nolint:errcheck // the log is best effort
		c.w.Write([]byte("\n[slipway: log truncated here]\n")) //nolint:errcheck // the log is best effort
		c.left = 0
		return len(b), nil
	}
	c.left -= int64(len(b))
	return c.w.Write(b)
}

// maxBehind bounds how far the requester's output may fall behind the deploy, in bytes.
const maxBehind = 1 << 20

// relay passes a deploy's output to its requester without ever making the deploy wait on
// them: writes go into a bounded queue that one goroutine drains into the requester's
// writer. When the requester falls maxBehind bytes behind, further writes are dropped and
// counted until the queue has room again; the first line after the gap says how many lines
// were not shown. The deploy's stored log is written beside it, whole (tee). Writes must be
// whole lines, as the builder and say/indent make them.
type relay struct {
	w    io.Writer
	done chan struct{} // closed when the drainer has returned

	mu      sync.Mutex // guards the fields below
	more    *sync.Cond // signalled when queue or closed change
	queue   [][]byte
	queued  int  // bytes in queue
	dropped int  // lines dropped since the last line queued
	closed  bool // Close was called: drain what is queued, then stop
	failed  bool // a write to w failed: the requester is gone, drop everything
}

func newRelay(w io.Writer) *relay {
	r := &relay{w: w, done: make(chan struct{})}
	r.more = sync.NewCond(&r.mu)
	go r.drain()
	return r
}

// gapNote says how many lines a requester who fell behind did not get.
func gapNote(n int) string {
	return fmt.Sprintf("[slipway: %d lines not shown: your connection fell behind; `logs` has them all]\n", n)
}

// Write queues b for the requester, or drops it if they are too far behind.
func (r *relay) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.failed || r.closed:
	case r.queued+len(b) > maxBehind:
		r.dropped++
	default:
		r.enqueue(b)
	}
	return len(b), nil
}

// keep queues a line of the pipeline's own (a step's header, its outcome): it is never
// dropped, however far behind the requester is. There are a few per step.
func (r *relay) keep(line []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.failed && !r.closed {
		r.enqueue(line)
	}
}

// enqueue queues b, after the note of what was dropped before it. The caller holds r.mu.
func (r *relay) enqueue(b []byte) {
	line := bytes.Clone(b)
	if r.dropped > 0 {
		line = append([]byte(gapNote(r.dropped)), line...)
		r.dropped = 0
	}
	r.queue = append(r.queue, line)
	r.queued += len(line)
	r.more.Signal()
}

// drain writes the queue to the requester until Close.
func (r *relay) drain() {
	defer close(r.done)
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		for len(r.queue) == 0 && !r.closed {
			r.more.Wait()
		}
		var b []byte
		switch {
		case len(r.queue) > 0:
			b = r.queue[0]
			r.queue[0] = nil
			r.queue = r.queue[1:]
			r.queued -= len(b)
		case r.dropped > 0: // closed after a gap that no line followed
			b = []byte(gapNote(r.dropped))
			r.dropped = 0
		default:
			return // closed, and everything is out
		}
		if r.failed {
			continue
		}
		r.mu.Unlock()
		_, err := r.w.Write(b)
		r.mu.Lock()
		if err != nil {
			r.failed = true
			r.queue, r.queued, r.dropped = nil, 0, 0
		}
	}
}

// Close lets the requester have what is queued and returns once it has been written, or
// the requester is gone.
func (r *relay) Close() {
	r.mu.Lock()
	r.closed = true
	r.more.Signal()
	r.mu.Unlock()
	<-r.done
}
