// Package atomicfile replaces small files so that a reader, or the disk after a crash or a
// power loss, sees either the old content or the new one, never a mix or an empty file.
//
// A write goes to a temporary file in the same directory (".<name>.tmp-<random>"), which is
// synced, closed and renamed over the target; then the directory itself is synced so the
// rename survives a power loss. A crash can leave such a temporary file behind;
// RemoveStale deletes them.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tmpInfix separates a target's name from the random part in a temporary file's name.
const tmpInfix = ".tmp-"

// WriteFile writes data to name durably and atomically. perm is applied exactly: the umask
// does not narrow it. The directory of name must exist.
func WriteFile(name string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(name)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+tmpInfix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil { // the write's error is the one to report; these only clean up
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, name); err != nil {
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs directory dir, which makes the creation, removal and renaming of its
// entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// RemoveStale removes the temporary files that writes interrupted by a crash left in dir.
// It must not run while a WriteFile into dir is in progress.
func RemoveStale(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !IsTemp(e.Name()) || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// IsTemp reports whether name (a base name) is one of WriteFile's temporary files.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tmpInfix)
}
