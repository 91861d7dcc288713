package gitserver

import (
	"strings"
	"sync"
	"testing"

	"github.com/slipway/slipway/internal/authkeys"
)

// TestSetKeys: keys set while the server runs take effect at once, with the real ssh and
// git: a key added authenticates, a key removed is refused on its next connection, and a
// connection it made before gets no new session.
func TestSetKeys(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	bob, bobKey := newKey(t, h.home, "bob")
	if _, stderr, err := h.ssh(bob, "status"); exitCode(err) != 255 || !strings.Contains(stderr, "Permission denied") {
		t.Fatalf("bob before SetKeys: exit %d, %q", exitCode(err), stderr)
	}

	h.srv.SetKeys([]authkeys.Key{h.aliceKey, bobKey})
	// No Commander: the command is refused, after bob authenticated.
	if _, stderr, err := h.ssh(bob, "status"); exitCode(err) != 1 || !strings.Contains(stderr, `slipway: unknown command "status"`) {
		t.Fatalf("bob after SetKeys: exit %d, %q", exitCode(err), stderr)
	}

	before := h.client() // alice, connected while her key is authorized
	h.srv.SetKeys([]authkeys.Key{bobKey})
	work := h.work()
	if stderr, err := h.push(work, "production", "main"); err == nil || !strings.Contains(stderr, "Permission denied") {
		t.Errorf("alice's push after her key was removed: err=%v\n%s", err, stderr)
	}
	sess, err := before.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	out, err := sess.CombinedOutput("git-receive-pack 'myapp/production'")
	if exitCode(err) != 1 || !strings.Contains(string(out), "slipway: no authorized key on this connection") {
		t.Errorf("new session over alice's earlier connection: exit %d, %q", exitCode(err), out)
	}
	if r, _ := d.counts(); r != 0 {
		t.Errorf("Reserve called %d times for a removed key", r)
	}

	// Keys change while pushes authenticate: go test -race watches.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				h.srv.SetKeys([]authkeys.Key{bobKey, h.aliceKey})
			}
		}
	}()
	_, stderr, err := h.exec(work, bob, "git", "push", "production", "main")
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("bob's push: %v\n%s", err, stderr)
	}
	if p := d.got(); len(p) != 1 || p[0].Pusher != "bob" {
		t.Errorf("pushes = %+v, want bob's", p)
	}
}
