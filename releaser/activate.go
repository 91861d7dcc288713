package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/slipway/slipway/internal/atomicfile"
)

// tmpLinkPrefix names the temporary link that is renamed over current.
const tmpLinkPrefix = ".current.tmp-"

// Current returns the sha of the live release, read from the current symlink; "" if there
// is none. While the live release is held for a rebuild (Hold), that is still its sha.
func (r *Releaser) Current() (sha string, err error) {
	sha, _, err = r.target()
	return sha, err
}

// target reads current: the sha it names, and whether it names the hold of that sha
// (releases/.hold-<sha>) rather than releases/<sha>. No current: "", false, nil.
func (r *Releaser) target() (sha string, held bool, err error) {
	target, err := os.Readlink(r.currentLink())
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if errors.Is(err, syscall.EINVAL) {
		return "", false, fmt.Errorf("current: %s is not a symlink", r.currentLink())
	}
	if err != nil {
		return "", false, fmt.Errorf("current: %w", err)
	}
	sha, held, ok := r.parseTarget(target)
	if !ok {
		return "", false, fmt.Errorf("current: points to %q, not to a release in %s", target, r.releasesDir())
	}
	return sha, held, nil
}

// parseTarget returns the sha of a current link's target: "releases/<sha>" or
// "releases/.hold-<sha>" (held), or the absolute path of either.
func (r *Releaser) parseTarget(target string) (sha string, held, ok bool) {
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(r.currentLink()), target)
	}
	target = filepath.Clean(target)
	if filepath.Dir(target) != r.releasesDir() {
		return "", false, false
	}
	base := filepath.Base(target)
	if sha, ok := strings.CutPrefix(base, holdPrefix); ok {
		return sha, true, validSHA(sha)
	}
	return base, false, validSHA(base)
}

// IsComplete reports whether release sha is recorded complete and its directory exists.
func (r *Releaser) IsComplete(sha string) bool {
	if !validSHA(sha) {
		return false
	}
	st, _, err := r.loadState()
	if err != nil || st.Releases[sha] == nil {
		return false
	}
	return isDir(r.Dir(sha))
}

// Complete makes release sha durable and records it complete. The release's data is synced
// first (syncfs(2) on its filesystem), then the record is written durably under .slipway/,
// so that a crash can never leave a release recorded complete with its files not on disk.
// Completing a complete release again only syncs it.
func (r *Releaser) Complete(sha string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	dir := r.Dir(sha)
	if !isDir(dir) {
		return fmt.Errorf("complete %s: %s is not a directory", sha, dir)
	}
	if err := syncFS(dir); err != nil {
		return fmt.Errorf("complete %s: %w", sha, err)
	}
	r.mu.Lock()
	written := r.written[sha]
	delete(r.written, sha)
	r.mu.Unlock()
	err := r.updateState(func(st *state) (bool, error) {
		if st.Releases[sha] != nil {
			return false, nil
		}
		st.Releases[sha] = &record{Completed: r.now().UTC(), Written: written.UTC()}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("complete %s: %w", sha, err)
	}
	return nil
}

// Activate makes release sha, which must be complete, the live one: a symlink to
// releases/<sha> under a temporary name is renamed over current (atomic for every
// observer) and the deploy root is synced. It journals the activation and records when sha
// went live and when the release live before stopped being live. wasLiveBefore says
// whether sha had been live before (a rollback); a release rebuilt under a hold had not.
//
// While the live release is held (Hold), only that sha, rebuilt and completed, may be
// activated. The held copy stays until Prune (or Recover) removes it, so that Unrebuild
// can still put the old build back if the rebuild fails its health check.
//
// A failure to move current is a *SwapError (see Reason); then the release live before
// stays live, unless only the final sync of the deploy root failed.
func (r *Releaser) Activate(sha string) (wasLiveBefore bool, err error) {
	if err := checkSHA(sha); err != nil {
		return false, fmt.Errorf("activate: %w", err)
	}
	st, _, err := r.loadState()
	if err != nil {
		return false, fmt.Errorf("activate %s: %w", sha, err)
	}
	rec := st.Releases[sha]
	if rec == nil || !isDir(r.Dir(sha)) {
		return false, fmt.Errorf("activate %s: release is not complete", sha)
	}
	prev, held, err := r.target()
	if err != nil {
		return false, fmt.Errorf("activate %s: %w", sha, err)
	}
	if held && prev != sha {
		return false, fmt.Errorf("activate %s: release %s is held for a rebuild: restore it first", sha, prev)
	}
	wasLiveBefore = !held && (rec.Seq > 0 || prev == sha)
	if err := r.swapCurrent(sha); err != nil {
		return false, fmt.Errorf("activate %s: %w", sha, err)
	}
	// sha is live: the shared dirs made for it are its own now.
	r.mu.Lock()
	r.forgetCreatedLocked()
	r.mu.Unlock()
	r.journalActivation(sha)
	now := r.now().UTC()
	err = r.updateState(func(st *state) (bool, error) {
		st.activated(sha, now)
		st.Hold = nil
		return true, nil
	})
	if err != nil {
		// current is what makes a release live, and it has moved: the activation stands.
		// A lost record only affects the order of pruning, and Recover repairs it.
		r.log.Error().Err(err).Str("sha", sha).Msg("record activation")
		return wasLiveBefore, nil
	}
	if !held {
		if err := r.removeHolds(); err != nil { // leftovers of an earlier rebuild
			r.log.Error().Err(err).Str("sha", sha).Msg("remove a held copy") // Recover will
		}
	}
	return wasLiveBefore, nil
}

// Deactivate removes current if it names sha, which leaves the environment with nothing
// live, as before its first deploy: the revert of a first deploy whose health check failed.
// It journals that current is gone.
func (r *Releaser) Deactivate(sha string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("deactivate: %w", err)
	}
	live, held, err := r.target()
	if err != nil {
		return fmt.Errorf("deactivate %s: %w", sha, err)
	}
	if held || live != sha {
		return fmt.Errorf("deactivate %s: current names %q, not it", sha, live)
	}
	if err := os.Remove(r.currentLink()); err != nil {
		return fmt.Errorf("deactivate %s: %w", sha, err)
	}
	if err := atomicfile.SyncDir(r.path); err != nil {
		return fmt.Errorf("deactivate %s: %w", sha, err)
	}
	r.journalActivation("")
	return nil
}

