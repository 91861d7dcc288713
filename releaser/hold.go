package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/slipway/slipway/internal/atomicfile"
)

// holdPrefix names the copy of a live release that serves while the release is rebuilt
// at its own name: releases/.hold-<sha>.
const holdPrefix = ".hold-"

// tmpTreePrefix names a copy being made in releases/; Recover removes it like any stray.
const tmpTreePrefix = ".tmp-"

func holdName(sha string) string { return holdPrefix + sha }

// Hold prepares the rebuild of the live release sha at its own name, releases/<sha> (a
// build may record absolute paths, so a release is built where it will be live). It copies
// releases/<sha> to releases/.hold-<sha> with hard links (new directories, every other
// entry linked: cheap, and the original's files are never modified, only unlinked), points
// current at the copy (atomic swap, as in Activate), records sha as not complete (its
// record is set aside), and removes releases/<sha>, for Materialize to write again.
//
// Then, on success, the caller does Complete(sha) and Activate(sha) as usual; Activate
// removes the hold. On failure it calls Restore(sha). Current keeps returning sha all along.
// A failed Hold leaves things as they were. After a crash at any step, Recover puts the
// held tree back at releases/<sha> and current on it, unless the rebuild had gone live.
//
// While held, the live tree is releases/.hold-<sha>: absolute paths into releases/<sha>
// that the old build recorded lead to the rebuild in progress.
func (r *Releaser) Hold(sha string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("hold: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.hold(sha); err != nil {
		return fmt.Errorf("hold %s: %w", sha, err)
	}
	return nil
}

func (r *Releaser) hold(sha string) error {
	live, held, err := r.target()
	if err != nil {
		return err
	}
	if held {
		return errors.New("release is held already")
	}
	if live != sha {
		return errors.New("release is not live")
	}
	st, _, err := r.loadState()
	if err != nil {
		return err
	}
	if st.Releases[sha] == nil || !isDir(r.Dir(sha)) {
		return errors.New("release is not complete")
	}
	root, err := os.OpenRoot(r.releasesDir())
	if err != nil {
		return err
	}
	defer root.Close() // a directory: closing it loses nothing
	// A hold that current does not name is a leftover: a crash before the swap.
	if err := removeAll(root, holdName(sha)); err != nil {
		return err
	}
	if err := r.publishCopy(root, sha, holdName(sha)); err != nil {
		return err
	}
	if err := r.swapCurrent(holdName(sha)); err != nil {
		// The swap's error is the one to return; a hold left here is removed by the
		// next Hold or Recover.
		removeAll(root, holdName(sha))
		return err
	}
	// current names the hold now: from here on, undoing is Restore.
	err = r.updateStateLocked(func(st *state) (bool, error) {
		rec := st.Releases[sha]
		if rec == nil {
			return false, errors.New("record vanished")
		}
		st.Hold = &heldRecord{SHA: sha, Record: *rec}
		delete(st.Releases, sha)
		return true, nil
	})
	if err == nil {
		err = removeAll(root, sha)
	}
	if err != nil {
		if rerr := r.restore(sha); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore: %w", rerr))
		}
		return err
	}
	return nil
}

// Restore gives up the rebuild of the held release sha: it puts the held tree back at
// releases/<sha> (as a hard-linked copy, so that current names a complete tree at every
// moment), records it complete again with its old record, points current at it and
// removes the hold. Whatever was rebuilt at releases/<sha> is removed first, and so are
// the shared dirs LinkShared created for the rebuild (see LinkShared).
func (r *Releaser) Restore(sha string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	live, held, err := r.target()
	if err != nil {
		return fmt.Errorf("restore %s: %w", sha, err)
	}
	if !held || live != sha {
		return fmt.Errorf("restore %s: release is not held", sha)
	}
	if err := r.restore(sha); err != nil {
		return fmt.Errorf("restore %s: %w", sha, err)
	}
	if err := r.removeCreatedLocked(sha); err != nil {
		return fmt.Errorf("restore %s: %w", sha, err)
	}
	return nil
}

