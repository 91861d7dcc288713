package releaser

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/rs/zerolog"
)

func TestNew(t *testing.T) {
	if _, err := New(Config{Path: "relative/path"}, zerolog.Nop()); err == nil {
		t.Error("New with a relative path succeeded")
	}
	if _, err := New(Config{Path: t.TempDir(), KeepReleases: -1}, zerolog.Nop()); err == nil {
		t.Error("New with negative KeepReleases succeeded")
	}
	path := filepath.Join(t.TempDir(), "a", "b")
	r, err := New(Config{Path: path + "/"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if r.Path() != path || r.keep != 5 {
		t.Errorf("Path() = %q, keep = %d", r.Path(), r.keep)
	}
	for _, d := range []string{"releases", "shared", ".slipway"} {
		if !isDir(filepath.Join(path, d)) {
			t.Errorf("%s not created", d)
		}
	}
	const sha = "0123456789abcdef0123456789abcdef01234567"
	if got, want := r.Dir(sha), filepath.Join(path, "releases", sha); got != want {
		t.Errorf("Dir = %q, want %q", got, want)
	}
}

func TestCompleteRecordsOutsideTheRelease(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	sha := g.commit(g.treeOf(map[string]file{
		"index.html": {filemode.Regular, "x"},
		// Names a marker inside the release might have, as links out of it.
		".deploy-complete": {filemode.Symlink, "../../../sentinel/owned"},
		"REVISION":         {filemode.Symlink, "../../../sentinel/owned"},
		"releases.json":    {filemode.Symlink, "../../../sentinel/owned"},
	}))
	if _, err := e.r.Materialize(t.Context(), g.st, sha, nil); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, e.r.Path())
	if e.r.IsComplete(sha) {
		t.Fatal("complete before Complete")
	}
	if err := e.r.Complete(sha); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Complete(sha); err != nil {
		t.Fatalf("second Complete: %v", err)
	}
	if !e.r.IsComplete(sha) {
		t.Fatal("not complete after Complete")
	}
	after := snapshot(t, e.r.Path())
	for k, v := range after {
		if before[k] != v && !strings.HasPrefix(k, ".slipway/") {
			t.Errorf("Complete changed %s: %q -> %q", k, before[k], v)
		}
	}
	b, err := os.ReadFile(filepath.Join(e.r.Path(), ".slipway", "releases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil || st.Releases[sha] == nil || !st.Releases[sha].Completed.Equal(e.clock) {
		t.Errorf("releases.json = %s (%v)", b, err)
	}

	if err := e.r.Complete("0123456789abcdef0123456789abcdef01234567"); err == nil {
		t.Error("Complete of a release that does not exist succeeded")
	}
	if err := e.r.Complete("../../sentinel"); err == nil {
		t.Error("Complete of a bad sha succeeded")
	}
}

func TestActivate(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	a, b := e.release(g), e.release(g)
	link := filepath.Join(e.r.Path(), "current")
	// A temporary link left by a crash.
	if err := os.Symlink("releases/"+b, filepath.Join(e.r.Path(), ".current.tmp-crashed")); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		sha      string
		wasLive  bool
		wantLink string
	}{
		{a, false, "releases/" + a},
		{b, false, "releases/" + b},
		{a, true, "releases/" + a}, // a rollback
		{a, true, "releases/" + a}, // the live one again
	}
	for i, s := range steps {
		prev := e.current()
		var oldSnap map[string]string
		if prev != "" {
			oldSnap = snapshot(t, filepath.Join(e.r.Path(), prev))
		}
		e.tick(1)
		wasLive, err := e.r.Activate(s.sha)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if wasLive != s.wasLive {
			t.Errorf("step %d: wasLiveBefore = %v, want %v", i, wasLive, s.wasLive)
		}
		if got := e.current(); got != s.wantLink {
			t.Errorf("step %d: current -> %q, want %q", i, got, s.wantLink)
		}
		if cur, err := e.r.Current(); err != nil || cur != s.sha {
			t.Errorf("step %d: Current() = %q, %v", i, cur, err)
		}
		// rename(2) replaced the link; nothing landed inside the release it named.
		if prev != "" {
			assertSnapshot(t, snapshot(t, filepath.Join(e.r.Path(), prev)), oldSnap)
		}
		entries, _ := filepath.Glob(filepath.Join(e.r.Path(), ".current.tmp-*")) // the only error: a bad pattern
		if len(entries) != 0 {
			t.Errorf("step %d: temporary links left: %v", i, entries)
		}
	}

	rels, err := e.r.Releases()
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 2 || rels[0].SHA != a || !rels[0].Live || rels[1].SHA != b || rels[1].Live ||
		!rels[0].LastActivated.After(rels[1].LastActivated) || rels[0].Completed.IsZero() {
		t.Errorf("Releases() = %+v", rels)
	}

	// Refusals leave current alone.
	c := g.commit(g.treeOf(map[string]file{"c": {filemode.Regular, "c"}}))
	if _, err := e.r.Materialize(t.Context(), g.st, c, nil); err != nil {
		t.Fatal(err)
	}
	for _, sha := range []string{c, "0123456789abcdef0123456789abcdef01234567", "../../sentinel/x"} {
		if _, err := e.r.Activate(sha); err == nil {
			t.Errorf("Activate(%q) of an incomplete release succeeded", sha)
		}
	}
	if got := e.current(); got != "releases/"+a {
		t.Errorf("current -> %q after refused activations", got)
	}

	// current as a real directory is never written into nor replaced.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(link, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Activate(b); err == nil {
		t.Error("Activate over a current directory succeeded")
	}
	if entries, err := os.ReadDir(link); err != nil || len(entries) != 0 {
		t.Errorf("entries created inside the current directory: %v, %v", entries, err)
	}
	if _, err := e.r.Current(); err == nil || !strings.Contains(err.Error(), "not a symlink") {
		t.Errorf("Current() with a directory: %v", err)
	}
}

