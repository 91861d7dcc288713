package releaser

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/filemode"
)

// holdFixture is a deploy root with a release p live before a release s, live now, whose
// build left built.txt = "old".
type holdFixture struct {
	*env
	g         *repo
	p, s      string
	sActive   time.Time // when s went live
	sRecord   record    // its record then
	oldSnap   map[string]string
	oldInodes map[string]os.FileInfo
}

func newHoldFixture(t *testing.T) *holdFixture {
	t.Helper()
	e := newEnv(t, Config{KeepReleases: 1})
	g := newRepo(t)
	f := &holdFixture{env: e, g: g}
	f.p = f.build(g.commit(g.treeOf(map[string]file{"index.html": {filemode.Regular, "p"}})), "p")
	e.activate(f.p)
	f.s = f.build(g.commit(g.treeOf(map[string]file{
		"index.html":      {filemode.Regular, "s"},
		"bin/run":         {filemode.Executable, "#!/bin/sh\n"},
		"docs/readme":     {filemode.Symlink, "../index.html"},
		"vendor/lib/a.go": {filemode.Regular, "package a"},
	})), "old")
	e.activate(f.s)
	f.sActive = e.clock
	f.sRecord = *f.state().Releases[f.s]
	// What a build may leave: a read-only directory.
	if err := os.Chmod(filepath.Join(e.r.Dir(f.s), "vendor", "lib"), 0o555); err != nil {
		t.Fatal(err)
	}
	f.oldSnap = snapshot(t, e.r.Dir(f.s))
	f.oldInodes = map[string]os.FileInfo{}
	for _, p := range []string{"index.html", "bin/run", "docs/readme", "built.txt"} {
		fi, err := os.Lstat(filepath.Join(e.r.Dir(f.s), p))
		if err != nil {
			t.Fatal(err)
		}
		f.oldInodes[p] = fi
	}
	return f
}

// build writes release sha, "builds" it (built.txt = marker) and completes it.
func (f *holdFixture) build(sha, marker string) string {
	f.t.Helper()
	if _, err := f.r.Materialize(f.t.Context(), f.g.st, sha, nil); err != nil {
		f.t.Fatal(err)
	}
	f.write(sha, marker)
	if err := f.r.Complete(sha); err != nil {
		f.t.Fatal(err)
	}
	return sha
}

func (f *holdFixture) write(sha, marker string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.r.Dir(sha), "built.txt"), []byte(marker), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *holdFixture) hold() {
	f.t.Helper()
	if err := f.r.Hold(f.s); err != nil {
		f.t.Fatal(err)
	}
}

func (f *holdFixture) marker() string {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.r.Path(), "current", "built.txt"))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

