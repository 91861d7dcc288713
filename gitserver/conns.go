package gitserver

import (
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
)

// Why connections are closed before they authenticate: the reason field of the
// "connections refused" log line.
const (
	refusedTooMany    = "too many unauthenticated connections"
	refusedPerSource  = "too many unauthenticated connections from one address"
	refusedTimeout    = "handshake timeout"
	refusedUnknownKey = "unknown key"
	refusedHandshake  = "handshake failed"
)

// refusedStates are the refusals as Observer.Connection names them.
var refusedStates = map[string]string{
	refusedTooMany:    "too_many_unauthenticated",
	refusedPerSource:  "too_many_from_source",
	refusedTimeout:    "handshake_timeout",
	refusedUnknownKey: "unknown_key",
	refusedHandshake:  "handshake_failed",
}

// gate admits connections while fewer than max of them have not authenticated yet, and
// fewer than perSource of those come from the same source address, and closes a
// connection that has not authenticated within timeout. Connections it refuses, and
// connections that close before they authenticate, are counted in refusals, never logged
// one by one: a flood of them must not flood the log.
type gate struct {
	refusals *refusalLog

	mu             sync.Mutex // guards the fields below
	max, perSource int
	timeout        time.Duration
	closing        bool                // Shutdown: admit nothing more
	pending        map[*gatedConn]bool // the connections that have not authenticated
	bySource       map[string]int      // how many of them each source address holds
}

// newGate returns a gate that admits nothing until setLimits gives it its limits.
func newGate(refusals *refusalLog) *gate {
	return &gate{
		refusals: refusals,
		pending:  make(map[*gatedConn]bool),
		bySource: make(map[string]int),
	}
}

// setLimits changes the caps and the deadline for the connections admitted from now on.
func (g *gate) setLimits(limit int, timeout time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.max, g.perSource, g.timeout = limit, max(1, limit/4), timeout
}

// admit is gliderlabs' ConnCallback: it returns c wrapped to count it as unauthenticated
// until it authenticates or closes, or nil (gliderlabs then closes c before the banner).
func (g *gate) admit(ctx ssh.Context, c net.Conn) net.Conn {
	src := sourceKey(c.RemoteAddr())
	g.mu.Lock()
	var refused string
	switch {
	case g.closing:
		g.mu.Unlock()
		return nil // the server is going; nothing to count
	case len(g.pending) >= g.max:
		refused = refusedTooMany
	case g.bySource[src] >= g.perSource:
		refused = refusedPerSource
	}
	if refused != "" {
		g.mu.Unlock()
		g.refusals.add(refused)
		return nil
	}
	gc := &gatedConn{Conn: c, gate: g, source: src}
	g.pending[gc] = true
	g.bySource[src]++
	gc.timer = time.AfterFunc(g.timeout, gc.expire)
	g.mu.Unlock()
	ctx.SetValue(gateKey{}, gc)
	return gc
}

// leave takes gc off the unauthenticated connections. It reports whether gc was on them
// (true once at most), and whether the server is closing.
func (g *gate) leave(gc *gatedConn) (left, closing bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.pending[gc] {
		return false, g.closing
	}
	delete(g.pending, gc)
	if g.bySource[gc.source]--; g.bySource[gc.source] <= 0 {
		delete(g.bySource, gc.source)
	}
	gc.timer.Stop()
	return true, g.closing
}

// refused counts a connection that left the gate without authenticating, unless the
// server closed it.
func (g *gate) refused(closing bool, reason string) {
	if !closing {
		g.refusals.add(reason)
	}
}

// close admits nothing more and closes every connection still in its handshake, without
// counting them as refused.
func (g *gate) close() {
	g.mu.Lock()
	g.closing = true
	pending := make([]*gatedConn, 0, len(g.pending))
	for gc := range g.pending {
		pending = append(pending, gc)
	}
	g.mu.Unlock()
	for _, gc := range pending {
		_ = gc.Close() // the server is going: a failed close tells nobody anything
	}
}

// gateKey is the ssh.Context key of a connection's *gatedConn.
type gateKey struct{}

// gatedOf returns the gatedConn of a connection's context; nil outside the gate.
func gatedOf(ctx ssh.Context) *gatedConn {
	if ctx == nil {
		return nil
	}
	gc, _ := ctx.Value(gateKey{}).(*gatedConn)
	return gc
}

