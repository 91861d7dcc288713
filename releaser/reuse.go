package releaser

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
)

// Writing only what changed: a new release copies each file that the live release holds
// unchanged (same path, same blob, same mode) from the live release instead of inflating
// its blob again. The copy goes through copy_file_range(2), which shares the data
// (reflink) on XFS and btrfs and copies in the kernel elsewhere; a release never shares a
// writable inode with another, so a build that appends to a file changes only its own.
//
// A file is copied only if no build touched it since Materialize wrote it: it is a regular
// file (not a symlink, opened with O_NOFOLLOW), of its blob's size, with one link, and its
// ctime (which no process can set back) is not after the moment Materialize finished. It is
// checked again after the copy. Anything else is inflated from the object store as usual.

// clockGuard separates the end of a checkout from the first write a build can make: file
// ctimes come from the kernel's coarse clock, which may lag the time Materialize records
// by a tick (at most 10 ms at HZ=100). After the guard, every write gets a later ctime.
const clockGuard = 20 * time.Millisecond

// base is the live release a new one copies its unchanged files from.
type base struct {
	root    *os.Root
	files   map[string]object.TreeEntry // regular and executable files of its tree, by path
	written time.Time
}

// openBase returns the live release as a base for writing sha, or nil if there is none
// fit to copy from (no live release, sha itself, a release written before slipway recorded
// when, or one whose tree cannot be read). A nil base only costs speed.
func (r *Releaser) openBase(objs storer.EncodedObjectStorer, sha string) *base {
	live, err := r.Current()
	if err != nil || live == "" || live == sha {
		return nil
	}
	st, _, err := r.loadState()
	if err != nil {
		return nil
	}
	rec := st.Releases[live]
	if rec == nil || rec.Written.IsZero() {
		return nil
	}
	commit, err := object.GetCommit(objs, plumbing.NewHash(live))
	if err != nil {
		return nil
	}
	tree, err := commit.Tree()
	if err != nil {
		return nil
	}
	files := map[string]object.TreeEntry{}
	walker := object.NewTreeWalker(tree, true, nil)
	defer walker.Close()
	for {
		name, e, err := walker.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil
		}
		if e.Mode == filemode.Regular || e.Mode == filemode.Executable {
			files[name] = e
		}
	}
	root, err := os.OpenRoot(r.Dir(live))
	if err != nil {
		return nil
	}
	r.log.Debug().Str("base", live).Int("files", len(files)).Msg("copying unchanged files from the live release")
	return &base{root: root, files: files, written: rec.Written}
}

func (b *base) close() {
	if b != nil {
		b.root.Close()
	}
}

// copyTo writes name into dst from the base if the base holds it untouched with the same
// blob and mode. It reports whether it did; false with a nil error means: inflate it.
func (b *base) copyTo(dst *os.Root, name string, e object.TreeEntry, size int64, perm fs.FileMode, exact bool) (bool, error) {
	if b == nil {
		return false, nil
	}
	old, ok := b.files[name]
	if !ok || old.Hash != e.Hash || old.Mode != e.Mode {
		return false, nil
	}
	src, err := b.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return false, nil
	}
	defer src.Close()
	if !b.untouched(src, size) {
		return false, nil
	}
	// O_EXCL: never write through, or over, anything that exists already.
	f, err := dst.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return false, err
	}
	n, err := io.Copy(f, src) // copy_file_range(2): a reflink where the filesystem can
	if err == nil && exact {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && (n != size || !b.untouched(src, size)) {
		err = errChanged
	}
	if err != nil {
		// Whatever went wrong with the copy, the object store still has the blob.
		if rerr := dst.Remove(name); rerr != nil {
			return false, errors.Join(err, rerr)
		}
		return false, nil
	}
	return true, nil
}

// errChanged is a base file that changed while it was copied.
var errChanged = errors.New("changed while copied")

// untouched reports whether f is still as Materialize wrote it: see the comment at the top.
func (b *base) untouched(f *os.File, size int64) bool {
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != size {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Nlink != 1 {
		return false
	}
	ctime := time.Unix(st.Ctim.Unix())
	return !ctime.After(b.written)
}
