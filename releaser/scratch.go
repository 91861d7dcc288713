package releaser

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// What an environment's commands may write besides their release (SPEC 11): shared/, the
// build cache, which outlives releases so that package managers and compilers reuse their
// downloads, and one temporary directory per command, which does not.

// SharedDir returns <path>/shared, where the shared files and directories live.
func (r *Releaser) SharedDir() string { return r.sharedDir() }

// CacheDir returns the environment's build cache, <path>/.slipway/cache, made if missing.
func (r *Releaser) CacheDir() (string, error) {
	dir := filepath.Join(r.metaDir(), "cache")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build cache: %w", err)
	}
	return dir, nil
}

// NewTempDir returns a fresh path under <path>/.slipway/tmp for one command's TMPDIR. It
// does not exist yet: the builder makes it, private, and removes it.
func (r *Releaser) NewTempDir() (string, error) {
	if err := os.MkdirAll(r.tempRoot(), 0o700); err != nil {
		return "", fmt.Errorf("temporary directories: %w", err)
	}
	return filepath.Join(r.tempRoot(), rand.Text()), nil
}

// ClearTemp removes what commands left in <path>/.slipway/tmp: after a crash of the server,
// their temporary directories. Only the serving process calls it, before any command runs.
func (r *Releaser) ClearTemp() error {
	if err := removeIn(r.metaDir(), "tmp"); err != nil { // also what a build made unwritable
		return fmt.Errorf("clear temporary directories: %w", err)
	}
	return nil
}

func (r *Releaser) tempRoot() string { return filepath.Join(r.metaDir(), "tmp") }

// PruneCache removes files from the build cache, least recently used first (by the later
// of their access and modification times), until it holds at most limit bytes; then it
// removes the directories left empty. The caller holds the deploy lock, so that no build
// uses the cache meanwhile. Directories a tool left read-only (Go's module cache) are made
// writable to remove what is in them.
func (r *Releaser) PruneCache(limit int64) (removed int, freed int64, err error) {
	dir := filepath.Join(r.metaDir(), "cache")
	type entry struct {
		path string
		size int64
		used int64 // unix nanoseconds
	}
	var files []entry
	var total int64
	var dirs []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == dir {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() {
			if p != dir {
				dirs = append(dirs, p)
			}
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil // gone meanwhile
		}
		used := max(st.Atim.Nano(), st.Mtim.Nano())
		size := st.Blocks * 512
		files = append(files, entry{path: p, size: size, used: used})
		total += size
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("prune the build cache: %w", err)
	}
	if total <= limit {
		return 0, 0, nil
	}
	slices.SortFunc(files, func(a, b entry) int { return cmp.Compare(a.used, b.used) })
	for _, f := range files {
		if total <= limit {
			break
		}
		err := os.Remove(f.path)
		if errors.Is(err, fs.ErrPermission) {
			_ = os.Chmod(filepath.Dir(f.path), 0o755) // a read-only dir of a tool's: opened up to be pruned
			err = os.Remove(f.path)
		}
		if errors.Is(err, fs.ErrNotExist) {
			err = nil // gone meanwhile
		}
		if err != nil {
			return removed, freed, fmt.Errorf("prune the build cache: %w", err)
		}
		removed++
		freed += f.size
		total -= f.size
	}
	// The deepest first: a directory emptied of its files, then its parent.
	slices.SortFunc(dirs, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	for _, d := range dirs {
		_ = os.Remove(d) // not empty, or gone: either is fine
	}
	return removed, freed, nil
}

// ManifestPath is where the fleet's manifest of release sha is kept (SPEC 10: what each
// target is sent is what differs from the manifest of the release it has live).
func (r *Releaser) ManifestPath(sha string) (string, error) {
	if err := checkSHA(sha); err != nil {
		return "", err
	}
	dir := filepath.Join(r.metaDir(), "manifests")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("manifests: %w", err)
	}
	return filepath.Join(dir, sha+".json"), nil
}

// PruneManifests removes the manifests of releases keep does not name.
func (r *Releaser) PruneManifests(keep []string) error {
	dir := filepath.Join(r.metaDir(), "manifests")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("manifests: %w", err)
	}
	for _, e := range entries {
		sha, _, _ := strings.Cut(e.Name(), ".")
		if slices.Contains(keep, sha) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("manifests: %w", err)
		}
	}
	return nil
}
