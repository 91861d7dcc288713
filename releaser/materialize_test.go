package releaser

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"golang.org/x/sys/unix"
)

func TestMaterialize(t *testing.T) {
	const sub = "0123456789abcdef0123456789abcdef01234567"
	tests := []struct {
		name      string
		tree      func(g *repo, sentinel string) plumbing.Hash
		want      map[string]string // nil: Materialize must fail
		wantStats Stats
	}{{
		name: "ordinary tree",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.treeOf(map[string]file{
				"README.md":       {filemode.Regular, "hello\n"},
				"bin/run":         {filemode.Executable, "#!/bin/sh\n"},
				"a/b/c/deep.txt":  {filemode.Regular, "deep"},
				"a/readme-link":   {filemode.Symlink, "../README.md"},
				"passwd":          {filemode.Symlink, "/etc/passwd"},
				"up":              {filemode.Symlink, "../../../.."},
				"vendor/lib":      {filemode.Submodule, sub},
				"empty":           {filemode.Dir, ""},
				"--help":          {filemode.Regular, "-"},
				"name with space": {filemode.Regular, ""},
			})
		},
		want: map[string]string{
			"README.md":       "file 0644 hello\n",
			"bin":             "dir 0755",
			"bin/run":         "file 0755 #!/bin/sh\n",
			"a":               "dir 0755",
			"a/b":             "dir 0755",
			"a/b/c":           "dir 0755",
			"a/b/c/deep.txt":  "file 0644 deep",
			"a/readme-link":   "link ../README.md",
			"passwd":          "link /etc/passwd",
			"up":              "link ../../../..",
			"vendor":          "dir 0755",
			"vendor/lib":      "dir 0755",
			"empty":           "dir 0755",
			"--help":          "file 0644 -",
			"name with space": "file 0644 ",
		},
		wantStats: Stats{Files: 8, Bytes: int64(len("hello\n#!/bin/sh\ndeep-"))},
	}, {
		name: "path through a symlink that leaves the release",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "esc", Mode: filemode.Symlink, Hash: g.blob("../../../sentinel")},
				object.TreeEntry{Name: "esc", Mode: filemode.Dir, Hash: g.tree(
					object.TreeEntry{Name: "owned", Mode: filemode.Regular, Hash: g.blob("pwned")})},
			)
		},
	}, {
		name: "path through an absolute symlink",
		tree: func(g *repo, sentinel string) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "esc", Mode: filemode.Symlink, Hash: g.blob(sentinel)},
				object.TreeEntry{Name: "esc", Mode: filemode.Dir, Hash: g.tree(
					object.TreeEntry{Name: "owned", Mode: filemode.Regular, Hash: g.blob("pwned")})},
			)
		},
	}, {
		name: "slash in an entry name, through a symlink",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "esc", Mode: filemode.Symlink, Hash: g.blob("../../../sentinel")},
				object.TreeEntry{Name: "esc/owned", Mode: filemode.Regular, Hash: g.blob("pwned")},
			)
		},
	}, {
		name: "file over a symlink of the same name",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "x", Mode: filemode.Symlink, Hash: g.blob("../../../sentinel/x")},
				object.TreeEntry{Name: "x", Mode: filemode.Regular, Hash: g.blob("pwned")},
			)
		},
	}, {
		name: "dot dot",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: "..", Mode: filemode.Dir, Hash: g.tree(
				object.TreeEntry{Name: "owned", Mode: filemode.Regular, Hash: g.blob("pwned")})})
		},
	}, {
		name: "dot",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: ".", Mode: filemode.Regular, Hash: g.blob("x")})
		},
	}, {
		name: "dot git",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.treeOf(map[string]file{".git/hooks/post-checkout": {filemode.Executable, "#!/bin/sh\n"}})
		},
	}, {
		name: "dot git in another case, deeper",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.treeOf(map[string]file{"a/.GIT/config": {filemode.Regular, "x"}})
		},
	}, {
		name: "git~1",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.treeOf(map[string]file{"GIT~1/config": {filemode.Regular, "x"}})
		},
	}, {
		name: "control character",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.treeOf(map[string]file{"a\nb": {filemode.Regular, "x"}})
		},
	}, {
		name: "duplicate entries",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "a", Mode: filemode.Regular, Hash: g.blob("1")},
				object.TreeEntry{Name: "a", Mode: filemode.Regular, Hash: g.blob("2")},
			)
		},
	}, {
		name: "missing subtree",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "a", Mode: filemode.Regular, Hash: g.blob("1")},
				object.TreeEntry{Name: "gone", Mode: filemode.Dir, Hash: plumbing.NewHash(sub)},
				object.TreeEntry{Name: "z", Mode: filemode.Regular, Hash: g.blob("2")},
			)
		},
	}, {
		name: "missing blob",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: "a", Mode: filemode.Regular, Hash: plumbing.NewHash(sub)})
		},
	}, {
		name: "huge symlink target",
		tree: func(g *repo, _ string) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: "a", Mode: filemode.Symlink, Hash: g.blob(strings.Repeat("x/", 4000))})
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newRepo(t)
			sha := g.commit(tt.tree(g, e.sentinel))
			stats, err := e.r.Materialize(t.Context(), g.st, sha, nil)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("Materialize succeeded; tree on disk: %v", snapshot(t, e.r.Dir(sha)))
				}
				t.Logf("error (expected): %v", err)
				if !strings.Contains(err.Error(), sha) {
					t.Errorf("error %q does not name the sha", err)
				}
				if got := e.releasesDirEntries(); len(got) != 0 {
					t.Errorf("releases/ after a failed Materialize: %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertSnapshot(t, snapshot(t, e.r.Dir(sha)), tt.want)
			if stats != tt.wantStats {
				t.Errorf("stats = %+v, want %+v", stats, tt.wantStats)
			}
			if e.r.IsComplete(sha) {
				t.Error("release complete before Complete")
			}
		})
	}
}

