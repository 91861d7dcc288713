package releaser

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/filemode"
)

func TestPrune(t *testing.T) {
	tests := []struct {
		name  string
		keep  int
		grace time.Duration
		// run gets five complete releases, s[0] < s[1] < ... by name, none activated, and
		// returns the releases Prune must remove and those it must leave, newest first.
		run         func(e *env, s []string) (removed, left []string)
		secondPrune time.Duration // if set: advance the clock, Prune again, all beyond keep go
	}{{
		name: "by activation, not by name",
		keep: 3,
		run: func(e *env, s []string) ([]string, []string) {
			for _, i := range []int{4, 3, 2, 1, 0} {
				e.activate(s[i])
			}
			return []string{s[4], s[3]}, []string{s[0], s[1], s[2]}
		},
	}, {
		name: "a rollback makes a release recent",
		keep: 3,
		run: func(e *env, s []string) ([]string, []string) {
			for _, i := range []int{0, 1, 2, 3, 4, 1} {
				e.activate(s[i])
			}
			return []string{s[2], s[0]}, []string{s[1], s[4], s[3]}
		},
	}, {
		name: "never activated counts as oldest",
		keep: 3,
		run: func(e *env, s []string) ([]string, []string) {
			e.activate(s[3])
			e.activate(s[1])
			e.activate(s[2])
			// s[0] and s[4] were completed after s[3] was activated, and never went live.
			return []string{s[0], s[4]}, []string{s[2], s[1], s[3]}
		},
	}, {
		name: "live and previous are kept even when the records say otherwise",
		keep: 1,
		run: func(e *env, s []string) ([]string, []string) {
			e.activate(s[0])
			e.activate(s[1])
			e.activate(s[2])
			e.relink("releases/" + s[0]) // current moved without a record
			return []string{s[1], s[3], s[4]}, []string{s[0], s[2]}
		},
	}, {
		name: "keep 1 keeps the live one and the one live before it",
		keep: 1,
		run: func(e *env, s []string) ([]string, []string) {
			e.activate(s[4])
			e.activate(s[2])
			return []string{s[0], s[1], s[3]}, []string{s[2], s[4]}
		},
	}, {
		name: "after a rollback, previous is the one rolled back from",
		keep: 1,
		run: func(e *env, s []string) ([]string, []string) {
			for _, i := range []int{0, 1, 2, 3, 4, 1} {
				e.activate(s[i])
			}
			return []string{s[0], s[2], s[3]}, []string{s[1], s[4]}
		},
	}, {
		name: "keep 1 with nothing live before: only the live one",
		keep: 1,
		run: func(e *env, s []string) ([]string, []string) {
			e.activate(s[3])
			return []string{s[0], s[1], s[2], s[4]}, []string{s[3]}
		},
	}, {
		name:  "grace keeps what was live recently",
		keep:  1,
		grace: 5 * time.Minute,
		run: func(e *env, s []string) ([]string, []string) {
			e.activate(s[0])
			e.activate(s[1]) // s[0] live until now
			e.tick(10 * time.Minute)
			e.activate(s[2]) // s[1] live until now
			e.activate(s[3]) // 1 minute later; s[2] too
			// s[4] never went live: no grace. s[0] stopped being live 11 minutes ago.
			return []string{s[0], s[4]}, []string{s[3], s[2], s[1]}
		},
		secondPrune: 5*time.Minute + time.Second,
	}, {
		name: "nothing to do",
		keep: 10,
		run: func(e *env, s []string) ([]string, []string) {
			for _, sha := range s {
				e.activate(sha)
			}
			return nil, []string{s[4], s[3], s[2], s[1], s[0]}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{KeepReleases: tt.keep, PruneGrace: tt.grace})
			g := newRepo(t)
			var s []string
			for range 5 {
				e.tick(time.Second)
				s = append(s, e.release(g))
			}
			slices.Sort(s)
			wantRemoved, wantLeft := tt.run(e, s)
			live, err := e.r.Current()
			if err != nil {
				t.Fatal(err)
			}

			removed, err := e.r.Prune()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(removed)
			slices.Sort(wantRemoved)
			if !slices.Equal(removed, wantRemoved) {
				t.Errorf("removed %v, want %v", removed, wantRemoved)
			}
			if got := e.releaseSHAs(); !slices.Equal(got, wantLeft) {
				t.Errorf("Releases() = %v, want %v", got, wantLeft)
			}
			for _, sha := range removed {
				if _, err := os.Lstat(e.r.Dir(sha)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s still on disk: %v", sha, err)
				}
			}
			if cur, err := e.r.Current(); err != nil || cur != live {
				t.Errorf("current changed: %s -> %s (%v)", live, cur, err)
			}

			if tt.secondPrune != 0 {
				e.tick(tt.secondPrune)
				if _, err := e.r.Prune(); err != nil {
					t.Fatal(err)
				}
				// Live and previous stay, whatever keep says.
				want := wantLeft[:max(tt.keep, 2)]
				if got := e.releaseSHAs(); !slices.Equal(got, want) {
					t.Errorf("after the grace: Releases() = %v, want %v", got, want)
				}
			}
		})
	}
}

