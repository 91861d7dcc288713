package gitserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/rs/zerolog"
)

func TestRepositoriesObjects(t *testing.T) {
	t.Parallel()
	repos := Repositories{Dir: t.TempDir()}
	// Nothing pushed yet: a "not exist" error, which callers can test without gitserver.
	if _, err := repos.Objects("myapp/production"); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrNoRepo) {
		t.Errorf("Objects of an absent repository: %v, want ErrNoRepo and fs.ErrNotExist", err)
	}
	if _, err := repos.Objects("../production"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Objects of an invalid name: %v, want an error other than fs.ErrNotExist", err)
	}

	branch := plumbing.NewBranchReferenceName("main")
	if err := createRepo(RepoDir(repos.Dir, "myapp/production"), branch); err != nil {
		t.Fatal(err)
	}
	st, err := repos.Objects("myapp/production")
	if err != nil {
		t.Fatal(err)
	}
	head, err := st.Reference(plumbing.HEAD)
	if err != nil || head.Target() != branch {
		t.Errorf("HEAD = %v, %v; want a symbolic ref to main", head, err)
	}
	if err := st.Close(); err != nil {
		t.Error(err)
	}
}

func TestRepositoriesRemove(t *testing.T) {
	t.Parallel()
	repos := Repositories{Dir: t.TempDir()}
	branch := plumbing.NewBranchReferenceName("main")
	for _, repo := range []string{"myapp/production", "myapp/staging"} {
		if err := createRepo(RepoDir(repos.Dir, repo), branch); err != nil {
			t.Fatal(err)
		}
	}
	// A read-only pack, as a push leaves them.
	packDir := filepath.Join(RepoDir(repos.Dir, "myapp/production"), "objects", "pack")
	if err := os.MkdirAll(packDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(packDir, "pack-x.pack"), []byte("PACK"), 0o444); err != nil {
		t.Fatal(err)
	}

	if err := repos.Remove("myapp/production"); err != nil {
		t.Fatal(err)
	}
	if _, err := repos.Objects("myapp/production"); !errors.Is(err, ErrNoRepo) {
		t.Errorf("Objects after Remove: %v, want ErrNoRepo", err)
	}
	if got := dirNames(t, filepath.Join(repos.Dir, "myapp")); got != "[staging.git]" {
		t.Errorf("myapp holds %s, want only staging.git", got)
	}
	if err := repos.Remove("myapp/production"); err != nil {
		t.Errorf("Remove of a removed repository: %v", err)
	}
	if err := repos.Remove("myapp/staging"); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, repos.Dir); got != "[]" {
		t.Errorf("repos dir holds %s after the last environment of myapp went, want nothing", got)
	}
	if err := repos.Remove("other/production"); err != nil {
		t.Errorf("Remove of an environment never pushed to: %v", err)
	}
	if err := repos.Remove("../production"); err == nil {
		t.Error("Remove accepted an invalid name")
	}
}

// TestRepositoriesRemoveAfterCrash: a crash during Remove (after the rename) or during the
// creation of a repository leaves hidden names. Neither is a repository; a push creates the
// repository anew beside them and removes the first, and Remove deletes both. A hidden name
// of another environment stays.
func TestRepositoriesRemoveAfterCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	repos := Repositories{Dir: dir}
	branch := plumbing.NewBranchReferenceName("main")
	repo := "myapp/production"
	if err := createRepo(RepoDir(dir, repo), branch); err != nil {
		t.Fatal(err)
	}
	appDir := filepath.Join(dir, "myapp")
	// The crash: renamed, not removed; and a creation's temporary directory.
	if err := os.Rename(RepoDir(dir, repo), repos.removing(repo)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".production.git.tmp-123", ".production.git.b.git.tmp-456"} {
		if err := os.Mkdir(filepath.Join(appDir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := repos.Objects(repo); !errors.Is(err, ErrNoRepo) {
		t.Errorf("Objects with only a leftover: %v, want ErrNoRepo", err)
	}

	s, err := New(Config{HostKeyPath: filepath.Join(t.TempDir(), "hk"), ReposDir: dir}, &fakeDeployer{}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := s.openRepo(repo, branch)
	if err != nil {
		t.Fatalf("a push after the crash: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Error(err)
	}
	if got := dirNames(t, appDir); got != "[.production.git.b.git.tmp-456 .production.git.tmp-123 production.git]" {
		t.Errorf("after the push myapp holds %s", got)
	}

	if err := repos.Remove(repo); err != nil {
		t.Fatal(err)
	}
	if got := dirNames(t, appDir); got != "[.production.git.b.git.tmp-456]" {
		t.Errorf("after Remove myapp holds %s, want only the other environment's leftover", got)
	}
}

// dirNames returns the names in dir, sorted, as "[a b]".
func dirNames(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return fmt.Sprint(names)
}
