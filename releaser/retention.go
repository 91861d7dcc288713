package releaser

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"
)

// Release is one complete release.
type Release struct {
	SHA           string
	Completed     time.Time
	LastActivated time.Time // zero if it never went live
	Live          bool
}

// Releases lists the complete releases, most recently activated first; those never
// activated come last, most recently completed first. A live release held for a rebuild
// (Hold) is listed, live, with its old record.
func (r *Releaser) Releases() ([]Release, error) {
	st, _, err := r.loadState()
	if err != nil {
		return nil, fmt.Errorf("releases: %w", err)
	}
	live, held, err := r.target()
	if err != nil {
		return nil, fmt.Errorf("releases: %w", err)
	}
	var out []Release
	if h := st.Hold; held && h != nil && h.SHA == live && st.Releases[live] == nil {
		out = append(out, Release{SHA: live, Completed: h.Record.Completed, LastActivated: h.Record.Activated, Live: true})
	}
	for _, sha := range r.ordered(st, live) {
		rec := st.Releases[sha]
		out = append(out, Release{SHA: sha, Completed: rec.Completed, LastActivated: rec.Activated, Live: sha == live})
	}
	return out, nil
}

// ordered returns the shas of the complete releases in st (those whose directory exists):
// the live one first, then by last activation, newest first, then the never activated,
// most recently completed first. Names never decide, they are not in time order.
func (r *Releaser) ordered(st *state, live string) []string {
	var shas []string
	for sha := range st.Releases {
		if isDir(r.Dir(sha)) {
			shas = append(shas, sha)
		}
	}
	slices.SortFunc(shas, func(a, b string) int {
		ra, rb := st.Releases[a], st.Releases[b]
		switch {
		case a == live:
			return -1
		case b == live:
			return 1
		case ra.Seq != rb.Seq:
			return cmp.Compare(rb.Seq, ra.Seq)
		case !ra.Completed.Equal(rb.Completed):
			return rb.Completed.Compare(ra.Completed)
		}
		return cmp.Compare(a, b)
	})
	return shas
}

// Prune deletes the complete releases beyond KeepReleases, in the order of Releases (by
// last activation; never by name). It never deletes the live release nor the one live
// just before it (Previous), whatever KeepReleases is, nor one that stopped being live less
// than PruneGrace ago. Releases being built are not complete, so never touched. It returns
// the shas removed. With LinkFiles, the live release keeps trusting the inodes it shares
// with them if they are untouched (see keeper). A rebuild's held copy (Hold), which
// Activate keeps, goes once current no longer names it.
//
// Then it prunes the deploy logs: it keeps those of the newest 20 entries that failed or
// were cancelled, of every entry whose release went live and is still kept, and of a
// deploy running; it deletes the others (History then reports their Log as "").
func (r *Releaser) Prune() (removed []string, err error) {
	live, held, err := r.target()
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	if !held { // a rebuild's held copy, kept by Activate in case it had to go back
		r.mu.Lock()
		err := r.removeHolds()
		r.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("prune: remove a held copy: %w", err)
		}
	}
	now := r.now().UTC()
	var doomed []string
	kept := map[string]bool{live: live != ""}
	err = r.updateState(func(st *state) (bool, error) {
		prev := r.previous(st, live)
		if st.Hold != nil {
			kept[st.Hold.SHA] = true
		}
		for i, sha := range r.ordered(st, live) {
			rec := st.Releases[sha]
			kept[sha] = true
			if i < r.keep || sha == live || sha == prev {
				continue
			}
			if r.grace > 0 && rec.Seq > 0 {
				stopped := rec.Deactivated
				if st.Live == sha {
					stopped = now // its end was not recorded: count from now
				}
				if left := r.grace - now.Sub(stopped); left > 0 {
					r.log.Debug().Str("sha", sha).Int64("grace_left_ms", left.Milliseconds()).Msg("prune deferred")
					continue
				}
			}
			delete(st.Releases, sha)
			delete(kept, sha)
			doomed = append(doomed, sha)
		}
		return len(doomed) > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	// The records are gone first: a release half deleted by a crash is incomplete, and
	// Recover removes the rest. The live release keeps trusting the inodes it shares with
	// the doomed ones (see keeper).
	var errs []error
	var k *keeper
	if len(doomed) > 0 {
		k = r.openKeeper()
	}
	for _, sha := range doomed {
		k.untangle(sha)
		if err := r.removeRelease(sha); err != nil {
			errs = append(errs, fmt.Errorf("prune %s: %w", sha, err))
			continue
		}
		if err := r.removeInodes(sha); err != nil {
			errs = append(errs, fmt.Errorf("prune %s: %w", sha, err))
		}
		removed = append(removed, sha)
	}
	if err := k.save(); err != nil {
		errs = append(errs, fmt.Errorf("prune: %w", err))
	}
	if err := r.pruneLogs(kept); err != nil {
		errs = append(errs, fmt.Errorf("prune logs: %w", err))
	}
	return removed, errors.Join(errs...)
}

// Discard removes release sha, complete or not, and its records, and the shared dirs
// LinkShared created for it (see LinkShared), durably. It refuses the live release.
// Directories the build made read-only are made writable to be removed. With LinkFiles,
// the live release keeps trusting the inodes it shares with sha if they are untouched
// (see keeper).
func (r *Releaser) Discard(sha string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("discard: %w", err)
	}
	live, err := r.Current()
	if err != nil {
		return fmt.Errorf("discard %s: %w", sha, err)
	}
	if live == sha {
		return fmt.Errorf("discard %s: release is live", sha)
	}
	err = r.updateState(func(st *state) (bool, error) {
		if st.Releases[sha] == nil {
			return false, nil
		}
		delete(st.Releases, sha)
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("discard %s: %w", sha, err)
	}
	k := r.openKeeper()
	k.untangle(sha)
	if err := r.removeRelease(sha); err != nil {
		return fmt.Errorf("discard %s: %w", sha, err)
	}
	if err := r.removeInodes(sha); err != nil {
		return fmt.Errorf("discard %s: %w", sha, err)
	}
	if err := r.removeCreated(sha); err != nil {
		return fmt.Errorf("discard %s: %w", sha, err)
	}
	if err := k.save(); err != nil {
		return fmt.Errorf("discard %s: %w", sha, err)
	}
	return nil
}

// removeRelease removes releases/<name>, whatever it is; a missing one is not an error.
func (r *Releaser) removeRelease(name string) error {
	root, err := os.OpenRoot(r.releasesDir())
	if err != nil {
		return err
	}
	defer root.Close() // a directory: closing it loses nothing
	return removeAll(root, name)
}

// removeAll removes name and everything under it, inside root. A build can leave
// directories without write or search permission, which stops the removal of their
// entries: those are made accessible to their owner, and the removal is tried again.
func removeAll(root *os.Root, name string) error {
	err := root.RemoveAll(name)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	// WalkDir calls fn on a directory before reading it, so each one is opened up just in
	// time to be read. Errors are left to the second RemoveAll to report.
	fs.WalkDir(root.FS(), name, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			root.Chmod(p, 0o700)
		}
		return nil
	})
	return root.RemoveAll(name)
}
