package releaser

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Reusing what the last build made (SPEC 9, copy_dirs): a directory of the live release
// (node_modules, vendor) is copied into the new release before its build, so that the
// package manager only does what changed.

// CopyStats is what CopyDir copied.
type CopyStats struct {
	Files int   // regular files and symlinks
	Bytes int64 // of the regular files
}

// CopyDir copies the directory dir (a path inside a release) of release from into release
// to, if from has it as a real directory and to has nothing at that path (a path the new
// release has committed, or links from shared/, is left alone: copied reports false). Files
// are copied with copy_file_range(2), a reflink where the filesystem can, never hard-linked
// (package managers rewrite files in place); their modes are kept, made writable by their
// owner; symlinks are copied as they are, never followed. Missing parents of dir are made
// in to. Everything goes through roots of the two releases: nothing outside them is read or
// written, whatever their trees hold.
func (r *Releaser) CopyDir(from, to, dir string) (stats CopyStats, copied bool, err error) {
	if err := checkSHA(from); err != nil {
		return stats, false, fmt.Errorf("copy %s: %w", dir, err)
	}
	if err := checkSHA(to); err != nil {
		return stats, false, fmt.Errorf("copy %s: %w", dir, err)
	}
	clean, ok := localPath(dir)
	if !ok {
		return stats, false, fmt.Errorf("copy %q: not a relative path inside the release", dir)
	}
	src, err := os.OpenRoot(r.Dir(from))
	if err != nil {
		return stats, false, fmt.Errorf("copy %s: %w", clean, err)
	}
	defer src.Close() // a directory: closing it loses nothing
	dst, err := os.OpenRoot(r.Dir(to))
	if err != nil {
		return stats, false, fmt.Errorf("copy %s: %w", clean, err)
	}
	defer dst.Close() // a directory: closing it loses nothing
	if fi, err := src.Lstat(clean); err != nil || !fi.IsDir() {
		return stats, false, nil // the live release has none to give
	}
	if _, err := dst.Lstat(clean); err == nil {
		return stats, false, nil // the new release has its own
	} else if !errors.Is(err, fs.ErrNotExist) {
		// A parent that is not a directory (a committed file, a symlink): left alone too.
		return stats, false, nil
	}
	if dir := filepath.Dir(clean); dir != "." {
		if err := dst.MkdirAll(dir, 0o755); err != nil {
			return stats, false, fmt.Errorf("copy %s: %w", clean, err)
		}
	}
	stats, err = copyTree(src, dst, clean)
	if err != nil {
		return stats, false, fmt.Errorf("copy %s from %s: %w", clean, from[:7], err)
	}
	return stats, true, nil
}

// copyTree copies dir of src (a directory; "." for the root itself) to the same path of
// dst: directories with their modes made writable by their owner (one that exists already
// is kept), regular files with copyFileRoots, symlinks as they are, never followed; devices,
// fifos and sockets are skipped. It is what copy_dirs and the seeding of a shared dir share.
func copyTree(src, dst *os.Root, dir string) (CopyStats, error) {
	var stats CopyStats
	err := fs.WalkDir(src.FS(), dir, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if err := dst.Mkdir(name, fi.Mode().Perm()|0o700); err != nil && !(name == dir && errors.Is(err, fs.ErrExist)) {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := src.Readlink(name)
			if err != nil {
				return err
			}
			stats.Files++
			return dst.Symlink(target, name)
		case d.Type().IsRegular():
			n, err := copyFileRoots(src, dst, name)
			stats.Files++
			stats.Bytes += n
			return err
		}
		return nil
	})
	return stats, err
}

// copyFileRoots copies the regular file name of one root to a new file of the other, never
// over an existing one, with its mode made writable by its owner, and returns its size. It
// uses copy_file_range (a reflink where the filesystem can), or a plain copy where the kernel
// cannot copy between the two files' filesystems.
func copyFileRoots(from, to *os.Root, name string) (int64, error) {
	in, err := from.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer in.Close() // read only: closing it loses nothing
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	out, err := to.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fi.Mode().Perm()|0o200)
	if err != nil {
		return 0, err
	}
	n, err := copyRange(int(out.Fd()), int(in.Fd()), fi.Size())
	if n == 0 && (errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EINVAL) ||
		errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EOPNOTSUPP)) {
		n, err = io.Copy(out, in)
	}
	if err == nil && n < fi.Size() {
		err = fmt.Errorf("%s: shrank while it was copied", name)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// SameFiles reports whether releases a and b hold the same content at every path of files
// (a missing file counts as a content: both missing is the same). It is what a copied
// directory's key compares (copy_dirs' key): package-lock.json, composer.lock.
func (r *Releaser) SameFiles(a, b string, files []string) (bool, error) {
	for _, f := range files {
		ha, err := r.fileSum(a, f)
		if err != nil {
			return false, err
		}
		hb, err := r.fileSum(b, f)
		if err != nil {
			return false, err
		}
		if ha != hb {
			return false, nil
		}
	}
	return true, nil
}

// fileSum is the sha256 of file f of release sha, "" if it has none.
func (r *Releaser) fileSum(sha, f string) (string, error) {
	clean, ok := localPath(f)
	if !ok {
		return "", fmt.Errorf("key %q: not a relative path inside the release", f)
	}
	root, err := os.OpenRoot(r.Dir(sha))
	if err != nil {
		return "", err
	}
	defer root.Close() // a directory: closing it loses nothing
	in, err := root.OpenFile(clean, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer in.Close() // read only: closing it loses nothing
	h := sha256.New()
	if _, err := io.Copy(h, in); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}
