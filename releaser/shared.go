package releaser

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// MissingSharedError is a shared file that LinkShared needs and the server lacks. Shared
// files (.env and the like) hold what the operator provides; slipway never makes them up.
type MissingSharedError struct {
	Path string // absolute path of the file to create
	Name string // its path under shared/, as LinkShared was given it, cleaned
}

func (e *MissingSharedError) Error() string {
	return fmt.Sprintf("shared file %s does not exist: create it on the server", e.Path)
}

// LinkShared links <path>/shared/<p> into release sha at <p>, for each of files and dirs,
// with relative symlinks (releases/<sha>/config/.env -> ../../../shared/config/.env).
// Whatever the release has at <p> is removed first, and missing parent directories are
// created inside the release; a parent that is not a directory there (a symlink, a file)
// is an error. Missing shared dirs are created; a missing shared file is a
// *MissingSharedError, found before anything changes. Each p must be a relative path that
// stays inside the release. LinkShared is idempotent: it runs again at every activation.
//
// The shared dirs it creates (the topmost missing one of each path, below which it creates
// the rest) are remembered for sha until a release goes live: if sha never does, Discard(sha)
// or Restore(sha) removes them again, with whatever the failed build wrote into them, so
// that a rejected deploy leaves shared/ as it found it. A shared dir that existed before is
// never touched. The memory is this process's: after a crash in between, the dirs stay.
func (r *Releaser) LinkShared(sha string, files, dirs []string) error {
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("link shared: %w", err)
	}
	type link struct {
		p   string
		dir bool
	}
	var links []link
	add := func(paths []string, dir bool) error {
		for _, p := range paths {
			clean, ok := localPath(p)
			if !ok {
				return fmt.Errorf("link shared %q: not a relative path inside the release", p)
			}
			links = append(links, link{p: clean, dir: dir})
		}
		return nil
	}
	if err := add(files, false); err != nil {
		return err
	}
	if err := add(dirs, true); err != nil {
		return err
	}

	root, err := os.OpenRoot(r.Dir(sha))
	if err != nil {
		return fmt.Errorf("link shared: %w", err)
	}
	defer root.Close() // a directory: closing it loses nothing

	// The shared side first, so that a missing file leaves the release as it was.
	var seeds []string
	for _, l := range links {
		if l.dir {
			continue
		}
		src := filepath.Join(r.sharedDir(), l.p)
		fi, err := os.Stat(src)
		if errors.Is(err, fs.ErrNotExist) {
			if r.seedFiles && isRegularIn(root, l.p) {
				seeds = append(seeds, l.p)
				continue
			}
			return &MissingSharedError{Path: src, Name: l.p}
		}
		if err != nil {
			return fmt.Errorf("link shared %s: %w", l.p, err)
		}
		if fi.IsDir() {
			return fmt.Errorf("link shared %s: shared file %s is a directory", l.p, src)
		}
	}
	for _, p := range seeds {
		if err := r.seedSharedFile(root, sha, p); err != nil {
			return fmt.Errorf("link shared %s: seed it from the release: %w", p, err)
		}
	}
	for _, l := range links {
		if !l.dir {
			continue
		}
		made, err := r.makeSharedDir(sha, l.p)
		if err != nil {
			return fmt.Errorf("link shared %s: %w", l.p, err)
		}
		if made {
			if err := r.seedSharedDir(root, l.p); err != nil {
				return fmt.Errorf("link shared %s: seed it from the release: %w", l.p, err)
			}
		}
	}

	for _, l := range links {
		if err := r.link(root, sha, l.p); err != nil {
			return fmt.Errorf("link shared %s: %w", l.p, err)
		}
	}
	return nil
}

// link makes p in the release (root) a relative symlink to shared/<p>.
func (r *Releaser) link(root *os.Root, sha, p string) error {
	target, err := filepath.Rel(filepath.Dir(filepath.Join(r.Dir(sha), p)), filepath.Join(r.sharedDir(), p))
	if err != nil {
		return err
	}
	// Parents must be real directories of the release: a link placed through a symlink
	// would land elsewhere and its relative target would be wrong.
	if dir := filepath.Dir(p); dir != "." {
		cur := ""
		for c := range strings.SplitSeq(dir, string(filepath.Separator)) {
			cur = filepath.Join(cur, c)
			fi, err := root.Lstat(cur)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				if err := root.Mkdir(cur, 0o755); err != nil {
					return err
				}
			case err != nil:
				return err
			case !fi.IsDir():
				return fmt.Errorf("%s is not a directory in the release", cur)
			}
		}
	}
	fi, err := root.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		if fi.Mode()&fs.ModeSymlink != 0 {
			if t, err := root.Readlink(p); err == nil && t == target {
				return nil
			}
		}
		if err := removeAll(root, p); err != nil {
			return err
		}
	}
	return root.Symlink(target, p)
}

// localPath cleans p and reports whether it is a relative path that stays below its base
// and is not the base itself.
func localPath(p string) (string, bool) {
	if p == "" || filepath.IsAbs(p) {
		return "", false
	}
	c := filepath.Clean(p)
	return c, c != "." && filepath.IsLocal(c)
}

// createdDir is a shared dir LinkShared created for a release that has not gone live.
type createdDir struct {
	// parent is the directory it was created in, held open, so that its removal goes
	// where its creation went, whatever the build did to the path in between (a symlink
	// put in place of a parent leads nowhere).
	parent *os.Root
	name   string // its name in parent
	path   string // its path under shared/, for messages
}

// created is what LinkShared created in shared/ for one release being built.
type created struct {
	sha  string
	dirs []createdDir
}

