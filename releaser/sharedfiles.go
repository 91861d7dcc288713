package releaser

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// The shared files over SSH (SPEC 8: `shared ls|get|put|rm`): every path is relative, stays
// inside shared/, and goes through no symlink, whatever shared/ holds.

// MaxSharedPut bounds a file written with SharedPut.
const MaxSharedPut = 16 << 20

// maxSharedList bounds what SharedList walks.
const maxSharedList = 10000

// SharedFile is one entry of shared/.
type SharedFile struct {
	Path string      `json:"path"`
	Type string      `json:"type"` // "file", "dir", "symlink"
	Size int64       `json:"size"`
	Mode fs.FileMode `json:"mode"`
}

// sharedPath checks p and returns it clean: relative, inside shared/, through no symlink
// (every parent that exists is a real directory).
func (r *Releaser) sharedPath(p string) (string, error) {
	clean, ok := localPath(p)
	if !ok {
		return "", fmt.Errorf("%q is not a relative path inside shared/", p)
	}
	cur := r.sharedDir()
	parts := strings.Split(clean, string(filepath.Separator))
	for _, c := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", err
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("%s: %s is not a directory (a symlink is never followed)", clean, filepath.Join(parts[:len(parts)-1]...))
		}
	}
	return clean, nil
}

// SharedList lists shared/, symlinks as they are.
func (r *Releaser) SharedList() ([]SharedFile, error) {
	var out []SharedFile
	root := r.sharedDir()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				return fs.SkipAll
			}
			return err
		}
		if p == root {
			return nil
		}
		if len(out) >= maxSharedList {
			return fmt.Errorf("shared/ holds more than %d entries", maxSharedList)
		}
		rel, _ := filepath.Rel(root, p) // p is under root: cannot fail
		fi, err := d.Info()
		if err != nil {
			return nil // gone meanwhile
		}
		f := SharedFile{Path: rel, Size: fi.Size(), Mode: fi.Mode().Perm(), Type: "file"}
		switch {
		case d.IsDir():
			f.Type, f.Size = "dir", 0
		case d.Type()&fs.ModeSymlink != 0:
			f.Type = "symlink"
		}
		out = append(out, f)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list shared: %w", err)
	}
	return out, nil
}

// SharedOpen opens the regular file p of shared/ for reading, never through a symlink.
func (r *Releaser) SharedOpen(p string) (*os.File, error) {
	clean, err := r.sharedPath(p)
	if err != nil {
		return nil, err
	}
	// The root keeps even a path raced into a symlink meanwhile inside shared/.
	root, err := os.OpenRoot(r.sharedDir())
	if err != nil {
		return nil, fmt.Errorf("shared %s: %w", clean, err)
	}
	defer root.Close() // a directory: closing it loses nothing; f stays open
	f, err := root.OpenFile(clean, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("shared %s: %w", clean, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close() // read only: closing it loses nothing
		return nil, fmt.Errorf("shared %s: not a regular file", clean)
	}
	return f, nil
}

// SharedPut writes the file p of shared/ from r, atomically (a crash leaves the old file or
// the new one), with mode, making its missing parent directories. It returns the size and
// the sha256 of what it wrote. At most MaxSharedPut bytes are taken.
func (r *Releaser) SharedPut(p string, from io.Reader, mode fs.FileMode) (size int64, sum string, err error) {
	clean, err := r.sharedPath(p)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(io.LimitReader(from, MaxSharedPut+1))
	if err != nil {
		return 0, "", fmt.Errorf("shared %s: read: %w", clean, err)
	}
	if len(b) > MaxSharedPut {
		return 0, "", fmt.Errorf("shared %s: more than %d bytes", clean, MaxSharedPut)
	}
	if err := os.MkdirAll(r.sharedDir(), 0o755); err != nil {
		return 0, "", fmt.Errorf("shared %s: %w", clean, err)
	}
	// Everything below goes through a root of shared/: a path raced into a symlink
	// meanwhile cannot lead the write out of it.
	root, err := os.OpenRoot(r.sharedDir())
	if err != nil {
		return 0, "", fmt.Errorf("shared %s: %w", clean, err)
	}
	defer root.Close() // a directory: closing it loses nothing
	if dir := filepath.Dir(clean); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return 0, "", fmt.Errorf("shared %s: %w", clean, err)
		}
	}
	if fi, err := root.Lstat(clean); err == nil && !fi.Mode().IsRegular() {
		return 0, "", fmt.Errorf("shared %s: is a %s, not a file", clean, typeName(fi.Mode()))
	}
	if err := writeInRoot(root, clean, b, mode.Perm()); err != nil {
		return 0, "", fmt.Errorf("shared %s: %w", clean, err)
	}
	h := sha256.Sum256(b)
	return int64(len(b)), hex.EncodeToString(h[:]), nil
}

// writeInRoot writes name in root durably and atomically: a temporary file beside it,
// synced, renamed over it, and the directory synced. perm is applied exactly.
func writeInRoot(root *os.Root, name string, data []byte, perm fs.FileMode) error {
	tmp := name + ".tmp-" + randSuffix()
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		_ = root.Remove(tmp) // the write's error is the one to report
		return err
	}
	d, err := root.Open(filepath.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close() // synced below: closing it loses nothing
	return d.Sync()
}

// SharedRemove removes the file (or symlink) p of shared/; never a directory.
func (r *Releaser) SharedRemove(p string) error {
	clean, err := r.sharedPath(p)
	if err != nil {
		return err
	}
	name := filepath.Join(r.sharedDir(), clean)
	fi, err := os.Lstat(name)
	if err != nil {
		return fmt.Errorf("shared %s: %w", clean, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("shared %s: is a directory (shared_dirs hold what the app writes: not removed from here)", clean)
	}
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("shared %s: %w", clean, err)
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	}
	return "special file"
}
