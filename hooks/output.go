package hooks

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"time"
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

// tee writes everything to the requester and to the deploy's log. A requester that hung
// up does not stop the log.
type tee struct {
	pusher io.Writer
	log    io.Writer
}

func (t *tee) Write(b []byte) (int, error) {
	t.log.Write(b)    //nolint:errcheck // the log is best effort
	t.pusher.Write(b) //nolint:errcheck // a gone requester cancels the deploy through ctx
	return len(b), nil
}

func (t *tee) keep(line []byte) {
	t.log.Write(line) //nolint:errcheck // the log is best effort
	writeKept(t.pusher, string(line))
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
