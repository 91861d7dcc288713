package releaser

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// env is a deploy root in a temporary dir, next to a sentinel dir that nothing may write to.
type env struct {
	t        *testing.T
	r        *Releaser
	base     string // holds deploy/ and sentinel/
	sentinel string
	clock    time.Time
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	base := t.TempDir()
	e := &env{t: t, base: base, sentinel: filepath.Join(base, "sentinel"), clock: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	if err := os.Mkdir(e.sentinel, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Path = filepath.Join(base, "deploy")
	r, err := New(cfg, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	r.now = func() time.Time { return e.clock }
	e.r = r
	t.Cleanup(func() { e.assertSentinelEmpty() })
	return e
}

func (e *env) assertSentinelEmpty() {
	e.t.Helper()
	entries, err := os.ReadDir(e.sentinel)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(entries) != 0 {
		e.t.Errorf("something was written outside the deploy root: %s", entries[0].Name())
	}
}

// tick advances the clock.
func (e *env) tick(d time.Duration) { e.clock = e.clock.Add(d) }

// release writes, completes and returns a release of a fresh commit of g.
func (e *env) release(g *repo) string {
	e.t.Helper()
	sha := g.commit(g.treeOf(map[string]file{"index.html": {filemode.Regular, "hello"}}))
	if _, err := e.r.Materialize(e.t.Context(), g.st, sha, nil); err != nil {
		e.t.Fatal(err)
	}
	if err := e.r.Complete(sha); err != nil {
		e.t.Fatal(err)
	}
	return sha
}

func (e *env) activate(sha string) {
	e.t.Helper()
	e.tick(time.Minute)
	if _, err := e.r.Activate(sha); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) current() string {
	e.t.Helper()
	target, err := os.Readlink(filepath.Join(e.r.Path(), "current"))
	if err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
	return target
}

func (e *env) releasesDirEntries() []string {
	e.t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.r.Path(), "releases"))
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, d := range entries {
		names = append(names, d.Name())
	}
	return names
}

func (e *env) releaseSHAs() []string {
	e.t.Helper()
	rels, err := e.r.Releases()
	if err != nil {
		e.t.Fatal(err)
	}
	var shas []string
	for _, rel := range rels {
		shas = append(shas, rel.SHA)
	}
	return shas
}

// repo builds git objects with go-git's plumbing, hostile ones included.
type repo struct {
	t  *testing.T
	st *memory.Storage
	n  int
}

func newRepo(t *testing.T) *repo { return &repo{t: t, st: memory.NewStorage()} }

type file struct {
	mode filemode.FileMode
	data string // content; symlink target; submodule commit id
}

func (g *repo) blob(content string) plumbing.Hash {
	g.t.Helper()
	obj := g.st.NewEncodedObject()
	obj.SetType(plumbing.BlobObject)
	w, err := obj.Writer()
	if err != nil {
		g.t.Fatal(err)
	}
	if _, err := w.Write([]byte(content)); err != nil {
		g.t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		g.t.Fatal(err)
	}
	h, err := g.st.SetEncodedObject(obj)
	if err != nil {
		g.t.Fatal(err)
	}
	return h
}

// tree stores a tree of exactly these entries, in git's order; duplicates and names git
// itself would refuse are kept.
func (g *repo) tree(entries ...object.TreeEntry) plumbing.Hash {
	g.t.Helper()
	sort.Stable(object.TreeEntrySorter(entries))
	obj := g.st.NewEncodedObject()
	if err := (&object.Tree{Entries: entries}).Encode(obj); err != nil {
		g.t.Fatal(err)
	}
	h, err := g.st.SetEncodedObject(obj)
	if err != nil {
		g.t.Fatal(err)
	}
	return h
}

// treeOf stores a tree from slash-separated paths.
func (g *repo) treeOf(files map[string]file) plumbing.Hash {
	g.t.Helper()
	var entries []object.TreeEntry
	sub := map[string]map[string]file{}
	for p, f := range files {
		if first, rest, nested := strings.Cut(p, "/"); nested {
			if sub[first] == nil {
				sub[first] = map[string]file{}
			}
			sub[first][rest] = f
			continue
		}
		var h plumbing.Hash
		switch f.mode {
		case filemode.Submodule:
			h = plumbing.NewHash(f.data)
		case filemode.Dir:
			h = g.tree()
		default:
			h = g.blob(f.data)
		}
		entries = append(entries, object.TreeEntry{Name: p, Mode: f.mode, Hash: h})
	}
	for name, files := range sub {
		entries = append(entries, object.TreeEntry{Name: name, Mode: filemode.Dir, Hash: g.treeOf(files)})
	}
	return g.tree(entries...)
}

func (g *repo) commit(tree plumbing.Hash) string {
	g.t.Helper()
	g.n++
	sig := object.Signature{Name: "t", Email: "t@example.com", When: time.Unix(1700000000, 0)}
	c := &object.Commit{Author: sig, Committer: sig, Message: fmt.Sprintf("commit %d\n", g.n), TreeHash: tree}
	obj := g.st.NewEncodedObject()
	if err := c.Encode(obj); err != nil {
		g.t.Fatal(err)
	}
	h, err := g.st.SetEncodedObject(obj)
	if err != nil {
		g.t.Fatal(err)
	}
	return h.String()
}

// snapshot describes every entry under dir, without following symlinks:
// "dir 0755", "file 0644 <content>", "link <target>".
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			m[rel] = "link " + target
		case d.IsDir():
			m[rel] = fmt.Sprintf("dir %04o", info.Mode().Perm())
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			m[rel] = fmt.Sprintf("file %04o %s", info.Mode().Perm(), b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func assertSnapshot(t *testing.T, got, want map[string]string) {
	t.Helper()
	if maps.Equal(got, want) {
		return
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			t.Errorf("%s: got %q, want %q", k, got[k], want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %q", k, got[k])
		}
	}
}

// must fails the test at once if err is not nil: for the steps that set a test up.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// withoutDACOverride runs fn on an OS thread without the capabilities that let root ignore
// file permissions, so that tests run as root still meet read-only directories. The thread
// is never unlocked: it exits with its goroutine, reduced capabilities and all.
func withoutDACOverride(t *testing.T, fn func() error) error {
	t.Helper()
	if os.Geteuid() != 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		for _, c := range []uint{unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH, unix.CAP_FOWNER} {
			data[c/32].Effective &^= 1 << (c % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