// gatedConn is an admitted connection. It leaves the gate's count when it authenticates
// (authenticated) or closes, and is closed by its timer if it has not authenticated by then.
type gatedConn struct {
	net.Conn
	gate   *gate
	source string
	timer  *time.Timer // closes it at the handshake deadline; stopped when it leaves

	unknownKey atomic.Bool // the client offered a key that is not authorized
}

// authenticated takes the connection off the unauthenticated ones: it is one of an
// authorized key's now, and no deadline but the idle timeout applies.
func (c *gatedConn) authenticated() {
	if left, _ := c.gate.leave(c); left && c.gate.refusals.observer != nil {
		c.gate.refusals.observer.Connection("authenticated")
	}
}

// keyRefused notes that the client offered a key that is not authorized, so that the
// connection counts as refused for an unknown key if it closes without authenticating.
func (c *gatedConn) keyRefused() { c.unknownKey.Store(true) }

// expire closes the connection at its handshake deadline, unless it authenticated first.
func (c *gatedConn) expire() {
	left, closing := c.gate.leave(c)
	if !left {
		return
	}
	_ = c.Conn.Close() // its handshake fails on the closed connection, which is the point
	c.gate.refused(closing, refusedTimeout)
}

// Close closes the connection; one that closes before it authenticated is counted as
// refused, with why.
func (c *gatedConn) Close() error {
	err := c.Conn.Close()
	if left, closing := c.gate.leave(c); left {
		reason := refusedHandshake
		if c.unknownKey.Load() {
			reason = refusedUnknownKey
		}
		c.gate.refused(closing, reason)
	}
	return err
}

// sourceKey is the source address a connection's share of the unauthenticated ones is
// counted by: its IPv4 address, or the /64 of its IPv6 address (one host usually holds a
// whole /64).
func sourceKey(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.String()
	}
	if ip4 := tcp.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return tcp.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// refusalLog counts refused connections by reason and logs the counts at most once a
// second: a line per reason, at warn level, "connections refused" with count and reason.
// The first refusal after a quiet second is logged at once.
type refusalLog struct {
	log      zerolog.Logger
	observer Observer // nil: none

	mu      sync.Mutex     // guards the fields below
	counts  map[string]int // refusals not logged yet, by reason
	last    time.Time      // when the counts were last logged
	timer   *time.Timer    // logs the counts a second after the last time; nil if none is due
	stopped bool
	flushes sync.WaitGroup // the timer's run, if it fired
}

func newRefusalLog(log zerolog.Logger, o Observer) *refusalLog {
	return &refusalLog{log: log, observer: o, counts: make(map[string]int)}
}

func (l *refusalLog) add(reason string) {
	if l.observer != nil {
		l.observer.Connection(refusedStates[reason])
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[reason]++
	if l.timer != nil || l.stopped {
		return
	}
	wait := time.Second - time.Since(l.last)
	if wait <= 0 {
		l.flushLocked()
		return
	}
	l.flushes.Add(1)
	l.timer = time.AfterFunc(wait, func() {
		defer l.flushes.Done()
		l.mu.Lock()
		defer l.mu.Unlock()
		l.timer = nil
		l.flushLocked()
	})
}

// flushLocked logs the counts and starts them again. The caller holds mu.
func (l *refusalLog) flushLocked() {
	reasons := make([]string, 0, len(l.counts))
	for r := range l.counts {
		reasons = append(reasons, r)
	}
	slices.Sort(reasons)
	for _, r := range reasons {
		l.log.Warn().Int("count", l.counts[r]).Str("reason", r).Msg("connections refused")
	}
	clear(l.counts)
	l.last = time.Now()
}

// stop logs what is left to log and waits for a timer that fired; refusals after it are
// logged at the next stop, if any.
func (l *refusalLog) stop() {
	l.mu.Lock()
	if l.timer != nil && l.timer.Stop() {
		l.timer = nil
		l.flushes.Done()
	}
	l.stopped = true
	if len(l.counts) > 0 {
		l.flushLocked()
	}
	l.mu.Unlock()
	l.flushes.Wait()
}