func (f *holdFixture) state() *state {
	f.t.Helper()
	st, _, err := f.r.loadState()
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

func (f *holdFixture) editState(fn func(st *state)) {
	f.t.Helper()
	err := f.r.updateState(func(st *state) (bool, error) { fn(st); return true, nil })
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *holdFixture) linkTree(src, dst string) {
	f.t.Helper()
	root, err := os.OpenRoot(filepath.Join(f.r.Path(), "releases"))
	if err != nil {
		f.t.Fatal(err)
	}
	defer root.Close() // a directory: closing it loses nothing
	if err := linkTree(root, src, dst); err != nil {
		f.t.Fatal(err)
	}
}

func (f *holdFixture) swap(name string) {
	f.t.Helper()
	if err := f.r.swapCurrent(name); err != nil {
		f.t.Fatal(err)
	}
}

// assertHealthy checks that current names releases/<sha>, complete, and that no hold or
// copy is left.
func (f *holdFixture) assertHealthy(sha string) {
	f.t.Helper()
	if got := f.current(); got != "releases/"+sha {
		f.t.Errorf("current -> %q, want releases/%s", got, sha)
	}
	if !f.r.IsComplete(sha) {
		f.t.Errorf("%s is not complete", sha)
	}
	for _, name := range f.releasesDirEntries() {
		if strings.HasPrefix(name, ".") {
			f.t.Errorf("left in releases/: %s", name)
		}
	}
	if st := f.state(); st.Hold != nil {
		f.t.Errorf("hold still recorded: %+v", st.Hold)
	}
}

// assertOld checks that s is live with its old build, record and files, the very inodes.
func (f *holdFixture) assertOld() {
	f.t.Helper()
	f.assertHealthy(f.s)
	assertSnapshot(f.t, snapshot(f.t, f.r.Dir(f.s)), f.oldSnap)
	for p, old := range f.oldInodes {
		fi, err := os.Lstat(filepath.Join(f.r.Dir(f.s), p))
		if err != nil || !os.SameFile(fi, old) {
			f.t.Errorf("%s is not the original file (%v)", p, err)
		}
	}
	if rec := f.state().Releases[f.s]; rec == nil || *rec != f.sRecord {
		f.t.Errorf("record of s = %+v, want the original %+v", rec, f.sRecord)
	}
	if at, err := f.r.ActivatedAt(f.s); err != nil || !at.Equal(f.sActive) {
		f.t.Errorf("ActivatedAt = %v, %v; want %v", at, err, f.sActive)
	}
	if prev, err := f.r.Previous(); err != nil || prev != f.p {
		f.t.Errorf("Previous() = %q, %v; want %q", prev, err, f.p)
	}
	if got := f.releaseSHAs(); !slices.Equal(got, []string{f.s, f.p}) {
		f.t.Errorf("Releases() = %v, want [s p]", got)
	}
}

func TestHoldActivate(t *testing.T) {
	f := newHoldFixture(t)
	f.hold()

	// The live tree is the copy; everything else still says s is live.
	if got := f.current(); got != "releases/.hold-"+f.s {
		t.Fatalf("current -> %q", got)
	}
	hold := filepath.Join(f.r.Path(), "releases", ".hold-"+f.s)
	assertSnapshot(t, snapshot(t, hold), f.oldSnap)
	for p, old := range f.oldInodes {
		if fi, err := os.Lstat(filepath.Join(hold, p)); err != nil || !os.SameFile(fi, old) {
			t.Errorf("hold/%s is not a hard link to the original (%v)", p, err)
		}
	}
	if _, err := os.Lstat(f.r.Dir(f.s)); !os.IsNotExist(err) {
		t.Errorf("releases/<s> still there: %v", err)
	}
	if cur, err := f.r.Current(); err != nil || cur != f.s {
		t.Errorf("Current() = %q, %v", cur, err)
	}
	if f.r.IsComplete(f.s) {
		t.Error("s is complete while held")
	}
	if rels, err := f.r.Releases(); err != nil || len(rels) != 2 || rels[0].SHA != f.s || !rels[0].Live ||
		!rels[0].LastActivated.Equal(f.sActive) || rels[1].SHA != f.p {
		t.Errorf("Releases() while held = %+v, %v", rels, err)
	}
	if prev, err := f.r.Previous(); err != nil || prev != f.p {
		t.Errorf("Previous() while held = %q, %v", prev, err)
	}
	// Pruning while held touches neither the hold nor the previous release.
	if removed, err := f.r.Prune(); err != nil || len(removed) != 0 {
		t.Errorf("Prune() while held = %v, %v", removed, err)
	}

	// The rebuild.
	f.tick(time.Minute)
	f.build(f.s, "new")
	f.tick(time.Minute)
	wasLive, err := f.r.Activate(f.s)
	if err != nil {
		t.Fatal(err)
	}
	if wasLive {
		t.Error("Activate of a rebuild says it was live before (a rollback)")
	}
	if got := f.current(); got != "releases/"+f.s {
		t.Errorf("current -> %q, want releases/s", got)
	}
	// The old build stays aside until Prune, in case the rebuild must go back (Unrebuild).
	if _, err := os.Lstat(f.r.Dir(holdName(f.s))); err != nil {
		t.Errorf("the held copy is gone at Activate: %v", err)
	}
	if got := f.marker(); got != "new" {
		t.Errorf("live build %q, want new", got)
	}
	if at, err := f.r.ActivatedAt(f.s); err != nil || !at.Equal(f.clock) {
		t.Errorf("ActivatedAt = %v, %v; want %v", at, err, f.clock)
	}
	if prev, err := f.r.Previous(); err != nil || prev != f.p {
		t.Errorf("Previous() after the rebuild = %q, %v; want p", prev, err)
	}
	if removed, err := f.r.Prune(); err != nil || len(removed) != 0 {
		t.Errorf("Prune() after the rebuild = %v, %v; keep 1 keeps s and p", removed, err)
	}
	f.assertHealthy(f.s)
}

// A rebuild that went live and then failed (its health check) goes back: Unrebuild puts
// the old build, the very files, back at its path, and current on it; nothing is left aside.
func TestUnrebuild(t *testing.T) {
	f := newHoldFixture(t)
	f.hold()
	f.tick(time.Minute)
	f.build(f.s, "new")
	if _, err := f.r.Activate(f.s); err != nil {
		t.Fatal(err)
	}
	if got := f.marker(); got != "new" {
		t.Fatalf("live build %q, want new", got)
	}
	if err := f.r.Unrebuild(f.s); err != nil {
		t.Fatal(err)
	}
	f.assertHealthy(f.s)
	if got := f.marker(); got != "old" {
		t.Errorf("live build %q after Unrebuild, want old", got)
	}
	for p, old := range f.oldInodes {
		if fi, err := os.Lstat(filepath.Join(f.r.Dir(f.s), p)); err != nil || !os.SameFile(fi, old) {
			t.Errorf("%s is not the original file (%v)", p, err)
		}
	}
	// Nothing is kept aside any more: a second Unrebuild has nothing to put back.
	if err := f.r.Unrebuild(f.s); err == nil {
		t.Error("a second Unrebuild succeeded")
	}
}

func TestHoldRestore(t *testing.T) {
	tests := []struct {
		name    string
		rebuild func(f *holdFixture) // how far the rebuild got before it failed
	}{
		{"before checkout", func(f *holdFixture) {}},
		{"checkout half done", func(f *holdFixture) {
			if err := os.Mkdir(f.r.Dir(f.s), 0o755); err != nil {
				f.t.Fatal(err)
			}
			f.write(f.s, "partial")
		}},
		{"build failed", func(f *holdFixture) {
			if _, err := f.r.Materialize(f.t.Context(), f.g.st, f.s, nil); err != nil {
				f.t.Fatal(err)
			}
			f.write(f.s, "new")
		}},
		{"complete, activation failed", func(f *holdFixture) { f.build(f.s, "new") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each has its own deploy root
			f := newHoldFixture(t)
			f.hold()
			f.tick(time.Minute)
			tt.rebuild(f)
			if err := f.r.Restore(f.s); err != nil {
				t.Fatal(err)
			}
			f.assertOld()
			if got := f.marker(); got != "old" {
				t.Errorf("live build %q, want old", got)
			}
			if err := f.r.Restore(f.s); err == nil {
				t.Error("second Restore succeeded")
			}
			// Nothing is left for Recover to do.
			before := snapshot(t, f.r.Path())
			if err := f.r.Recover(); err != nil {
				t.Fatal(err)
			}
			after := snapshot(t, f.r.Path())
			delete(after, ".slipway/deploy.lock") // Recover takes the lock
			assertSnapshot(t, after, before)
		})
	}
}

func TestHoldRefusals(t *testing.T) {
	f := newHoldFixture(t)
	if err := f.r.Hold(f.p); err == nil || !strings.Contains(err.Error(), "not live") {
		t.Errorf("Hold of a release not live: %v", err)
	}
	if err := f.r.Hold("../../sentinel"); err == nil {
		t.Error("Hold of a bad sha succeeded")
	}
	if err := f.r.Restore(f.s); err == nil {
		t.Error("Restore with nothing held succeeded")
	}
	f.hold()
	if err := f.r.Hold(f.s); err == nil {
		t.Error("second Hold succeeded")
	}
	if _, err := f.r.Activate(f.p); err == nil || !strings.Contains(err.Error(), "held") {
		t.Errorf("Activate of another release while held: %v", err)
	}
	if err := f.r.Discard(f.s); err == nil {
		t.Error("Discard of the held live release succeeded")
	}
	if got := f.current(); got != "releases/.hold-"+f.s {
		t.Errorf("current -> %q after refusals", got)
	}
	if err := f.r.Restore(f.p); err == nil {
		t.Error("Restore of a release not held succeeded")
	}
	if err := f.r.Restore(f.s); err != nil {
		t.Fatal(err)
	}
	f.assertOld()
}

// TestRecoverHold builds, on disk, the state a kill -9 leaves at each step of Hold, of the
// rebuild, of Activate after a hold and of Restore, and checks that Recover makes current
// name a complete release: the old build unless the rebuild had gone live.
func TestRecoverHold(t *testing.T) {
	const old, rebuilt, previous = "old", "new", "p"
	tests := []struct {
		name  string
		setup func(f *holdFixture)
		want  string
	}{
		// Hold.
		{"hold: copy half made", func(f *holdFixture) {
			f.linkTree(f.s, ".tmp-123")
			f.mustRemove("releases/.tmp-123/index.html")
		}, old},
		{"hold: copy made, current not moved", func(f *holdFixture) {
			f.linkTree(f.s, ".hold-"+f.s)
		}, old},
		{"hold: current on the copy, record not set aside", func(f *holdFixture) {
			f.linkTree(f.s, ".hold-"+f.s)
			f.swap(".hold-" + f.s)
		}, old},
		{"hold: record set aside, original not removed", func(f *holdFixture) {
			f.linkTree(f.s, ".hold-"+f.s)
			f.swap(".hold-" + f.s)
			f.editState(func(st *state) {
				st.Hold = &heldRecord{SHA: f.s, Record: *st.Releases[f.s]}
				delete(st.Releases, f.s)
			})
		}, old},
		{"hold: original half removed", func(f *holdFixture) {
			f.linkTree(f.s, ".hold-"+f.s)
			f.swap(".hold-" + f.s)
			f.editState(func(st *state) {
				st.Hold = &heldRecord{SHA: f.s, Record: *st.Releases[f.s]}
				delete(st.Releases, f.s)
			})
			f.mustRemove("releases/" + f.s + "/index.html")
		}, old},
		// The rebuild.
		{"rebuild: held", func(f *holdFixture) { f.hold() }, old},
		{"rebuild: checkout half done", func(f *holdFixture) {
			f.hold()
			if err := os.Mkdir(f.r.Dir(f.s), 0o755); err != nil {
				f.t.Fatal(err)
			}
			f.write(f.s, "partial")
		}, old},
		{"rebuild: complete, not activated", func(f *holdFixture) {
			f.hold()
			f.build(f.s, rebuilt)
		}, old},
		// Activate after a hold.
		{"activate: current swapped, nothing recorded", func(f *holdFixture) {
			f.hold()
			f.build(f.s, rebuilt)
			f.swap(f.s)
		}, rebuilt},
		{"activate: recorded, copy not removed", func(f *holdFixture) {
			f.hold()
			f.build(f.s, rebuilt)
			f.swap(f.s)
			f.editState(func(st *state) {
				st.activated(f.s, f.clock)
				st.Hold = nil
			})
		}, rebuilt},
		// Restore.
		{"restore: rebuild removed, copy back half made", func(f *holdFixture) {
			f.hold()
			f.linkTree(".hold-"+f.s, ".tmp-456")
		}, old},
		{"restore: copy back in place, not recorded", func(f *holdFixture) {
			f.hold()
			f.linkTree(".hold-"+f.s, f.s)
		}, old},
		{"restore: recorded, current not moved", func(f *holdFixture) {
			f.hold()
			f.linkTree(".hold-"+f.s, f.s)
			f.editState(func(st *state) { rec := st.Hold.Record; st.Releases[f.s] = &rec })
		}, old},
		{"restore: current moved, hold still recorded", func(f *holdFixture) {
			f.hold()
			f.linkTree(".hold-"+f.s, f.s)
			f.editState(func(st *state) { rec := st.Hold.Record; st.Releases[f.s] = &rec })
			f.swap(f.s)
		}, old},
		{"restore: hold no longer recorded, copy not removed", func(f *holdFixture) {
			f.hold()
			f.linkTree(".hold-"+f.s, f.s)
			f.editState(func(st *state) { rec := st.Hold.Record; st.Releases[f.s] = &rec })
			f.swap(f.s)
			f.editState(func(st *state) { st.Hold = nil })
		}, old},
		// Not a crash: the held copy deleted by hand. current dangles.
		{"hold deleted by hand", func(f *holdFixture) {
			f.hold()
			f.mustRemove("releases/.hold-" + f.s)
		}, previous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each has its own deploy root
			f := newHoldFixture(t)
			f.tick(time.Minute)
			tt.setup(f)
			if err := f.r.Recover(); err != nil {
				t.Fatal(err)
			}
			switch tt.want {
			case old:
				f.assertOld()
			case rebuilt:
				f.assertHealthy(f.s)
			case previous:
				f.assertHealthy(f.p)
			}
			if got := f.marker(); got != tt.want {
				t.Errorf("live build %q, want %q", got, tt.want)
			}
			if cur, err := f.r.Current(); err != nil || cur != map[string]string{old: f.s, rebuilt: f.s, previous: f.p}[tt.want] {
				t.Errorf("Current() = %q, %v", cur, err)
			}
			before := snapshot(t, f.r.Path())
			if err := f.r.Recover(); err != nil {
				t.Fatal(err)
			}
			assertSnapshot(t, snapshot(t, f.r.Path()), before)
		})
	}
}
