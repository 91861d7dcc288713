package releaser

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
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
	clean, err := copyArgs(from, to, dir)
	if err != nil {
		return stats, false, fmt.Errorf("copy: %w", err)
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
	stats, err = copyTree(context.Background(), src, dst, clean)
	if err != nil {
		return stats, false, fmt.Errorf("copy %s from %s: %w", clean, from[:7], err)
	}
	return stats, true, nil
}

// copyArgs checks the arguments of CopyDir and TakeSpare: two releases and a relative path
// inside them, which it returns cleaned.
func copyArgs(from, to, dir string) (string, error) {
	for _, sha := range []string{from, to} {
		if err := checkSHA(sha); err != nil {
			return "", fmt.Errorf("%s: %w", dir, err)
		}
	}
	clean, ok := localPath(dir)
	if !ok {
		return "", fmt.Errorf("%q: not a relative path inside the release", dir)
	}
	return clean, nil
}

// copyTree copies dir of src (a directory; "." for the root itself) to the same path of
// dst: directories with their modes made writable by their owner (one that exists already
// is kept), regular files with copyFileRoots, symlinks as they are, never followed; devices,
// fifos and sockets are skipped. It is what copy_dirs and the seeding of a shared dir share.
//
// The walk makes the directories and symlinks in order; the regular files of each directory
// go to a few workers, which copy them through roots opened on that directory on both sides,
// so that a file deep in node_modules costs one open each side, not one per path component.
// On two cores that makes it faster than cp -a (BenchmarkCopyDir).
func copyTree(ctx context.Context, src, dst *os.Root, dir string) (CopyStats, error) {
	c := &treeCopy{ctx: ctx, src: src, dst: dst, jobs: make(chan []string)}
	workers := min(2*runtime.GOMAXPROCS(0), 8)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for job := range c.jobs {
				c.fail(c.copyFiles(job[0], job[1:]))
			}
		}()
	}
	c.fail(c.walk(dir, true))
	close(c.jobs)
	wg.Wait()
	return CopyStats{Files: int(c.files.Load()), Bytes: c.bytes.Load()}, c.err
}

// treeCopy is one copyTree: what its walk and workers share.
type treeCopy struct {
	ctx      context.Context // ends the copy early (an error)
	src, dst *os.Root
	jobs     chan []string // a directory, then the names of its regular files
	files    atomic.Int64
	bytes    atomic.Int64
	mu       sync.Mutex
	err      error // the first error; the walk stops when it is set
}

func (c *treeCopy) fail(err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

func (c *treeCopy) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// walk makes directory name in dst (top: it may exist already), copies its symlinks, hands
// its regular files to the workers and goes down into its subdirectories.
func (c *treeCopy) walk(name string, top bool) error {
	fi, err := c.src.Lstat(name)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", name)
	}
	if err := c.dst.Mkdir(name, fi.Mode().Perm()|0o700); err != nil && !(top && errors.Is(err, fs.ErrExist)) {
		return err
	}
	entries, err := fs.ReadDir(c.src.FS(), name)
	if err != nil {
		return err
	}
	files := []string{name}
	var dirs []string
	for _, e := range entries {
		p := path.Join(name, e.Name())
		switch {
		case e.IsDir():
			dirs = append(dirs, p)
		case e.Type()&fs.ModeSymlink != 0:
			target, err := c.src.Readlink(p)
			if err != nil {
				return err
			}
			if err := c.dst.Symlink(target, p); err != nil {
				return err
			}
			c.files.Add(1)
		case e.Type().IsRegular():
			files = append(files, e.Name())
		}
	}
	if len(files) > 1 {
		c.jobs <- files
	}
	for _, d := range dirs {
		if c.failed() {
			return nil
		}
		if err := c.ctx.Err(); err != nil {
			return err
		}
		if err := c.walk(d, false); err != nil {
			return err
		}
	}
	return nil
}

// copyFiles copies the regular files names of directory dir.
func (c *treeCopy) copyFiles(dir string, names []string) error {
	if c.failed() {
		return nil
	}
	from, err := c.src.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer from.Close() // a directory: closing it loses nothing
	to, err := c.dst.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer to.Close() // a directory: closing it loses nothing
	for _, n := range names {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		size, err := copyFileRoots(from, to, n)
		if err != nil {
			return fmt.Errorf("%s: %w", path.Join(dir, n), err)
		}
		c.files.Add(1)
		c.bytes.Add(size)
	}
	return nil
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
