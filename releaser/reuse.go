package releaser

import (
	"errors"
	"io"
	"io/fs"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"golang.org/x/sys/unix"
)

// Writing only what changed: a new release takes each file that the live release holds
// unchanged (same path, same blob, same mode) from the live release instead of inflating
// its blob again.
//
// By default it copies it with copy_file_range(2), which shares the data (reflink) on XFS
// and btrfs and copies in the kernel elsewhere; a release never shares a writable inode
// with another, so a build that appends to a file changes only its own. A file is copied
// only if no build touched it since Materialize wrote it: it is a regular file (not a
// symlink, opened with O_NOFOLLOW), with one link, and its ctime (which no process can set
// back) is not after the moment Materialize finished. It is checked again after the copy.
//
// With LinkFiles it hard-links it: every file Materialize writes is read-only, so the
// inodes releases share are read-only ones, and a file is linked only if it is still a
// regular file with exactly its read-only mode and an mtime (which every write moves) not
// after the moment Materialize finished the release it is in. ctime cannot tell here: a
// link made or removed by a later release or a prune moves it. The link is made by name,
// then checked to be the inode that was checked.
//
// Anything else is inflated from the object store as usual.

// clockGuard separates the end of a checkout from the first write a build can make: file
// ctimes come from the kernel's coarse clock, which may lag the time Materialize records
// by a tick (at most 10 ms at HZ=100). After the guard, every write gets a later ctime.
const clockGuard = 20 * time.Millisecond

// base is the live release a new one copies its unchanged files from.
type base struct {
	dir     *dir                        // releases/<live>, for the walk's top frame
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
	d, err := openDir(unix.AT_FDCWD, r.Dir(live))
	if err != nil {
		return nil
	}
	r.log.Debug().Str("base", live).Int("files", len(files)).Msg("reusing unchanged files from the live release")
	return &base{dir: d, files: files, written: rec.Written}
}

// top returns the base's top directory for the walk to hold (released with the walk's
// frame), or nil.
func (b *base) top() *dir {
	if b == nil {
		return nil
	}
	return b.dir
}

// has reports whether the base's tree had name with e's blob and mode.
func (b *base) has(name string, e object.TreeEntry) bool {
	if b == nil {
		return false
	}
	old, ok := b.files[name]
	return ok && old.Hash == e.Hash && old.Mode == e.Mode
}

// reuse writes j's file from the base, which had it with the same blob and mode: linked
// (link) or copied, if the base still holds it untouched. It reports whether it did; false
// with a nil error means: inflate it.
func (b *base) reuse(j fileJob, link, exact bool) (bool, error) {
	// O_NOFOLLOW: a symlink a build left in the base's place is no file to reuse.
	src, err := unix.Openat(j.src.fd, j.leaf, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer unix.Close(src) // read only: closing it loses nothing
	if link {
		return b.linkTo(j, src)
	}
	return b.copyTo(j, src, exact)
}

// undo removes the entry a failed reuse made: whatever went wrong, the object store still
// has the blob.
func undo(j fileJob, err error) (bool, error) {
	if rerr := unix.Unlinkat(j.dst.fd, j.leaf, 0); rerr != nil {
		return false, errors.Join(err, rerr)
	}
	return false, nil
}

// copyTo copies j's file from src, the base's, if it is untouched.
func (b *base) copyTo(j fileJob, src int, exact bool) (bool, error) {
	size, ok := b.untouched(src)
	if !ok {
		return false, nil
	}
	// O_EXCL: never write through, or over, anything that exists already.
	dst, err := unix.Openat(j.dst.fd, j.leaf, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(j.perm))
	if err != nil {
		return false, err
	}
	n, err := copyRange(dst, src, size)
	if err == nil && exact {
		err = unix.Fchmod(dst, uint32(j.perm))
	}
	if cerr := unix.Close(dst); err == nil {
		err = cerr
	}
	if err == nil {
		if after, ok := b.untouched(src); n != size || !ok || after != size {
			err = errChanged
		}
	}
	if err != nil {
		return undo(j, err)
	}
	return true, nil
}

// copyRange copies size bytes from src to dst with copy_file_range(2): a reflink where
// the filesystem can, a copy in the kernel elsewhere.
func copyRange(dst, src int, size int64) (int64, error) {
	var n int64
	for n < size {
		m, err := unix.CopyFileRange(src, nil, dst, nil, int(min(size-n, 1<<30)), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			break // the file shrank: untouched says so
		}
		n += int64(m)
	}
	return n, nil
}

// linkTo hard-links j's file from the base, whose open file is src, if it is untouched and
// read-only.
func (b *base) linkTo(j fileJob, src int) (bool, error) {
	var st unix.Stat_t
	if !b.readOnly(src, j.perm, &st) {
		return false, nil
	}
	// linkat without AT_SYMLINK_FOLLOW links whatever has the name now; the new entry is
	// checked to be the inode just checked, and that inode to be unchanged.
	if err := unix.Linkat(j.src.fd, j.leaf, j.dst.fd, j.leaf, 0); err != nil {
		return false, nil
	}
	var got, after unix.Stat_t
	err := unix.Fstatat(j.dst.fd, j.leaf, &got, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && (got.Dev != st.Dev || got.Ino != st.Ino || !b.readOnly(src, j.perm, &after) || after.Mtim != st.Mtim) {
		err = errChanged
	}
	if err != nil {
		return undo(j, err)
	}
	return true, nil
}

// readOnly reports whether fd is a regular file of exactly the read-only mode perm, not
// written since the base was (see the comment at the top), and fills st.
func (b *base) readOnly(fd int, perm fs.FileMode, st *unix.Stat_t) bool {
	if err := unix.Fstat(fd, st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o7777 != uint32(perm) {
		return false
	}
	return !time.Unix(st.Mtim.Unix()).After(b.written)
}

// errChanged is a base file that changed while it was copied.
var errChanged = errors.New("changed while copied")

// untouched reports whether fd is still as Materialize wrote it (see the comment at the
// top), and its size.
func (b *base) untouched(fd int) (int64, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		return 0, false
	}
	ctime := time.Unix(st.Ctim.Unix())
	return st.Size, !ctime.After(b.written)
}