func TestRecover(t *testing.T) {
	tests := []struct {
		name string
		// setup gets three complete releases a, b, c (none activated) and an incomplete
		// one, x; it returns what current must name afterwards ("" = no current) and the
		// releases that must be left.
		setup       func(e *env, a, b, c, x string) (current string, left []string)
		wantErr     string
		wantRecords []string // nil: the same as left
	}{{
		name: "healthy",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(b)
			return b, []string{a, b, c}
		},
	}, {
		name: "dangling current goes to the last one live, not the highest name",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			shas := []string{a, b, c}
			slices.Sort(shas)
			e.activate(shas[2])
			e.activate(shas[0])
			e.activate(shas[1])
			e.mustRemove("releases/" + shas[1]) // current dangles
			return shas[0], []string{shas[0], shas[2]}
		},
	}, {
		name: "current names an incomplete release",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(a)
			e.activate(b)
			e.relink("releases/" + x)
			return b, []string{a, b, c}
		},
	}, {
		name: "current missing while a release was live",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(c)
			e.mustRemove("current")
			return c, []string{a, b, c}
		},
	}, {
		name: "current outside releases",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(a)
			e.relink("../sentinel")
			return a, []string{a, b, c}
		},
	}, {
		name: "no release ever live: no current",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.relink("releases/" + x)
			return "", []string{a, b, c}
		},
	}, {
		name: "records lost: the live release is adopted, not deleted",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(a)
			e.mustRemove(".slipway/releases.json")
			return a, []string{a}
		},
	}, {
		name: "record whose directory is gone",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(a)
			e.mustRemove("releases/" + b)
			return a, []string{a, c}
		},
	}, {
		name: "crash between the swap and its record",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.activate(a)
			e.relink("releases/" + c) // c is live but was never recorded live
			return c, []string{a, b, c}
		},
	}, {
		name: "current is a directory",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			e.mustRemove("current")
			if err := os.Mkdir(filepath.Join(e.r.Path(), "current"), 0o755); err != nil {
				e.t.Fatal(err)
			}
			return "", nil
		},
		wantErr: "not a symlink",
	}, {
		name: "unreadable records: nothing is removed",
		setup: func(e *env, a, b, c, x string) (string, []string) {
			if err := os.WriteFile(filepath.Join(e.r.Path(), ".slipway", "releases.json"), []byte("{"), 0o644); err != nil {
				e.t.Fatal(err)
			}
			return "", nil
		},
		wantErr: "releases.json",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newRepo(t)
			a, b, c := e.release(g), e.release(g), e.release(g)
			x := g.commit(g.treeOf(map[string]file{"x": {filemode.Regular, "x"}}))
			if _, err := e.r.Materialize(t.Context(), g.st, x, nil); err != nil {
				t.Fatal(err)
			}
			// Debris of a crash.
			e.mustWrite("releases/notes.txt")
			e.mustWrite(".slipway/.releases.json.tmp-123")
			if err := os.Symlink("releases/"+a, filepath.Join(e.r.Path(), ".current.tmp-123")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(a, filepath.Join(e.r.Path(), "releases", "ffffffffffffffffffffffffffffffffffffffff")); err != nil {
				t.Fatal(err)
			}
			wantCurrent, left := tt.setup(e, a, b, c, x)
			before := snapshot(t, e.r.Path())

			err := e.r.Recover()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Recover: %v, want an error with %q", err, tt.wantErr)
				}
				after := snapshot(t, e.r.Path())
				delete(after, ".slipway/deploy.lock") // Recover takes the lock
				assertSnapshot(t, after, before)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if wantCurrent == "" {
				if got := e.current(); got != "" {
					t.Errorf("current -> %q, want no current", got)
				}
			} else if got := e.current(); got != "releases/"+wantCurrent {
				t.Errorf("current -> %q, want releases/%s", got, wantCurrent)
			}
			slices.Sort(left)
			if got := e.releasesDirEntries(); !slices.Equal(got, left) {
				t.Errorf("releases/ = %v, want %v", got, left)
			}
			records := e.releaseSHAs()
			slices.Sort(records)
			if !slices.Equal(records, left) {
				t.Errorf("Releases() = %v, want %v", records, left)
			}
			if rels, err := e.r.Releases(); err != nil || wantCurrent != "" && (len(rels) == 0 || rels[0].SHA != wantCurrent || !rels[0].Live) {
				t.Errorf("Releases() does not start with the live one: %+v, %v", rels, err)
			}
			for _, pattern := range []string{".current.tmp-*", ".slipway/.*.tmp-*"} {
				if m, _ := filepath.Glob(filepath.Join(e.r.Path(), pattern)); len(m) != 0 { // the only error: a bad pattern
					t.Errorf("left after Recover: %v", m)
				}
			}
			// The records agree with current now: Prune by activation keeps the live one
			// and the next most recently live.
			st, _, err := e.r.loadState()
			if err != nil {
				t.Fatal(err)
			}
			if st.Live != wantCurrent || (wantCurrent != "" && st.Releases[wantCurrent].Seq != st.Seq) {
				t.Errorf("records: live %q, seq %d; want %q as the last activated", st.Live, st.Seq, wantCurrent)
			}
			// A second Recover finds nothing to do.
			before = snapshot(t, e.r.Path())
			if err := e.r.Recover(); err != nil {
				t.Fatal(err)
			}
			assertSnapshot(t, snapshot(t, e.r.Path()), before)
		})
	}
}

