package releaser

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPruneCache: the build cache is pruned to its limit, least recently used first, read-only
// directories of a tool's included, and the directories left empty go too.
func TestPruneCache(t *testing.T) {
	e := newEnv(t, Config{})
	cache, err := e.r.CacheDir()
	must(t, err)
	now := time.Now()
	write := func(rel string, age time.Duration) {
		t.Helper()
		p := filepath.Join(cache, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, make([]byte, 64<<10), 0o644))
		must(t, os.Chtimes(p, now.Add(-age), now.Add(-age)))
	}
	write("npm/old", 3*time.Hour)
	write("npm/recent", time.Minute)
	write("go-mod/pkg@v1/a.go", 2*time.Hour)
	write("go-build/older", 4*time.Hour)
	must(t, os.Chmod(filepath.Join(cache, "go-mod/pkg@v1"), 0o555)) // as go leaves it
	t.Cleanup(func() { os.Chmod(filepath.Join(cache, "go-mod/pkg@v1"), 0o755) })

	// Under the limit: nothing goes.
	if n, _, err := e.r.PruneCache(1 << 30); err != nil || n != 0 {
		t.Fatalf("PruneCache(1GiB) = %d, %v", n, err)
	}
	// Room for two of the four files: the two used longest ago go.
	removed, freed, err := e.r.PruneCache(2*(64<<10) + 1024)
	must(t, err)
	if removed != 2 || freed < 128<<10 {
		t.Errorf("removed %d files, %d bytes; want the 2 oldest", removed, freed)
	}
	for _, gone := range []string{"go-build/older", "npm/old", "go-build"} {
		if _, err := os.Lstat(filepath.Join(cache, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is left: %v", gone, err)
		}
	}
	for _, kept := range []string{"npm/recent", "go-mod/pkg@v1/a.go"} {
		if _, err := os.Stat(filepath.Join(cache, kept)); err != nil {
			t.Errorf("%s was pruned: %v", kept, err)
		}
	}
	// The read-only dir's file goes when it is the oldest left.
	removed, _, err = e.r.PruneCache(64<<10 + 1024)
	must(t, err)
	if _, err := os.Stat(filepath.Join(cache, "go-mod/pkg@v1/a.go")); removed != 1 || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the file in a read-only dir: removed %d, %v", removed, err)
	}
}