// swapCurrent points current at releases/<name> (a sha, or a hold) atomically and durably.
// Its errors are *SwapError.
func (r *Releaser) swapCurrent(name string) error {
	if err := r.removeTempLinks(); err != nil {
		return &SwapError{Err: err}
	}
	tmp := filepath.Join(r.path, tmpLinkPrefix+randSuffix())
	if err := os.Symlink(r.linkTarget(name), tmp); err != nil {
		return &SwapError{Err: err}
	}
	// rename(2) replaces the symlink current itself, never an entry inside its target
	// (unlike mv without -T). If current is a real directory, it fails.
	if err := os.Rename(tmp, r.currentLink()); err != nil {
		os.Remove(tmp) // if this fails too, the next swap's removeTempLinks removes it
		return &SwapError{Err: err}
	}
	if err := atomicfile.SyncDir(r.path); err != nil {
		return &SwapError{Err: err}
	}
	return nil
}

// removeTempLinks removes temporary links left by a swap interrupted by a crash.
func (r *Releaser) removeTempLinks() error {
	entries, err := os.ReadDir(r.path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tmpLinkPrefix) || e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(r.path, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Previous returns the default rollback target: the complete release that was live most
// recently before the live one, by activation order (never by name); an error wrapping
// ErrNotFound if there is none. A release that never went live is not one.
func (r *Releaser) Previous() (string, error) {
	st, _, err := r.loadState()
	if err != nil {
		return "", fmt.Errorf("previous: %w", err)
	}
	live, err := r.Current()
	if err != nil {
		return "", fmt.Errorf("previous: %w", err)
	}
	if prev := r.previous(st, live); prev != "" {
		return prev, nil
	}
	return "", fmt.Errorf("previous: %w", ErrNotFound)
}

// previous is Previous on the records st.
func (r *Releaser) previous(st *state, live string) string {
	best := ""
	for sha, rec := range st.Releases {
		if sha == live || rec.Seq == 0 || !isDir(r.Dir(sha)) {
			continue
		}
		if best == "" || rec.Seq > st.Releases[best].Seq {
			best = sha
		}
	}
	return best
}

// ActivatedAt returns when sha last went live; zero if it never did. It asks the records
// of the kept releases, and the journal for those no longer kept.
func (r *Releaser) ActivatedAt(sha string) (time.Time, error) {
	st, _, err := r.loadState()
	if err != nil {
		return time.Time{}, fmt.Errorf("activated at %s: %w", sha, err)
	}
	var at time.Time
	if rec := st.Releases[sha]; rec != nil {
		at = rec.Activated
	}
	if st.Hold != nil && st.Hold.SHA == sha && st.Hold.Record.Activated.After(at) {
		at = st.Hold.Record.Activated
	}
	lines, err := r.readJournal()
	if err != nil {
		return time.Time{}, fmt.Errorf("activated at %s: %w", sha, err)
	}
	for _, l := range lines {
		if l.Event == eventActivate && l.SHA == sha && l.Time.After(at) {
			at = l.Time
		}
	}
	return at, nil
}

// syncFS flushes the whole filesystem holding dir: cheaper than an fsync of every file
// and directory of a release, and it covers what the build wrote too.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close() // opened for syncfs only: closing it loses nothing
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// isDir reports whether path is a directory, not a symlink to one.
func isDir(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.IsDir()
}
