package gitserver

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// ErrStalled is the cause of a session context cancelled because a write to its client
// waited Config.StallTimeout for the client to read.
var ErrStalled = errors.New("the client stopped reading")

// guardedSession is a session whose writes to the client (stdout and stderr) wait at most
// stall for the client to read. A write that waits longer means the client is gone: the
// session's context is cancelled with ErrStalled, the connection is closed, which ends
// the write, and every later write fails at once. Without it, a client that stops reading
// holds its session, and the environment a push reserved, for as long as it likes.
type guardedSession struct {
	ssh.Session
	// ctx is the session's context, the parent of every sessionContext: cancelled when the
	// client goes, with ErrStalled when it stalls, and when the handler returns.
	ctx    context.Context
	cancel context.CancelCauseFunc
	stall  time.Duration
	stderr guardedStderr

	stalled atomic.Bool
	mu      sync.Mutex     // guards ended, and pending.Add against end's Wait
	ended   bool           // the handler returned: no more writes
	pending sync.WaitGroup // writes' stall timers, until stopped or done closing the connection
}

func guardSession(sess ssh.Session, stall time.Duration) *guardedSession {
	g := &guardedSession{Session: sess, stall: stall}
	g.ctx, g.cancel = context.WithCancelCause(sess.Context())
	g.stderr = guardedStderr{g: g, rw: sess.Stderr()}
	return g
}

// Write sends p to the client's stdout, as ssh.Session's does, within the stall timeout.
func (g *guardedSession) Write(p []byte) (int, error) { return g.write(g.Session, p) }

// Stderr is the session's stderr, its writes guarded as Write's are.
func (g *guardedSession) Stderr() io.ReadWriter { return &g.stderr }

// end cancels the session's context and waits for a stall being handled. The handler
// calls it as it returns; writes after it fail.
func (g *guardedSession) end() {
	g.mu.Lock()
	g.ended = true
	g.mu.Unlock()
	g.cancel(context.Canceled)
	g.pending.Wait()
}

// errSessionOver is what a write to a session fails with once its handler has returned.
var errSessionOver = errors.New("the session is over")

func (g *guardedSession) write(w io.Writer, p []byte) (int, error) {
	if g.stalled.Load() {
		return 0, ErrStalled
	}
	g.mu.Lock()
	if g.ended {
		g.mu.Unlock()
		return 0, errSessionOver
	}
	g.pending.Add(1)
	g.mu.Unlock()
	t := time.AfterFunc(g.stall, func() {
		defer g.pending.Done()
		g.stalledOut()
	})
	n, err := w.Write(p)
	if t.Stop() {
		g.pending.Done()
	}
	if g.stalled.Load() {
		return n, ErrStalled
	}
	return n, err
}

// stalledOut treats the client as gone: the context first, so that its cause is
// ErrStalled, then the connection, which ends the write that stalled.
func (g *guardedSession) stalledOut() {
	if g.stalled.Swap(true) {
		return
	}
	g.cancel(ErrStalled)
	if c, ok := g.Context().Value(ssh.ContextKeyConn).(gossh.Conn); ok {
		_ = c.Close() // a connection that fails to close is as gone as one that closes
	}
}

// guardedStderr is a session's stderr with its writes guarded.
type guardedStderr struct {
	g  *guardedSession
	rw io.ReadWriter
}

func (e *guardedStderr) Read(p []byte) (int, error)  { return e.rw.Read(p) }
func (e *guardedStderr) Write(p []byte) (int, error) { return e.g.write(e.rw, p) }