func TestMaterializeExactModesUnderUmask(t *testing.T) {
	old := unix.Umask(0o077)
	t.Cleanup(func() { unix.Umask(old) })
	e := newEnv(t, Config{})
	g := newRepo(t)
	sha := g.commit(g.treeOf(map[string]file{
		"d/f":   {filemode.Regular, "f"},
		"d/x":   {filemode.Executable, "x"},
		"m/sub": {filemode.Submodule, "0123456789abcdef0123456789abcdef01234567"},
	}))
	if _, err := e.r.Materialize(t.Context(), g.st, sha, nil); err != nil {
		t.Fatal(err)
	}
	assertSnapshot(t, snapshot(t, e.r.Dir(sha)), map[string]string{
		"d": "dir 0755", "d/f": "file 0644 f", "d/x": "file 0755 x", "m": "dir 0755", "m/sub": "dir 0755",
	})
	if fi, err := os.Stat(e.r.Dir(sha)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("release dir: %v, %v; want 0755", fi.Mode(), err)
	}
}

func TestMaterializeLeftoversAndComplete(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	sha := g.commit(g.treeOf(map[string]file{"index.html": {filemode.Regular, "new"}}))

	// A leftover from a crashed attempt, partly read-only.
	if err := os.MkdirAll(filepath.Join(e.r.Dir(sha), "junk", "ro"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(e.r.Dir(sha), "junk"), 0o555); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Materialize(t.Context(), g.st, sha, nil); err != nil {
		t.Fatal(err)
	}
	assertSnapshot(t, snapshot(t, e.r.Dir(sha)), map[string]string{"index.html": "file 0644 new"})

	if err := e.r.Complete(sha); err != nil {
		t.Fatal(err)
	}
	if _, err := e.r.Materialize(t.Context(), g.st, sha, nil); err == nil || !strings.Contains(err.Error(), "already complete") {
		t.Fatalf("Materialize of a complete release: %v", err)
	}
	if !e.r.IsComplete(sha) {
		t.Fatal("the refused Materialize broke the complete release")
	}

	// The release's directory vanishes: its record must not make the next attempt
	// complete while it is being written.
	if err := os.RemoveAll(e.r.Dir(sha)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	objs := &cancelAfter{EncodedObjectStorer: g.st, blobs: 1, cancel: cancel}
	objs.onCancel = func() {
		if e.r.IsComplete(sha) {
			t.Error("release counts as complete while it is being written")
		}
	}
	if _, err := e.r.Materialize(ctx, objs, sha, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Materialize: %v, want context.Canceled", err)
	}
}

// cancelAfter is a real object store that cancels the deploy when the blobs-th blob is
// read, which cancels Materialize midway, deterministically.
type cancelAfter struct {
	storer.EncodedObjectStorer
	blobs    int
	cancel   context.CancelFunc
	onCancel func()
}

func (c *cancelAfter) EncodedObject(t plumbing.ObjectType, h plumbing.Hash) (plumbing.EncodedObject, error) {
	if t == plumbing.BlobObject {
		c.blobs--
		if c.blobs == 0 {
			if c.onCancel != nil {
				c.onCancel()
			}
			c.cancel()
		}
	}
	return c.EncodedObjectStorer.EncodedObject(t, h)
}

func TestMaterializeCancel(t *testing.T) {
	tests := []struct {
		name  string
		blobs int // cancel when this blob is read; 0: cancelled before the start
	}{
		{"before the start", 0},
		{"at the first blob", 1},
		{"midway", 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newRepo(t)
			files := map[string]file{}
			for i := range 60 {
				files[filepath.Join("d", string(rune('a'+i%26)), strings.Repeat("f", 1+i/26))] = file{filemode.Regular, "content"}
			}
			sha := g.commit(g.treeOf(files))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			objs := storer.EncodedObjectStorer(g.st)
			if tt.blobs == 0 {
				cancel()
			} else {
				objs = &cancelAfter{EncodedObjectStorer: g.st, blobs: tt.blobs, cancel: cancel}
			}
			_, err := e.r.Materialize(ctx, objs, sha, nil)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Materialize: %v, want context.Canceled", err)
			}
			if got := e.releasesDirEntries(); len(got) != 0 {
				t.Errorf("releases/ after a cancelled Materialize: %v", got)
			}
		})
	}
}

