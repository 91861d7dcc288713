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
// With LinkFiles it hard-links it, and releases share that inode. What link mode trusts,
// plainly, is the inode's ctime, and nothing the file's owner can set. Every file
// Materialize writes is read-only, but its owner (the server's user, which builds run as)
// can make it writable, change it, put the mode back and set its mtime back; every one of
// those steps moves its ctime, which only the kernel sets, from its clock. So Materialize
// records every file's inode and that inode's ctime right after its own last operation on
// it, in the release's inode record (inodes.go), and a file of the live release is linked
// only if it is still a regular file of exactly its read-only mode, and its inode and
// ctime are the ones the live release's record holds. The link is made by name, then
// checked to be that inode; its ctime after the link goes into the new release's record.
//
// Making or removing a name of an inode moves its ctime too. slipway accounts for its own
// such operations: Materialize's links, and the removals of Discard and Prune, which check
// each inode untouched first and then write its new ctime into the live release's record
// (see keeper). Any other (a crash before a record is written, Recover's removals, Hold, a
// build that removes or renames a checked-out file) only leaves the inode untrusted: the
// next release inflates that file again, which costs speed, never safety. A record that is
// missing, cut short or damaged trusts nothing.
//
// A build can still change an inode it shares with the live release (chmod is not confined,
// and writing through a name in its own release is allowed), and with it the live
// release's file: CheckLinked finds that before the swap, by the same ctime, and fails the
// deploy with the path; that inode's ctime then matches no record, so nothing links it
// again. Link mode therefore trusts that the clock is not stepped back to a recorded ctime,
// that no process of the server's user other than slipway and the builds it runs (which
// have ended when CheckLinked runs) changes a release's files (run the app as another
// user), and that builds cannot write .slipway/, where the records are.
//
// Anything else is inflated from the object store as usual.

// clockGuard separates the end of a checkout from the first write a build can make: file
// ctimes come from the kernel's coarse clock, which may lag the time Materialize records
// by a tick (at most 10 ms at HZ=100). After the guard, every write gets a later ctime.
const clockGuard = 20 * time.Millisecond

// base is the live release a new one copies (or links) its unchanged files from.
type base struct {
	dir     *dir                // releases/<live>, for the walk's top frame
	sha     string              // the live release
	files   map[string]baseFile // regular and executable files of its tree, by path
	link    bool                // LinkFiles: only files its inode record trusts are reused
	written time.Time           // when Materialize finished it (copies only)
}

// baseFile is a file of the base's tree and, with LinkFiles, what its inode record holds.
type baseFile struct {
	blob     plumbing.Hash
	mode     filemode.FileMode
	dev, ino uint64 // the inode recorded; ino 0: none, the file is not to be linked
	ctime    int64  // its ctime after slipway's last operation on it, in nanoseconds
}

// openBase returns the live release as a base for writing sha, or nil if there is none
// fit to copy from (no live release, sha itself, one whose tree cannot be read, and for
// copies a release written before slipway recorded when, for links one without an intact
// inode record). A nil base only costs speed.
func (r *Releaser) openBase(objs storer.EncodedObjectStorer, sha string) *base {
	live, err := r.Current()
	if err != nil || live == "" || live == sha {
		return nil
	}
	b := &base{sha: live, link: r.linkFiles, files: map[string]baseFile{}}
	if !b.link {
		st, _, err := r.loadState()
		if err != nil {
			return nil
		}
		rec := st.Releases[live]
		if rec == nil || rec.Written.IsZero() {
			return nil
		}
		b.written = rec.Written
	}
	commit, err := object.GetCommit(objs, plumbing.NewHash(live))
	if err != nil {
		return nil
	}
	tree, err := commit.Tree()
	if err != nil {
		return nil
	}
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
			b.files[name] = baseFile{blob: e.Hash, mode: e.Mode}
		}
	}
	if b.link {
		// eachInode checks the record whole before it passes on one entry; any error
		// leaves no base, whatever was merged.
		_, err := r.eachInode(live, func(in inode) error {
			if f, ok := b.files[in.path]; ok && f.blob == in.blob && f.mode == in.mode() {
				f.dev, f.ino, f.ctime = in.dev, in.ino, in.ctime
				b.files[in.path] = f
			}
			return nil
		})
		if err != nil {
			r.log.Debug().Err(err).Str("base", live).Msg("no file of the live release is trusted for linking")
			return nil
		}
	}
	if b.dir, err = openDir(unix.AT_FDCWD, r.Dir(live)); err != nil {
		return nil
	}
	r.log.Debug().Str("base", live).Int("files", len(b.files)).Msg("reusing unchanged files from the live release")
	return b
}

// top returns the base's top directory for the walk to hold (released with the walk's
// frame), or nil.
func (b *base) top() *dir {
	if b == nil {
		return nil
	}
	return b.dir
}

// has reports whether the base's tree had name with e's blob and mode, and for links,
// whether its inode record holds it.
func (b *base) has(name string, e object.TreeEntry) bool {
	if b == nil {
		return false
	}
	old, ok := b.files[name]
	return ok && old.blob == e.Hash && old.mode == e.Mode && (!b.link || old.ino != 0)
}

// reuse writes j's file from the base, which had it with the same blob and mode: linked
// (link) or copied, if the base still holds it untouched. It reports whether it did; false
// with a nil error means: inflate it. A link fills st with the new entry's stat.
func (b *base) reuse(j fileJob, link, exact bool, st *unix.Stat_t) (bool, error) {
	// O_NOFOLLOW: a symlink a build left in the base's place is no file to reuse.
	src, err := unix.Openat(j.src.fd, j.leaf, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer unix.Close(src) // read only: closing it loses nothing
	if link {
		return b.linkTo(j, src, st)
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

// linkTo hard-links j's file from the base, whose open file is src, if its inode record
// trusts it (see the comment at the top), and fills got with the new entry's stat.
func (b *base) linkTo(j fileJob, src int, got *unix.Stat_t) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil || !b.files[j.name].trusted(&st, j.perm) {
		return false, nil
	}
	// linkat without AT_SYMLINK_FOLLOW links whatever has the name now; the new entry is
	// checked to be the inode just checked, still of its mode.
	if err := unix.Linkat(j.src.fd, j.leaf, j.dst.fd, j.leaf, 0); err != nil {
		return false, nil
	}
	err := unix.Fstatat(j.dst.fd, j.leaf, got, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && (got.Dev != st.Dev || got.Ino != st.Ino || got.Mode != st.Mode) {
		err = errChanged
	}
	if err != nil {
		return undo(j, err)
	}
	return true, nil
}

// trusted reports whether st is a regular file of exactly the read-only mode perm, and the
// inode f's record holds with the ctime it holds: untouched since slipway last wrote,
// linked or unlinked it.
func (f baseFile) trusted(st *unix.Stat_t, perm fs.FileMode) bool {
	return f.ino != 0 && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o7777 == uint32(perm) &&
		uint64(st.Dev) == f.dev && st.Ino == f.ino && ctimeNs(st) == f.ctime
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