// Unrebuild puts back the build of sha that was live before its rebuild (Hold) went live
// (Activate), which kept it aside: for a rebuild that failed its health check. current is
// swapped back to the held copy, then Restore's steps follow: the copy goes back to
// releases/<sha>, replacing the rebuild, and current to it. It fails if no copy is kept.
func (r *Releaser) Unrebuild(sha string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("unrebuild: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !isDir(r.Dir(holdName(sha))) {
		return fmt.Errorf("unrebuild %s: the build live before is not kept", sha)
	}
	live, held, err := r.target()
	if err != nil {
		return fmt.Errorf("unrebuild %s: %w", sha, err)
	}
	if live != sha {
		return fmt.Errorf("unrebuild %s: %s is live", sha, live)
	}
	if !held {
		if err := r.swapCurrent(holdName(sha)); err != nil {
			return fmt.Errorf("unrebuild %s: %w", sha, err)
		}
	}
	if err := r.restore(sha); err != nil {
		return fmt.Errorf("unrebuild %s: %w", sha, err)
	}
	return nil
}

// restore is Restore for a caller holding r.mu, with current naming the hold of sha. Each
// step leaves a state from which restore, run again by Recover, completes.
func (r *Releaser) restore(sha string) error {
	if !isDir(r.Dir(holdName(sha))) {
		return fmt.Errorf("%s is missing", r.Dir(holdName(sha)))
	}
	now := r.now().UTC()
	// releases/<sha> is not the live tree: it must not count as complete. The record to
	// restore is kept aside; a crash right after Hold's swap had not set it aside yet.
	err := r.updateStateLocked(func(st *state) (bool, error) {
		if st.Hold == nil || st.Hold.SHA != sha {
			st.Hold = &heldRecord{SHA: sha, Record: record{Completed: now}}
			if rec := st.Releases[sha]; rec != nil {
				st.Hold.Record = *rec
			}
		}
		delete(st.Releases, sha)
		return true, nil
	})
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(r.releasesDir())
	if err != nil {
		return err
	}
	defer root.Close() // a directory: closing it loses nothing
	if err := removeAll(root, sha); err != nil {
		return err
	}
	// The rebuild's inode record, if it got that far, is no record of the held tree.
	if err := r.removeInodes(sha); err != nil {
		return err
	}
	if err := r.publishCopy(root, holdName(sha), sha); err != nil {
		return err
	}
	err = r.updateStateLocked(func(st *state) (bool, error) {
		rec := st.Hold.Record
		st.Releases[sha] = &rec
		return true, nil
	})
	if err != nil {
		return err
	}
	if err := r.swapCurrent(sha); err != nil {
		return err
	}
	err = r.updateStateLocked(func(st *state) (bool, error) {
		st.Hold = nil
		return true, nil
	})
	if err != nil {
		return err
	}
	return r.removeHolds()
}

// publishCopy makes dst, a name in releases/ that must not exist, a hard-linked copy of
// src, durably: the copy is made under a temporary name, synced, then renamed to dst.
func (r *Releaser) publishCopy(root *os.Root, src, dst string) error {
	tmp := tmpTreePrefix + randSuffix()
	// On failure, tmp goes, if it can: else Recover removes it, as a stray.
	if err := linkTree(root, src, tmp); err != nil {
		removeAll(root, tmp) // see above
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := syncFS(r.releasesDir()); err != nil {
		removeAll(root, tmp) // see above
		return err
	}
	if err := root.Rename(tmp, dst); err != nil {
		removeAll(root, tmp) // see above
		return err
	}
	return atomicfile.SyncDir(r.releasesDir())
}

// linkTree makes dst a copy of src, both in root: directories are created, with src's
// modes; every other entry (file, symlink, anything else) is a hard link to src's. Nothing
// of src is modified, and nothing is followed.
func linkTree(root *os.Root, src, dst string) error {
	type dir struct {
		name string
		mode fs.FileMode
	}
	var dirs []dir
	err := fs.WalkDir(root.FS(), src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := dst + strings.TrimPrefix(p, src)
		if !d.IsDir() {
			return root.Link(p, name)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		// Owner-writable while it is filled; its own mode once it is full.
		if err := root.Mkdir(name, 0o700); err != nil {
			return err
		}
		dirs = append(dirs, dir{name, info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)})
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chmod(dirs[i].name, dirs[i].mode); err != nil {
			return err
		}
	}
	return nil
}

// removeHolds removes every hold in releases/; current must not name one.
func (r *Releaser) removeHolds() error {
	entries, err := os.ReadDir(r.releasesDir())
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(r.releasesDir())
	if err != nil {
		return err
	}
	defer root.Close() // a directory: closing it loses nothing
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), holdPrefix) {
			errs = append(errs, removeAll(root, e.Name()))
		}
	}
	return errors.Join(errs...)
}
