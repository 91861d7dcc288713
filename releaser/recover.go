package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

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
// so is an unreadable releases.json or history.jsonl (a *CorruptError if it does not
// parse): nothing is changed then.
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
	if err := r.repair(); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	return nil
}

// repair is Recover for a caller holding the deploy lock and r.mu. Its phases run in this
// order, each relying on the invariants the ones before it restored; the records are
// changed in memory and written once, before the journal is settled.
func (r *Releaser) repair() error {
	if _, _, err := r.loadState(); err != nil {
		return err // an unreadable record: change nothing
	}
	if _, err := r.readJournal(); err != nil {
		return err // a damaged journal: change nothing either
	}
	if err := r.restoreHold(); err != nil {
		return err
	}
	rp, err := r.inspect()
	if err != nil {
		return err
	}
	rp.adoptLive()
	if err := rp.sweepReleases(); err != nil {
		return err
	}
	rp.forgetMissing()
	if err := rp.removeDebris(); err != nil {
		return err
	}
	if err := rp.repairCurrent(); err != nil {
		return err
	}
	rp.alignRecords()
	if rp.changed {
		if err := r.saveState(rp.st); err != nil {
			return err
		}
	}
	return r.settleJournal(rp.live)
}

// repairing is what repair learns of the deploy root and the records it mends, between
// its phases.
type repairing struct {
	r       *Releaser
	st      *state
	exists  bool      // releases.json exists: a missing one is records lost, see adoptLive
	now     time.Time // the time of every record repair writes
	changed bool      // st differs from releases.json

	// hasCurrent: current exists (and is a symlink). live: the sha it names, "" if none;
	// after repairCurrent, the live release. liveErr: why current names no release
	// directory, if it cannot be read or names a (missing) hold.
	hasCurrent bool
	live       string
	liveErr    error
	present    map[string]bool // complete releases whose directory is in releases/
}

// restoreHold gives up a rebuild of the live release that a crash interrupted (see Hold).
// Invariant restored: current names no hold whose tree exists; if it named one, the held
// tree is back at releases/<sha> with its record, and current names it, as after Restore.
func (r *Releaser) restoreHold() error {
	fi, err := os.Lstat(r.currentLink())
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return nil // no current, or not a symlink: inspect reports what is wrong with it
	}
	sha, held, err := r.target()
	if err != nil || !held || !isDir(r.Dir(holdName(sha))) {
		return nil // a current that names no hold, or a hold that is gone: inspect's case
	}
	r.log.Warn().Str("sha", sha).Msg("restoring the release held for a rebuild that did not finish")
	if err := r.restore(sha); err != nil {
		return fmt.Errorf("restore held release %s: %w", sha, err)
	}
	return nil
}

// inspect reads the records and current. current that exists and is not a symlink is an
// error: repair does not remove what it did not make. A current that names a hold now
// names one that is gone (restoreHold put back any other): it dangles.
func (r *Releaser) inspect() (*repairing, error) {
	st, exists, err := r.loadState()
	if err != nil {
		return nil, err
	}
	rp := &repairing{r: r, st: st, exists: exists, now: r.now().UTC()}
	fi, err := os.Lstat(r.currentLink())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	rp.hasCurrent = err == nil
	if !rp.hasCurrent {
		return rp, nil
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return nil, fmt.Errorf("%s is not a symlink: move it away", r.currentLink())
	}
	var held bool
	rp.live, held, rp.liveErr = r.target()
	if held {
		rp.liveErr = fmt.Errorf("current names %s, which is missing", r.Dir(holdName(rp.live)))
	}
	return rp, nil
}

// adoptLive handles lost records. Invariant restored: if releases.json does not exist
// while current names an existing release, that release is recorded complete and live,
// rather than deleted by sweepReleases as incomplete.
func (rp *repairing) adoptLive() {
	if rp.exists || rp.live == "" || rp.liveErr != nil || !isDir(rp.r.Dir(rp.live)) {
		return
	}
	rp.r.log.Warn().Str("sha", rp.live).Str("file", rp.r.statePath()).
		Msg("release records missing: adopting the live release as complete")
	rp.st.Releases[rp.live] = &record{Completed: rp.now}
	rp.st.activated(rp.live, rp.now)
	rp.changed = true
}