func TestMaterializeProgress(t *testing.T) {
	tests := []struct {
		name  string
		every time.Duration // progressEvery
		lines bool
	}{
		// However slow the machine, writing two files takes less than a day.
		{"write shorter than the interval prints nothing", 24 * time.Hour, false},
		{"write longer than the interval prints lines", 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			e.r.progressEvery = tt.every
			g := newRepo(t)
			sha := g.commit(g.treeOf(map[string]file{"a": {filemode.Regular, "aa"}, "b": {filemode.Regular, "bbb"}}))
			var out bytes.Buffer
			if _, err := e.r.Materialize(t.Context(), g.st, sha, &out); err != nil {
				t.Fatal(err)
			}
			if !tt.lines {
				if out.Len() != 0 {
					t.Errorf("progress: %q, want nothing", out.String())
				}
				return
			}
			if !strings.Contains(out.String(), "  wrote 2 files, 5 B\n") {
				t.Errorf("progress: %q", out.String())
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1500: "1 kB", 120e6 + 5: "120 MB", 1.25e9: "1.2 GB", 42e9: "42 GB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestMaterializeWriterBackstop drives the writer past the tree walker's and
// Materialize's own checks: it still writes nothing through a symlink that leaves the
// release, since it creates entries only in directories it made and holds open.
func TestMaterializeWriterBackstop(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	dir := filepath.Join(e.base, "release")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	top, err := openDir(unix.AT_FDCWD, dir)
	if err != nil {
		t.Fatal(err)
	}
	w := &treeWriter{ctx: t.Context(), objs: g.st, stack: []frame{{dst: top}}, jobs: make(chan fileJob, 1)}
	defer w.closeDirs()
	// Regular files go to a writer, as in Materialize; the rest are written by the walk.
	write := func(name string, e object.TreeEntry) error {
		if err := w.write(name, e); err != nil || e.Mode != filemode.Regular {
			return err
		}
		j := <-w.jobs
		defer j.release()
		return w.writeFile(j)
	}
	for _, target := range []string{"../sentinel", e.sentinel} {
		if err := os.Remove(filepath.Join(dir, "esc")); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if err := write("esc", object.TreeEntry{Mode: filemode.Symlink, Hash: g.blob(target)}); err != nil {
			t.Fatal(err)
		}
		for _, mode := range []filemode.FileMode{filemode.Regular, filemode.Dir, filemode.Symlink} {
			err := write("esc/owned", object.TreeEntry{Mode: mode, Hash: g.blob("pwned")})
			if err == nil {
				t.Errorf("write esc/owned (%s) through esc -> %s succeeded", mode, target)
			}
		}
	}
}
