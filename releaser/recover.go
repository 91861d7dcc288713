package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/slipway/slipway/internal/atomicfile"
)

// Recover restores the invariants after a crash; it runs at server start, before any
// deploy, and takes the deploy lock itself for its duration (a *LockedError if another
// process holds it: that process may be building a release Recover would remove).
//
// It removes every releases/<x> that is not recorded complete, and anything in releases/
// that is not a release directory; forgets records whose directory is gone; removes stale
// temporary links and files; and checks that current names a complete release. If current
// is dangling, names an incomplete release, or is missing while some release has been live,
// it is repointed to the most recently activated complete release, or removed if there is
// none; each repair is logged at warn level. current that is not a symlink is an error, and
// so is an unreadable releases.json: nothing is removed then.
//
// If releases.json does not exist at all while current names an existing release, the
// records were lost, not the release: the live release is adopted as complete rather than
// deleted.
//
// A rebuild of the live release interrupted by the crash (see Hold) is given up: if current
// names a hold, the held tree goes back to releases/<sha>, replacing the rebuild, and
// current to it, as Restore does. A hold that current does not name is removed (the
// rebuild had gone live, or the hold never had).
//
// Last, the journal is brought in line: an activation it missed is journaled, and every
// entry left unfinished is finished, as live if its release had gone live, as cancelled
// otherwise.
func (r *Releaser) Recover() error {
	unlock, err := r.Lock("recover")
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	defer unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.recover(); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	return nil
}

func (r *Releaser) recover() error {
	if _, _, err := r.loadState(); err != nil {
		return err // an unreadable record: change nothing
	}
	if fi, err := os.Lstat(r.currentLink()); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if sha, held, err := r.target(); err == nil && held && isDir(r.Dir(holdName(sha))) {
			r.log.Warn().Str("sha", sha).Msg("restoring the release held for a rebuild that did not finish")
			if err := r.restore(sha); err != nil {
				return fmt.Errorf("restore held release %s: %w", sha, err)
			}
		}
	}
	st, exists, err := r.loadState()
	if err != nil {
		return err
	}
	now := r.now().UTC()
	changed := false

	fi, err := os.Lstat(r.currentLink())
	currentExists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if currentExists && fi.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("%s is not a symlink: move it away", r.currentLink())
	}
	live, held, liveErr := "", false, error(nil)
	if currentExists {
		live, held, liveErr = r.target()
	}
	if held {
		// A hold that is gone: current dangles.
		liveErr = fmt.Errorf("current names %s, which is missing", r.Dir(holdName(live)))
	}

	if !exists && live != "" && liveErr == nil && isDir(r.Dir(live)) {
		r.log.Warn().Str("sha", live).Str("file", r.statePath()).
			Msg("release records missing: adopting the live release as complete")
		st.Releases[live] = &record{Completed: now}
		st.activated(live, now)
		changed = true
	}

	// releases/ holds complete release directories only.
	root, err := os.OpenRoot(r.releasesDir())
	if err != nil {
		return err
	}
	defer root.Close()
	entries, err := os.ReadDir(r.releasesDir())
	if err != nil {
		return err
	}
	present := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if validSHA(name) && e.Type().IsDir() && st.Releases[name] != nil {
			present[name] = true
			continue
		}
		msg := "removing stray entry from releases"
		if validSHA(name) && e.Type().IsDir() {
			msg = "removing incomplete release"
		}
		r.log.Warn().Str("name", name).Msg(msg)
		if err := removeAll(root, name); err != nil {
			return err
		}
	}
	for sha := range st.Releases {
		if !present[sha] {
			r.log.Warn().Str("sha", sha).Msg("forgetting complete release whose directory is gone")
			delete(st.Releases, sha)
			changed = true
		}
	}

	if err := r.removeTempLinks(); err != nil {
		return err
	}
	if err := atomicfile.RemoveStale(r.metaDir()); err != nil {
		return err
	}

	// current must name a complete release.
	var best string
	for sha, rec := range st.Releases {
		if rec.Seq > 0 && (best == "" || rec.Seq > st.Releases[best].Seq) {
			best = sha
		}
	}
	broken := (currentExists && (liveErr != nil || !present[live])) || (!currentExists && best != "")
	if broken {
		ev := r.log.Warn().Str("old_target", readlink(r.currentLink())).AnErr("current_error", liveErr)
		if best != "" {
			if err := r.swapCurrent(best); err != nil {
				return err
			}
			st.activated(best, now)
			changed = true
			live = best
			ev.Str("sha", best).Msg("current did not name a complete release: repointed to the last one live")
		} else {
			if err := os.Remove(r.currentLink()); err != nil {
				return err
			}
			if err := atomicfile.SyncDir(r.path); err != nil {
				return err
			}
			live = ""
			ev.Msg("current did not name a complete release and none was ever live: removed it")
		}
	}

	if st.Hold != nil {
		// current does not name a hold any more: the rebuild went live, or was given up.
		st.Hold = nil
		changed = true
	}
	// A crash between a swap and its record leaves the records behind current.
	if st.Live != live {
		if live != "" {
			st.activated(live, now)
		} else {
			if rec := st.Releases[st.Live]; rec != nil {
				rec.Deactivated = now
			}
			st.Live = ""
		}
		changed = true
	}
	if changed {
		if err := r.saveState(st); err != nil {
			return err
		}
	}
	return r.settleJournal(live)
}

func readlink(name string) string {
	t, _ := os.Readlink(name)
	return t
}