func TestDiscard(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	live := e.release(g)
	e.activate(live)

	tests := []struct {
		name     string
		complete bool
		readOnly bool
	}{
		{"incomplete", false, false},
		{"complete", true, false},
		{"read-only content", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sha := g.commit(g.treeOf(map[string]file{
				"a/b/c.txt": {filemode.Regular, "c"},
				"a/d":       {filemode.Executable, "d"},
				"e":         {filemode.Symlink, "/etc/passwd"},
			}))
			if _, err := e.r.Materialize(t.Context(), g.st, sha, nil); err != nil {
				t.Fatal(err)
			}
			if tt.complete {
				if err := e.r.Complete(sha); err != nil {
					t.Fatal(err)
				}
			}
			dir := e.r.Dir(sha)
			if tt.readOnly {
				// What a build may leave: read-only files, and dirs without write or
				// even read and search permission.
				for p, mode := range map[string]os.FileMode{"a/b/c.txt": 0o444, "a/b": 0o000, "a": 0o555, ".": 0o555} {
					if err := os.Chmod(filepath.Join(dir, p), mode); err != nil {
						t.Fatal(err)
					}
				}
			}
			err := withoutDACOverride(t, func() error {
				if tt.readOnly {
					// The test means something only if permissions are enforced here.
					if err := os.Remove(filepath.Join(dir, "e")); !errors.Is(err, fs.ErrPermission) {
						return errors.New("permissions are not enforced: the test is void")
					}
				}
				return e.r.Discard(sha)
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("release still on disk: %v", err)
			}
			if e.r.IsComplete(sha) || slices.Contains(e.releaseSHAs(), sha) {
				t.Error("release still recorded")
			}
			if err := e.r.Discard(sha); err != nil {
				t.Errorf("second Discard: %v", err)
			}
		})
	}

	if err := e.r.Discard(live); err == nil || !strings.Contains(err.Error(), "live") {
		t.Errorf("Discard of the live release: %v", err)
	}
	if !e.r.IsComplete(live) {
		t.Error("the live release was harmed")
	}
	if err := e.r.Discard("../../sentinel"); err == nil {
		t.Error("Discard of a bad sha succeeded")
	}
}

func TestPrevious(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	var s []string
	for range 4 {
		s = append(s, e.release(g))
	}
	slices.Sort(s)
	if _, err := e.r.Previous(); !errors.Is(err, ErrNotFound) {
		t.Errorf("Previous() with nothing live: %v, want ErrNotFound", err)
	}
	steps := []struct {
		activate int
		want     int // -1: ErrNotFound
	}{
		{3, -1}, // the first live release has no previous
		{1, 3},
		{0, 1}, // by activation, not by name
		{3, 0}, // a rollback
		{3, 0}, // the live one again: nothing changes
	}
	for i, st := range steps {
		e.activate(s[st.activate])
		got, err := e.r.Previous()
		switch {
		case st.want < 0 && !errors.Is(err, ErrNotFound):
			t.Errorf("step %d: Previous() = %q, %v; want ErrNotFound", i, got, err)
		case st.want >= 0 && (err != nil || got != s[st.want]):
			t.Errorf("step %d: Previous() = %q, %v; want %q", i, got, err, s[st.want])
		}
	}
	// A complete release that was never live (s[2]) is never the previous one, and a
	// release whose directory is gone is not either.
	e.mustRemove("releases/" + s[0])
	if got, err := e.r.Previous(); err != nil || got != s[1] {
		t.Errorf("Previous() with the previous one gone = %q, %v; want %q", got, err, s[1])
	}
}

func TestActivatedAt(t *testing.T) {
	e := newEnv(t, Config{KeepReleases: 1})
	g := newRepo(t)
	a, b, c := e.release(g), e.release(g), e.release(g)
	at := func(sha string) time.Time {
		t.Helper()
		tm, err := e.r.ActivatedAt(sha)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	if !at(a).IsZero() {
		t.Errorf("ActivatedAt of a release never live: %v", at(a))
	}
	e.activate(a)
	aLive := e.clock
	e.activate(b)
	e.activate(c)
	if !at(a).Equal(aLive) || !at(c).Equal(e.clock) {
		t.Errorf("ActivatedAt = %v, %v; want %v, %v", at(a), at(c), aLive, e.clock)
	}
	// Pruned (keep 1 keeps c and b): the journal still knows.
	if removed, err := e.r.Prune(); err != nil || !slices.Equal(removed, []string{a}) {
		t.Fatalf("Prune() = %v, %v", removed, err)
	}
	if !at(a).Equal(aLive) {
		t.Errorf("ActivatedAt of a pruned release = %v, want %v", at(a), aLive)
	}
}
