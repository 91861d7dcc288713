package releaser

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/rs/zerolog"
)

// TestMaterializeCopiesUntouchedFiles: a new release copies from the live one exactly the
// files the build left alone, with the same blob and mode; everything else comes from the
// object store, and no inode is shared between the two releases.
func TestMaterializeCopiesUntouchedFiles(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	files := map[string]file{
		"same.txt":        {filemode.Regular, "unchanged"},
		"dir/deep.txt":    {filemode.Regular, "deep and unchanged"},
		"run.sh":          {filemode.Executable, "#!/bin/sh\n"},
		"edited.txt":      {filemode.Regular, "old"},
		"appended.txt":    {filemode.Regular, "build appends here"},
		"relinked.txt":    {filemode.Regular, "the build makes me a symlink"},
		"chmodded.txt":    {filemode.Regular, "the build chmods me"},
		"becomes-exe.txt": {filemode.Regular, "mode changes in the next commit"},
	}
	first := g.commit(g.treeOf(files))
	stats, err := e.r.Materialize(t.Context(), g.st, first, nil)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Reused != 0 {
		t.Fatalf("first release reused %d files with no live release", stats.Reused)
	}
	// What a build does to its own release after the checkout.
	dir := e.r.Dir(first)
	f, err := os.OpenFile(filepath.Join(dir, "appended.txt"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(" and more")
	must(t, err)
	must(t, f.Close())
	must(t, os.Remove(filepath.Join(dir, "relinked.txt")))
	must(t, os.Symlink("same.txt", filepath.Join(dir, "relinked.txt")))
	must(t, os.Chmod(filepath.Join(dir, "chmodded.txt"), 0o600))
	if err := e.r.Complete(first); err != nil {
		t.Fatal(err)
	}
	e.activate(first)

	files["edited.txt"] = file{filemode.Regular, "new"}
	files["becomes-exe.txt"] = file{filemode.Executable, "mode changes in the next commit"}
	files["added.txt"] = file{filemode.Regular, "added"}
	second := g.commit(g.treeOf(files))
	stats, err = e.r.Materialize(t.Context(), g.st, second, nil)
	if err != nil {
		t.Fatal(err)
	}
	// same.txt, dir/deep.txt and run.sh only.
	if stats.Reused != 3 || stats.Files != 9 {
		t.Errorf("stats = %+v, want 3 of 9 files reused", stats)
	}
	assertSnapshot(t, snapshot(t, e.r.Dir(second)), map[string]string{
		"same.txt":        "file 0644 unchanged",
		"dir":             "dir 0755",
		"dir/deep.txt":    "file 0644 deep and unchanged",
		"run.sh":          "file 0755 #!/bin/sh\n",
		"edited.txt":      "file 0644 new",
		"appended.txt":    "file 0644 build appends here",
		"relinked.txt":    "file 0644 the build makes me a symlink",
		"chmodded.txt":    "file 0644 the build chmods me",
		"becomes-exe.txt": "file 0755 mode changes in the next commit",
		"added.txt":       "file 0644 added",
	})
	for _, name := range []string{"same.txt", "dir/deep.txt", "run.sh"} {
		a, erra := os.Stat(filepath.Join(e.r.Dir(first), name))
		b, errb := os.Stat(filepath.Join(e.r.Dir(second), name))
		if err := errors.Join(erra, errb); err != nil {
			t.Fatal(err)
		}
		if os.SameFile(a, b) {
			t.Errorf("%s: the two releases share an inode", name)
		}
	}
	// A build of the new release that appends to a copied file changes only its own.
	f, err = os.OpenFile(filepath.Join(e.r.Dir(second), "same.txt"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(" but not here")
	must(t, err)
	must(t, f.Close())
	if b, err := os.ReadFile(filepath.Join(e.r.Dir(first), "same.txt")); err != nil || string(b) != "unchanged" {
		t.Errorf("the live release's same.txt became %q (%v)", b, err)
	}
}

// TestMaterializeNoReuseWithoutRecord: a live release recorded before slipway kept the
// checkout time (or whose record lost it) is never copied from.
func TestMaterializeNoReuseWithoutRecord(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	first := e.release(g)
	e.activate(first)
	err := e.r.updateState(func(st *state) (bool, error) {
		st.Releases[first].Written = st.Releases[first].Written.AddDate(-100, 0, 0)
		st.Releases[first].Written = st.Releases[first].Written.Truncate(0)
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	second := g.commit(g.treeOf(map[string]file{"index.html": {filemode.Regular, "hello"}, "b": {filemode.Regular, "b"}}))
	stats, err := e.r.Materialize(t.Context(), g.st, second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Reused != 0 {
		t.Errorf("reused %d files from a release whose files all look touched", stats.Reused)
	}
}

// TestMaterializeLinksUntouchedFiles: with LinkFiles, every file is written read-only and a
// new release hard-links from the live one exactly the files the build left alone;
// everything else comes from the object store. Links slipway makes and removes later (a
// third release, a removal) do not stop a file from being linked again.
func TestMaterializeLinksUntouchedFiles(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	files := map[string]file{
		"same.txt":      {filemode.Regular, "unchanged"},
		"dir/deep.txt":  {filemode.Regular, "deep and unchanged"},
		"run.sh":        {filemode.Executable, "#!/bin/sh\n"},
		"edited.txt":    {filemode.Regular, "old"},
		"rewritten.txt": {filemode.Regular, "the build makes me writable, writes, and puts the mode back"},
		"relinked.txt":  {filemode.Regular, "the build makes me a symlink"},
		"chmodded.txt":  {filemode.Regular, "the build chmods me"},
	}
	first := g.commit(g.treeOf(files))
	if _, err := e.r.Materialize(t.Context(), g.st, first, nil); err != nil {
		t.Fatal(err)
	}
	dir := e.r.Dir(first)
	assertSnapshot(t, snapshot(t, dir), map[string]string{
		"same.txt":      "file 0444 unchanged",
		"dir":           "dir 0755",
		"dir/deep.txt":  "file 0444 deep and unchanged",
		"run.sh":        "file 0555 #!/bin/sh\n",
		"edited.txt":    "file 0444 old",
		"rewritten.txt": "file 0444 the build makes me writable, writes, and puts the mode back",
		"relinked.txt":  "file 0444 the build makes me a symlink",
		"chmodded.txt":  "file 0444 the build chmods me",
	})
	if os.Geteuid() != 0 {
		_, err := os.OpenFile(filepath.Join(dir, "same.txt"), os.O_APPEND|os.O_WRONLY, 0)
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("appending to a checked-out file: %v, want permission denied", err)
		}
	}
	// What a build does to its own release after the checkout.
	rewritten := filepath.Join(dir, "rewritten.txt")
	must(t, os.Chmod(rewritten, 0o644))
	if err := os.WriteFile(rewritten, []byte("changed in place"), 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, os.Chmod(rewritten, 0o444))
	must(t, os.Remove(filepath.Join(dir, "relinked.txt")))
	must(t, os.Symlink("same.txt", filepath.Join(dir, "relinked.txt")))
	must(t, os.Chmod(filepath.Join(dir, "chmodded.txt"), 0o644))
	if err := e.r.Complete(first); err != nil {
		t.Fatal(err)
	}
	e.activate(first)

	files["edited.txt"] = file{filemode.Regular, "new"}
	second := g.commit(g.treeOf(files))
	stats, err := e.r.Materialize(t.Context(), g.st, second, nil)
	if err != nil {
		t.Fatal(err)
	}
	// same.txt, dir/deep.txt and run.sh only.
	if stats.Reused != 3 || stats.Files != 7 {
		t.Errorf("stats = %+v, want 3 of 7 files linked", stats)
	}
	assertSnapshot(t, snapshot(t, e.r.Dir(second)), map[string]string{
		"same.txt":      "file 0444 unchanged",
		"dir":           "dir 0755",
		"dir/deep.txt":  "file 0444 deep and unchanged",
		"run.sh":        "file 0555 #!/bin/sh\n",
		"edited.txt":    "file 0444 new",
		"rewritten.txt": "file 0444 the build makes me writable, writes, and puts the mode back",
		"relinked.txt":  "file 0444 the build makes me a symlink",
		"chmodded.txt":  "file 0444 the build chmods me",
	})
	sameInode := func(a, b, name string) bool {
		fa, errA := os.Stat(filepath.Join(e.r.Dir(a), name))
		fb, errB := os.Stat(filepath.Join(e.r.Dir(b), name))
		return errA == nil && errB == nil && os.SameFile(fa, fb)
	}
	for _, name := range []string{"same.txt", "dir/deep.txt", "run.sh"} {
		if !sameInode(first, second, name) {
			t.Errorf("%s: not linked from the live release", name)
		}
	}
	for _, name := range []string{"edited.txt", "rewritten.txt", "relinked.txt", "chmodded.txt"} {
		if sameInode(first, second, name) {
			t.Errorf("%s: linked from the live release, which changed or does not hold it", name)
		}
	}

	// A third release, after the first is removed, as a prune would: both moved the ctime
	// of the shared inodes, and the removal recorded their new ctime in the live release's
	// inode record.
	if err := e.r.Complete(second); err != nil {
		t.Fatal(err)
	}
	e.activate(second)
	if err := e.r.Discard(first); err != nil {
		t.Fatal(err)
	}
	files["added.txt"] = file{filemode.Regular, "added"}
	third := g.commit(g.treeOf(files))
	stats, err = e.r.Materialize(t.Context(), g.st, third, nil)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Reused != 7 || stats.Files != 8 {
		t.Errorf("third release: stats = %+v, want 7 of 8 files linked", stats)
	}
	if !sameInode(second, third, "same.txt") {
		t.Error("same.txt: not linked into the third release")
	}
}

// TestMaterializeCopyModeAfterLinkMode: a live release written with LinkFiles
// (its files read-only, shared) is never linked or copied into a release written without:
// that one gets its own writable files.
func TestMaterializeCopyModeAfterLinkMode(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	first := e.release(g)
	e.activate(first)
	r, err := New(Config{Path: e.r.Path()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	second := g.commit(g.treeOf(map[string]file{"index.html": {filemode.Regular, "hello"}, "b": {filemode.Regular, "b"}}))
	if _, err := r.Materialize(t.Context(), g.st, second, nil); err != nil {
		t.Fatal(err)
	}
	assertSnapshot(t, snapshot(t, r.Dir(second)), map[string]string{
		"index.html": "file 0644 hello",
		"b":          "file 0644 b",
	})
}
