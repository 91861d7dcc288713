package gitserver

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// idleConn is a TCP connection to the server that never authenticates.
type idleConn struct {
	net.Conn
	admitted bool // the server sent its banner; else it closed the connection at once
}

// dialIdle connects to h from the loopback address src (Linux routes all of 127/8 to lo),
// sends banner if not empty, and reads the server's first line: its SSH banner if it
// admitted the connection, end of stream if it refused it. It never hangs the test.
func dialIdle(t *testing.T, h *harness, src, banner string) *idleConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 30 * time.Second}
	c, err := d.Dial("tcp", h.addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { _ = c.Close() }) // done with it; the server may have closed it first
	if banner != "" {
		// A refused connection may be closed before this arrives; the read below says.
		_, _ = io.WriteString(c, banner)
	}
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if nerr, ok := err.(net.Error); ok && nerr.Timeout() {
		t.Fatalf("connection from %s: neither a banner nor a close within 30s", src)
	}
	if err == nil && !strings.HasPrefix(line, "SSH-2.0-slipway") {
		t.Fatalf("connection from %s: first line %q", src, line)
	}
	return &idleConn{Conn: c, admitted: err == nil}
}

// waitClosed waits until the server closes c, and returns when that was.
func waitClosed(t *testing.T, c net.Conn) time.Time {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(60 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c)
	if nerr, ok := err.(net.Error); ok && nerr.Timeout() {
		t.Fatal("the server did not close an idle connection within 60s")
	}
	return time.Now()
}

// TestUnauthenticatedFlood: hundreds of connections that never authenticate, some silent,
// some that send a banner and stop, hold no more than their source address's share of the
// unauthenticated slots (a quarter of MaxUnauthenticated); the others are closed at once,
// before the banner. An authorized push from another address is served all the same, and
// the refusals are logged as counts, not one by one.
func TestUnauthenticatedFlood(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, func(c *Config) {
		c.HandshakeTimeout = time.Hour // only the gate frees slots in this test
	})
	start := time.Now()
	const n = 220
	perSource := DefaultMaxUnauthenticated / 4
	for src, banner := range map[string]string{"127.0.0.2": "", "127.0.0.3": "SSH-2.0-flood\r\n"} {
		admitted := 0
		for i := 0; i < n; i++ {
			if dialIdle(t, h, src, banner).admitted {
				admitted++
			}
		}
		if admitted != perSource {
			t.Errorf("%d of %d idle connections from %s admitted, want %d", admitted, n, src, perSource)
		}
	}

	work := h.work()
	head := h.pushed(work)
	if got := h.serverRef("refs/heads/main"); got != head {
		t.Errorf("main = %q, want %q", got, head)
	}
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	elapsed := time.Since(start) // Shutdown logs what is left to log
	lines, count := 0, 0
	for _, l := range h.logs.lines(t, "connections refused") {
		if l["level"] != "warn" {
			t.Errorf("refusals logged at %v", l["level"])
		}
		if l["reason"] != refusedPerSource {
			continue
		}
		lines++
		count += int(l["count"].(float64))
	}
	if want := 2 * (n - perSource); count != want {
		t.Errorf("refusals logged: %d, want %d", count, want)
	}
	// At most one line a second: the first at once, then one per second that had refusals.
	if most := 2 + int(elapsed/time.Second); lines > most {
		t.Errorf("%d log lines for the refusals over %v, want at most %d", lines, elapsed, most)
	}
}

// TestUnauthenticatedCap: once MaxUnauthenticated connections wait for their handshake,
// every new one is closed at once, whatever its address.
func TestUnauthenticatedCap(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, func(c *Config) {
		c.MaxUnauthenticated = 8 // 2 per address
		c.HandshakeTimeout = time.Hour
	})
	admitted := map[string]int{}
	for _, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"} {
		for i := 0; i < 3; i++ {
			if dialIdle(t, h, src, "").admitted {
				admitted[src]++
			}
		}
	}
	want := map[string]int{"127.0.0.2": 2, "127.0.0.3": 2, "127.0.0.4": 2, "127.0.0.5": 2}
	if len(admitted) != len(want) {
		t.Errorf("admitted %v, want %v", admitted, want)
	}
	for src, n := range want {
		if admitted[src] != n {
			t.Errorf("admitted %v, want %v", admitted, want)
		}
	}
	if c := dialIdle(t, h, "127.0.0.1", ""); c.admitted {
		t.Error("a connection admitted beyond MaxUnauthenticated")
	}
}

// TestHandshakeTimeout: a connection that has not authenticated by HandshakeTimeout is
// closed, silent or not, and its slot is free again; one that authenticated stays.
func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	h := start(t, &fakeDeployer{}, func(c *Config) {
		c.HandshakeTimeout = timeout
		c.MaxUnauthenticated = 4 // 1 per address
	})
	authed := h.client() // authenticated before the idle ones connect

	for _, banner := range []string{"", "SSH-2.0-idle\r\n"} {
		connected := time.Now() // before the server can have admitted it
		c := dialIdle(t, h, "127.0.0.2", banner)
		if !c.admitted {
			t.Fatal("the first connection from 127.0.0.2 was refused")
		}
		if dialIdle(t, h, "127.0.0.2", "").admitted {
			t.Error("a second connection from 127.0.0.2 admitted")
		}
		if closed := waitClosed(t, c); closed.Sub(connected) < timeout {
			t.Errorf("closed after %v, before the handshake timeout", closed.Sub(connected))
		}
	}
	// Both idle connections came and went after the authenticated one: its own deadline is
	// long past, and it still serves sessions.
	sess, err := authed.NewSession()
	if err != nil {
		t.Fatalf("new session on the authenticated connection: %v", err)
	}
	out, err := sess.CombinedOutput("status")
	if exitCode(err) != 1 || !strings.Contains(string(out), `unknown command "status"`) {
		t.Errorf("command on the authenticated connection: exit %d, %q", exitCode(err), out)
	}

	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	timeouts := 0
	for _, l := range h.logs.lines(t, "connections refused") {
		if l["reason"] == refusedTimeout {
			timeouts += int(l["count"].(float64))
		}
	}
	if timeouts != 2 {
		t.Errorf("%d handshake timeouts logged, want 2", timeouts)
	}
}

// TestShutdownClosesHandshakes: Shutdown closes connections still in their handshake,
// which gliderlabs does not know of, and counts them as nothing.
func TestShutdownClosesHandshakes(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, func(c *Config) { c.HandshakeTimeout = time.Hour })
	c := dialIdle(t, h, "127.0.0.2", "")
	if !c.admitted {
		t.Fatal("refused")
	}
	if err := h.stop(5 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	waitClosed(t, c)
	if l := h.logs.lines(t, "connections refused"); len(l) != 0 {
		t.Errorf("connections closed by Shutdown logged as refused: %v", l)
	}
}

func TestSourceKey(t *testing.T) {
	t.Parallel()
	for addr, want := range map[net.Addr]string{
		&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 22}:               "192.0.2.7",
		&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 22}:        "192.0.2.7",
		&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 22}:    "2001:db8:1:2::/64",
		&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ff:ff:ff:ff"), Port: 1}: "2001:db8:1:2::/64",
		&net.UnixAddr{Name: "@", Net: "unix"}:                              "@",
	} {
		if got := sourceKey(addr); got != want {
			t.Errorf("sourceKey(%v) = %q, want %q", addr, got, want)
		}
	}
}
