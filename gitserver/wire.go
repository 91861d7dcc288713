package gitserver

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
)

// maxBandChunk is the most payload one sideband packet carries. v5's Muxer allows 65519,
// which overflows pktline's 65516-byte payload with the band byte; 65515 does not.
const maxBandChunk = pktline.MaxPayloadSize - 1

// keepalivePacket is an empty band-1 packet: git's own receive-pack sends it while hooks are
// silent, and clients skip it.
var keepalivePacket = []byte("0005\x01")

var errOutputClosed = errors.New("deploy output closed: the push is over")

// wire is the session's output once the update request (a push) or the negotiation (a
// fetch) is over. Deploy output, keepalives, the pack and the final report share it from
// different goroutines, so every write takes mu.
type wire struct {
	mu     sync.Mutex
	bw     *bufio.Writer   // over the session's stdout; flushed after every packet
	mux    *sideband.Muxer // over bw; nil if the client did not ask for side-band-64k
	stderr io.Writer       // where deploy output goes without sideband
	ping   func()          // keepalive without sideband: an SSH-level request
	last   time.Time       // last write towards the pusher
	err    error           // first write error; sticky
	broken func()          // called on the first write error: the pusher is gone
	closed bool            // deploy output is over; further progress writes fail
}

func newWire(stdout, stderr io.Writer, sideBand bool, ping, broken func()) *wire {
	w := &wire{
		bw:     bufio.NewWriterSize(stdout, 64*1024),
		stderr: stderr,
		ping:   ping,
		broken: broken,
		last:   time.Now(),
	}
	if sideBand {
		w.mux = sideband.NewMuxer(sideband.Sideband64k, w.bw)
	}
	return w
}

// fail records the first write error. The caller holds mu.
func (w *wire) fail(err error) error {
	if w.err == nil && err != nil {
		w.err = err
		w.broken()
	}
	return w.err
}

// band writes p to sideband channel ch in packets small enough for v5's muxer. The caller
// holds mu and has checked that w.mux is set.
func (w *wire) band(ch sideband.Channel, p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > maxBandChunk {
			chunk = chunk[:maxBandChunk]
		}
		if _, err := w.mux.WriteChannel(ch, chunk); err != nil {
			return n, w.fail(err)
		}
		if err := w.bw.Flush(); err != nil {
			return n, w.fail(err)
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	w.last = time.Now()
	return n, nil
}

// raw writes p (whole pkt-lines) to stdout as it is. The caller holds mu.
func (w *wire) raw(p []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.bw.Write(p); err != nil {
		return w.fail(err)
	}
	if err := w.bw.Flush(); err != nil {
		return w.fail(err)
	}
	w.last = time.Now()
	return nil
}

// Write sends deploy output to the pusher: sideband channel 2 ("remote: ..." lines), or
// stderr for a client without sideband.
func (w *wire) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errOutputClosed
	}
	if w.mux != nil {
		return w.band(sideband.ProgressMessage, p)
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.stderr.Write(p)
	if err != nil {
		return n, w.fail(err)
	}
	w.last = time.Now()
	return n, nil
}

// notef writes one of slipway's own lines to the pusher on band 2, where git shows it as
// "remote: ...". Clients without sideband do not get it: their stderr carries only the
// deploy's output.
func (w *wire) notef(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mux == nil || w.closed {
		return
	}
	// A write error is kept in w.err: the next write that matters reports it.
	_, _ = w.band(sideband.ProgressMessage, fmt.Appendf(nil, format, args...))
}

// data writes p, a part of a pack, on band 1 or, without sideband, as it is.
func (w *wire) data(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mux != nil {
		return w.band(sideband.PackData, p)
	}
	if err := w.raw(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// fatal writes msg on band 3, which git shows as "remote: <msg>" before it gives up. Without
// sideband it goes to stderr.
func (w *wire) fatal(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	// The session is failing already and this is its last word: a write error changes
	// nothing (with sideband it is kept in w.err).
	if w.mux != nil {
		_, _ = w.band(sideband.ErrorMessage, []byte(msg+"\n"))
		return
	}
	if w.err == nil {
		_, _ = w.stderr.Write([]byte(msg + "\n"))
	}
}

// flush ends a sideband stream with a flush packet; without sideband it does nothing.
func (w *wire) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mux != nil {
		return w.raw(pktline.FlushPkt)
	}
	return w.err
}

// closeOutput ends deploy output: a Deployer that keeps out beyond Deploy gets errors.
func (w *wire) closeOutput() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// keepalive writes an empty band-1 packet whenever nothing was written for every (or, without
// sideband, sends an SSH keepalive request), until stop is closed. It keeps IdleTimeout and
// the NAT boxes between pusher and server from ending a silent deploy.
func (w *wire) keepalive(every time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		w.mu.Lock()
		next := every - time.Since(w.last)
		send := next <= 0
		if send {
			next = every
			w.last = time.Now()
			if w.mux != nil {
				_ = w.raw(keepalivePacket) // a write error is kept in w.err, for the session's next write
				send = false
			}
		}
		w.mu.Unlock()
		if send {
			w.ping() // outside mu: it does not touch the channel's stdout
		}
		t.Reset(next)
	}
}

// keepalives runs wire.keepalive in a goroutine of its own from start to stop. Both may be
// called any number of times, from the goroutine that owns the keepalives; stop waits for
// the goroutine to end.
type keepalives struct {
	w     *wire
	every time.Duration
	quit  chan struct{} // closed by stop; nil while none runs
	done  chan struct{} // closed when the goroutine has returned
}

func (k *keepalives) start() {
	if k.quit != nil {
		return
	}
	k.quit, k.done = make(chan struct{}), make(chan struct{})
	go func(quit, done chan struct{}) {
		defer close(done)
		k.w.keepalive(k.every, quit)
	}(k.quit, k.done)
}

func (k *keepalives) stop() {
	if k.quit == nil {
		return
	}
	close(k.quit)
	<-k.done
	k.quit, k.done = nil, nil
}

// writeAdvertisement sends the ref advertisement in one write.
func writeAdvertisement(w io.Writer, ar *packp.AdvRefs) error {
	bw := bufio.NewWriter(w)
	if err := ar.Encode(bw); err != nil {
		return err
	}
	return bw.Flush()
}