func (e *env) relink(target string) {
	e.t.Helper()
	e.mustRemove("current")
	if err := os.Symlink(target, filepath.Join(e.r.Path(), "current")); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) mustRemove(rel string) {
	e.t.Helper()
	if err := os.RemoveAll(filepath.Join(e.r.Path(), rel)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) mustWrite(rel string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.r.Path(), rel), []byte("x"), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// A fleet whose targets leave this host out records its live release in .slipway/live:
// there is no current for a web server here to serve.
func TestLiveInMeta(t *testing.T) {
	e := newEnv(t, Config{LiveInMeta: true})
	sha := e.release(newRepo(t))
	if _, err := e.r.Activate(sha); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(e.r.Path(), "current")); !os.IsNotExist(err) {
		t.Errorf("current exists: %v", err)
	}
	if got, err := os.Readlink(filepath.Join(e.r.Path(), ".slipway", "live")); err != nil || got != "../releases/"+sha {
		t.Errorf(".slipway/live -> %q, %v", got, err)
	}
	if live, err := e.r.Current(); err != nil || live != sha {
		t.Errorf("Current = %q, %v", live, err)
	}
	if err := e.r.Recover(); err != nil {
		t.Fatal(err)
	}
	if live, err := e.r.Current(); err != nil || live != sha {
		t.Errorf("Current after Recover = %q, %v", live, err)
	}
}