// makeSharedDir makes the shared dir p (relative to shared/) if it is missing, with its
// missing parents, and remembers the topmost one it made for sha (see LinkShared). made
// says whether it made p.
func (r *Releaser) makeSharedDir(sha, p string) (made bool, err error) {
	src := filepath.Join(r.sharedDir(), p)
	fi, err := os.Stat(src)
	if err == nil {
		if !fi.IsDir() {
			return false, fmt.Errorf("shared dir %s is not a directory", src)
		}
		return false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	// The topmost missing element: made here, removed by Discard with all below it.
	top := ""
	for c := range strings.SplitSeq(p, string(filepath.Separator)) {
		top = filepath.Join(top, c)
		if _, err := os.Stat(filepath.Join(r.sharedDir(), top)); errors.Is(err, fs.ErrNotExist) {
			break
		} else if err != nil {
			return false, err
		}
	}
	parent, err := os.OpenRoot(filepath.Join(r.sharedDir(), filepath.Dir(top)))
	if err != nil {
		return false, err
	}
	rest, err := filepath.Rel(filepath.Dir(top), p)
	if err == nil {
		err = parent.MkdirAll(rest, 0o755)
	}
	if err != nil {
		parent.Close() // a directory: closing it loses nothing
		return false, err
	}
	r.remember(sha, createdDir{parent: parent, name: filepath.Base(top), path: top})
	return true, nil
}

// remember records c as made in shared/ for sha (see LinkShared), taking its parent root.
func (r *Releaser) remember(sha string, c createdDir) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.created != nil && r.created.sha != sha {
		// A deploy of another release ended without Discard: its dirs are no longer
		// this deploy's to remove.
		r.forgetCreatedLocked()
	}
	if r.created == nil {
		r.created = &created{sha: sha}
	}
	r.created.dirs = append(r.created.dirs, c)
}

// isRegularIn reports whether root holds a regular file at p (not through a symlink).
func isRegularIn(root *os.Root, p string) bool {
	fi, err := root.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// seedSharedFile copies the file the release committed at p into shared/, which lacks it
// (seed_shared_files), made writable by its owner, and remembers it for sha like a dir
// LinkShared made: a release that fails takes its seed with it. Missing parents are made
// the same way. An existing shared file is never overwritten (O_EXCL).
func (r *Releaser) seedSharedFile(release *os.Root, sha, p string) error {
	if dir := filepath.Dir(p); dir != "." {
		if _, err := r.makeSharedDir(sha, dir); err != nil {
			return err
		}
	}
	parent, err := os.OpenRoot(filepath.Join(r.sharedDir(), filepath.Dir(p)))
	if err != nil {
		return err
	}
	sub, err := release.OpenRoot(filepath.Dir(p))
	if err != nil {
		parent.Close() // a directory: closing it loses nothing
		return err
	}
	defer sub.Close() // a directory: closing it loses nothing
	if _, err := copyFileRoots(sub, parent, filepath.Base(p)); err != nil {
		parent.Close() // a directory: closing it loses nothing
		return err
	}
	r.remember(sha, createdDir{parent: parent, name: filepath.Base(p), path: p})
	return nil
}

// seedSharedDir copies what the release has committed at p (a directory), if anything, into
// the shared dir p that LinkShared just made: the first deploy of a shared dir starts from
// the committed skeleton (storage/framework/cache/ and the like), as Capistrano and Deployer
// do. A shared dir that existed is never seeded. Files keep their mode, made writable by
// their owner (link mode checks them out read-only); symlinks are copied as they are, never
// followed.
func (r *Releaser) seedSharedDir(release *os.Root, p string) error {
	fi, err := release.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.IsDir()) {
		return nil // nothing committed there, or not a directory: the link replaces it
	}
	if err != nil {
		return err
	}
	shared, err := os.OpenRoot(filepath.Join(r.sharedDir(), p))
	if err != nil {
		return err
	}
	defer shared.Close() // a directory: closing it loses nothing
	sub, err := release.OpenRoot(p)
	if err != nil {
		return err
	}
	defer sub.Close()                                         // a directory: closing it loses nothing
	_, err = copyTree(context.Background(), sub, shared, ".") // "." is shared/p, made already
	return err
}

// removeCreated removes the shared dirs LinkShared created for sha, if sha is the release
// they were created for, durably, and forgets them. Dirs already gone count as removed.
func (r *Releaser) removeCreated(sha string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removeCreatedLocked(sha)
}

// removeCreatedLocked is removeCreated for a caller holding r.mu.
func (r *Releaser) removeCreatedLocked(sha string) error {
	if r.created == nil || r.created.sha != sha {
		return nil
	}
	var errs []error
	var left []createdDir
	for _, d := range r.created.dirs {
		err := removeAll(d.parent, d.name)
		if err == nil {
			err = syncRootDir(d.parent)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove shared dir %s: %w", d.path, err))
			left = append(left, d)
			continue
		}
		r.log.Info().Str("sha", sha).Str("dir", d.path).Msg("removed the shared dir made for a release that did not go live")
		d.parent.Close() // a directory: closing it loses nothing
	}
	r.created.dirs = left
	if len(left) == 0 {
		r.created = nil
	}
	return errors.Join(errs...)
}

// forgetCreatedLocked forgets the shared dirs LinkShared created, leaving them in place:
// a release went live, and may use them. The caller holds r.mu.
func (r *Releaser) forgetCreatedLocked() {
	if r.created == nil {
		return
	}
	for _, d := range r.created.dirs {
		d.parent.Close() // a directory: closing it loses nothing
	}
	r.created = nil
}

// syncRootDir fsyncs root's directory, which makes the removal of its entries durable.
func syncRootDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
