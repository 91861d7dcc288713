package releaser

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/filemode"
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
	f.WriteString(" and more")
	f.Close()
	os.Remove(filepath.Join(dir, "relinked.txt"))
	os.Symlink("same.txt", filepath.Join(dir, "relinked.txt"))
	os.Chmod(filepath.Join(dir, "chmodded.txt"), 0o600)
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
		a, _ := os.Stat(filepath.Join(e.r.Dir(first), name))
		b, _ := os.Stat(filepath.Join(e.r.Dir(second), name))
		if os.SameFile(a, b) {
			t.Errorf("%s: the two releases share an inode", name)
		}
	}
	// A build of the new release that appends to a copied file changes only its own.
	f, err = os.OpenFile(filepath.Join(e.r.Dir(second), "same.txt"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(" but not here")
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(e.r.Dir(first), "same.txt")); string(b) != "unchanged" {
		t.Errorf("the live release's same.txt became %q", b)
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
