package releaser

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rs/zerolog"
)

// entryNames returns the names in dir, sorted.
func entryNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// assertGone fails unless the deploy root of e does not exist, not even as a hidden leftover:
// its parent holds the sentinel only.
func (e *env) assertGone() {
	e.t.Helper()
	if _, err := os.Lstat(e.r.Path()); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("deploy root after Destroy: %v, want it gone", err)
	}
	if got := entryNames(e.t, e.base); !slices.Equal(got, []string{"sentinel"}) {
		e.t.Errorf("beside the deploy root: %v, want the sentinel only", got)
	}
}

func TestDestroy(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	a := e.release(g)
	e.begin("push", a)
	e.activate(a)
	e.mustWrite("shared/.env")
	if err := e.r.Freeze("alice", "migrating"); err != nil {
		t.Fatal(err)
	}
	// A directory a build left read-only does not stop the removal.
	ro := filepath.Join(e.r.Dir(a), "cache")
	if err := os.MkdirAll(filepath.Join(ro, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "sub", "f"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(ro, "sub"), ro} {
		if err := os.Chmod(d, 0o500); err != nil {
			t.Fatal(err)
		}
	}

	unlock, err := e.r.Lock("destroy")
	if err != nil {
		t.Fatal(err)
	}
	if err := withoutDACOverride(t, e.r.Destroy); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	e.assertGone()
	unlock() // still fine, and creates nothing
	e.assertGone()

	// The lock knows, and does not bring the root back.
	if _, err := e.r.Lock("bob"); !errors.Is(err, ErrDestroyed) {
		t.Errorf("Lock after Destroy: %v, want ErrDestroyed", err)
	}
	if _, err := e.r.LockWait(t.Context(), "bob"); !errors.Is(err, ErrDestroyed) {
		t.Errorf("LockWait after Destroy: %v, want ErrDestroyed", err)
	}
	if h, err := e.r.Holder(); h != nil || err != nil {
		t.Errorf("Holder() after Destroy = %+v, %v; want nobody", h, err)
	}
	e.assertGone()
}

// TestLockWaitDestroyed: a deploy waiting for the lock while the holder destroys the root
// gets ErrDestroyed, not the lock of a file of the removed tree.
func TestLockWaitDestroyed(t *testing.T) {
	e := newEnv(t, Config{})
	// The waiter is another Releaser of the same root: another deploy, or process.
	waiter, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := e.r.Lock("destroy")
	if err != nil {
		t.Fatal(err)
	}
	busy := make(chan struct{}, 1)
	waiter.lockBusy = func() {
		select {
		case busy <- struct{}{}:
		default:
		}
	}
	res := make(chan error)
	go func() {
		unlockW, err := waiter.LockWait(t.Context(), "bob")
		if err == nil {
			unlockW()
		}
		res <- err
	}()
	<-busy
	if err := e.r.Destroy(); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-res; !errors.Is(err, ErrDestroyed) {
		t.Errorf("LockWait while the root was destroyed: %v, want ErrDestroyed", err)
	}
	if err := ErrDestroyed.Error(); err != "the environment was destroyed" {
		t.Errorf("ErrDestroyed = %q", err)
	}
	e.assertGone()
}

// TestLockDestroyedBetweenOpenAndFlock: a Lock that opened deploy.lock before Destroy
// renamed the root away, and takes its flock once the destroyer let go, holds a lock on a
// file of the destroyed tree: it notices, lets go and returns ErrDestroyed.
func TestLockDestroyedBetweenOpenAndFlock(t *testing.T) {
	e := newEnv(t, Config{})
	other, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	other.lockOpened = func() {
		unlock, err := e.r.Lock("destroy")
		if err != nil {
			t.Fatal(err)
		}
		if err := e.r.Destroy(); err != nil {
			t.Fatal(err)
		}
		unlock()
	}
	if _, err := other.Lock("bob"); !errors.Is(err, ErrDestroyed) {
		t.Errorf("Lock: %v, want ErrDestroyed", err)
	}
	e.assertGone()
}

// TestDestroyThenNewRoot: a root made again at the same path after Destroy is a new one:
// a Lock of the old one that comes late is refused, and the destroyer's unlock leaves the
// new holder's file alone.
func TestDestroyThenNewRoot(t *testing.T) {
	e := newEnv(t, Config{})
	late, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := e.r.Lock("destroy")
	if err != nil {
		t.Fatal(err)
	}
	var unlockNew func()
	late.lockOpened = func() {
		if err := e.r.Destroy(); err != nil {
			t.Fatal(err)
		}
		fresh, err := New(Config{Path: e.r.Path()}, zerolog.New(zerolog.NewTestWriter(t)))
		if err != nil {
			t.Fatal(err)
		}
		if unlockNew, err = fresh.Lock("carol"); err != nil {
			t.Fatal(err)
		}
		unlock()
	}
	if _, err := late.Lock("bob"); !errors.Is(err, ErrDestroyed) {
		t.Errorf("Lock of the destroyed root: %v, want ErrDestroyed", err)
	}
	if h, err := e.r.Holder(); err != nil || h == nil || h.Holder != "carol" {
		t.Errorf("Holder() of the new root = %+v, %v; want carol", h, err)
	}
	unlockNew()
}

func TestRemoveDestroyed(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	e.activate(e.release(g))
	// A crash right after Destroy's rename: the whole root is there, under its hidden name.
	leftover := "." + filepath.Base(e.r.Path()) + destroyedInfix + randSuffix()
	if err := os.Rename(e.r.Path(), filepath.Join(e.base, leftover)); err != nil {
		t.Fatal(err)
	}
	// Look-alikes that are not Destroy's.
	keep := []string{
		".deploy.destroyed-0123456789abcdeg",  // not hex
		".deploy.destroyed-0123456789abcdef0", // too long
		"deploy.destroyed-0123456789abcdef",   // not hidden
		".destroyed-0123456789abcdef",         // no base name
		"app",
	}
	for _, name := range keep {
		if err := os.Mkdir(filepath.Join(e.base, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	file := ".app.destroyed-0123456789abcdef" // the right name, but a file
	if err := os.WriteFile(filepath.Join(e.base, file), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	keep = append(keep, file, "sentinel")
	slices.Sort(keep)

	if err := RemoveDestroyed(e.base); err != nil {
		t.Fatal(err)
	}
	if got := entryNames(t, e.base); !slices.Equal(got, keep) {
		t.Errorf("after RemoveDestroyed: %v, want %v", got, keep)
	}
	if err := RemoveDestroyed(filepath.Join(e.base, "missing")); err != nil {
		t.Errorf("RemoveDestroyed of a missing dir: %v", err)
	}
}
