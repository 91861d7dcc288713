package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/slipway/slipway/internal/atomicfile"
)

// destroyedInfix separates a destroyed root's name from the random part of the hidden name
// it is removed under: .<base>.destroyed-<random>.
const destroyedInfix = ".destroyed-"

// Destroy removes the whole deploy root: releases/, shared/, current and everything under
// .slipway/ (records, journal, logs, freeze, the lock file). The caller holds Lock; its
// unlock may still be called afterwards.
//
// It is crash-safe: it first renames <path> to a hidden sibling in the same parent,
// .<base>.destroyed-<random>, and syncs the parent, so that from then on the root is gone
// for every reader, and every Lock and LockWait returns ErrDestroyed; only then does it
// remove that tree. A crash, or a failed removal, leaves nothing but the hidden sibling,
// which RemoveDestroyed removes. If the sync fails, nothing is removed: the rename might
// not survive a crash, and a half-removed tree must never reappear at <path>.
//
// A <path> that is a symlink is refused: renaming it would leave the tree it points to.
// Afterwards the Releaser has no root; New would make a new, empty one.
func (r *Releaser) Destroy() error {
	parent, base := filepath.Dir(r.path), filepath.Base(r.path)
	if parent == r.path {
		return fmt.Errorf("destroy %s: not a deploy root", r.path)
	}
	fi, err := os.Lstat(r.path)
	if err != nil {
		return fmt.Errorf("destroy: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("destroy %s: not a directory (a symlink?): remove it by hand", r.path)
	}
	hidden := "." + base + destroyedInfix + randSuffix()
	if err := os.Rename(r.path, filepath.Join(parent, hidden)); err != nil {
		return fmt.Errorf("destroy: %w", err)
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return fmt.Errorf("destroy %s: renamed to %s: %w", r.path, hidden, err)
	}
	r.mu.Lock()
	r.forgetCreatedLocked() // removed with the root, or by RemoveDestroyed
	r.mu.Unlock()
	if err := removeIn(parent, hidden); err != nil {
		return fmt.Errorf("destroy %s: remove %s: %w", r.path, hidden, err)
	}
	return nil
}

// RemoveDestroyed removes from directory parent every deploy root a Destroy renamed and
// did not finish removing (a crash, a failed removal): the directories named
// .<base>.destroyed-<random>. Nothing else is touched. A missing parent holds none. The
// server calls it at start, before any Destroy can run.
func RemoveDestroyed(parent string) error {
	entries, err := os.ReadDir(parent)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove destroyed: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || !isDestroyed(e.Name()) {
			continue
		}
		if err := removeIn(parent, e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("remove destroyed %s: %w", filepath.Join(parent, e.Name()), err))
		}
	}
	return errors.Join(errs...)
}

// isDestroyed reports whether name is the hidden name Destroy gives a root it removes:
// ".", a base name, ".destroyed-", then randSuffix's 16 lowercase hex digits.
func isDestroyed(name string) bool {
	rest, ok := strings.CutPrefix(name, ".")
	if !ok {
		return false
	}
	i := strings.LastIndex(rest, destroyedInfix)
	if i <= 0 {
		return false
	}
	suffix := rest[i+len(destroyedInfix):]
	return len(suffix) == 16 && strings.Trim(suffix, "0123456789abcdef") == ""
}

// removeIn removes name, and everything under it, from directory parent, without
// following a symlink out of it; see removeAll.
func removeIn(parent, name string) error {
	root, err := os.OpenRoot(parent)
	if err != nil {
		return err
	}
	defer root.Close() // a directory: closing it loses nothing
	return removeAll(root, name)
}
