package releaser

import (
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
	for _, l := range links {
		if l.dir {
			continue
		}
		src := filepath.Join(r.sharedDir(), l.p)
		fi, err := os.Stat(src)
		if errors.Is(err, fs.ErrNotExist) {
			return &MissingSharedError{Path: src}
		}
		if err != nil {
			return fmt.Errorf("link shared %s: %w", l.p, err)
		}
		if fi.IsDir() {
			return fmt.Errorf("link shared %s: shared file %s is a directory", l.p, src)
		}
	}
	for _, l := range links {
		if !l.dir {
			continue
		}
		src := filepath.Join(r.sharedDir(), l.p)
		fi, err := os.Stat(src)
		if errors.Is(err, fs.ErrNotExist) {
			err = os.MkdirAll(src, 0o755)
		} else if err == nil && !fi.IsDir() {
			err = fmt.Errorf("shared dir %s is not a directory", src)
		}
		if err != nil {
			return fmt.Errorf("link shared %s: %w", l.p, err)
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