// sweepReleases empties releases/ of all but complete releases. Invariant restored:
// releases/ holds only directories named by a full sha and recorded complete; incomplete
// releases, holds (restoreHold put back the one that served), temporary trees, and any
// other entry are removed. It fills present.
func (rp *repairing) sweepReleases() error {
	root, err := os.OpenRoot(rp.r.releasesDir())
	if err != nil {
		return err
	}
	defer root.Close() // a directory: closing it loses nothing
	entries, err := os.ReadDir(rp.r.releasesDir())
	if err != nil {
		return err
	}
	rp.present = map[string]bool{}
	var (
		k      *keeper // the live release's, for the incomplete ones
		opened bool
	)
	for _, e := range entries {
		name := e.Name()
		release := validSHA(name) && e.Type().IsDir()
		if release && rp.st.Releases[name] != nil {
			rp.present[name] = true
			continue
		}
		msg := "removing stray entry from releases"
		if release {
			msg = "removing incomplete release"
			// A crashed deploy's: the live release keeps trusting the inodes it shares
			// with it, if untouched.
			if !opened {
				k, opened = rp.r.openKeeper(), true
			}
			k.untangle(name)
		}
		rp.r.log.Warn().Str("name", name).Msg(msg)
		if err := removeAll(root, name); err != nil {
			return err
		}
	}
	if err := k.save(); err != nil {
		// Only speed is lost: the next release inflates what it would have linked.
		rp.r.log.Warn().Err(err).Msg("update the live release's inode record")
	}
	return nil
}

// forgetMissing drops the records of releases whose directory is gone. Invariant
// restored: every record names a directory in releases/.
func (rp *repairing) forgetMissing() {
	for sha := range rp.st.Releases {
		if !rp.present[sha] {
			rp.r.log.Warn().Str("sha", sha).Msg("forgetting complete release whose directory is gone")
			delete(rp.st.Releases, sha)
			rp.changed = true
		}
	}
}

// removeDebris removes what writes interrupted by a crash left behind. Invariant restored:
// no temporary link beside current, no temporary file in .slipway/, and in
// .slipway/inodes/ only the records of complete releases.
func (rp *repairing) removeDebris() error {
	r := rp.r
	if err := r.removeTempLinks(); err != nil {
		return err
	}
	if err := atomicfile.RemoveStale(r.metaDir()); err != nil {
		return err
	}
	entries, err := os.ReadDir(r.inodesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if rp.present[e.Name()] {
			continue
		}
		if err := os.Remove(filepath.Join(r.inodesDir(), e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// repairCurrent makes current name a complete release. Invariant restored: current names
// a release in present, or there is no current and no release ever went live. A current
// that dangles, names an incomplete release or names none, and a missing current while
// some release has been live, are repointed to the most recently activated complete
// release, or removed if there is none.
func (rp *repairing) repairCurrent() error {
	best := rp.lastLive()
	broken := (rp.hasCurrent && (rp.liveErr != nil || !rp.present[rp.live])) || (!rp.hasCurrent && best != "")
	if !broken {
		return nil
	}
	r := rp.r
	ev := r.log.Warn().Str("old_target", readlink(r.currentLink())).AnErr("current_error", rp.liveErr)
	if best == "" {
		if err := os.Remove(r.currentLink()); err != nil {
			return err
		}
		if err := atomicfile.SyncDir(r.path); err != nil {
			return err
		}
		rp.live = ""
		ev.Msg("current did not name a complete release and none was ever live: removed it")
		return nil
	}
	if err := r.swapCurrent(best); err != nil {
		return err
	}
	rp.st.activated(best, rp.now)
	rp.changed = true
	rp.live = best
	ev.Str("sha", best).Msg("current did not name a complete release: repointed to the last one live")
	return nil
}

// lastLive returns the complete release activated last, by activation order; "" if none
// ever was.
func (rp *repairing) lastLive() string {
	var best string
	for sha, rec := range rp.st.Releases {
		if rec.Seq > 0 && (best == "" || rec.Seq > rp.st.Releases[best].Seq) {
			best = sha
		}
	}
	return best
}

// alignRecords brings the records in line with current, which repairCurrent made the
// truth. Invariants restored: no hold is recorded (current names none now: the rebuild
// went live, or was given up), and the release recorded live is the one current names; a
// crash between a swap and its record leaves the records behind current.
func (rp *repairing) alignRecords() {
	st := rp.st
	if st.Hold != nil {
		st.Hold = nil
		rp.changed = true
	}
	if st.Live == rp.live {
		return
	}
	if rp.live != "" {
		st.activated(rp.live, rp.now)
	} else {
		if rec := st.Releases[st.Live]; rec != nil {
			rec.Deactivated = rp.now
		}
		st.Live = ""
	}
	rp.changed = true
}

// readlink returns the target of the symlink name, for a log line; "" if it has none.
func readlink(name string) string {
	t, err := os.Readlink(name)
	if err != nil {
		return "" // not a symlink, or gone: nothing to show
	}
	return t
}
