package releaser

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
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
