package releaser

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// dir is an open directory, of the release being written or of the base release. A
// release's entries are all created relative to one: with mkdirat, symlinkat, and openat
// with O_CREAT|O_EXCL|O_NOFOLLOW, none of which follows a symlink in the last element, from
// a directory opened with O_NOFOLLOW|O_DIRECTORY that the writer made itself. So no entry
// of a tree, however crafted, leads a write outside the release, and resolving each entry
// costs one system call instead of a walk down its path.
//
// The walk and the writers share a dir: the walk holds it while it is in it, each queued
// file while it is written; the last to release it closes it. So at most the depth of the
// tree plus the queued files hold descriptors, however many directories the tree has.
type dir struct {
	fd   int
	refs atomic.Int32
}

// openDir opens name under the directory parent (unix.AT_FDCWD: name is a path) without
// following a symlink in its last element.
func openDir(parent int, name string) (*dir, error) {
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	d := &dir{fd: fd}
	d.refs.Store(1)
	return d, nil
}

// acquire adds a holder; nil stays nil.
func (d *dir) acquire() *dir {
	if d != nil {
		d.refs.Add(1)
	}
	return d
}

// release drops a holder, and closes d after the last one.
func (d *dir) release() {
	if d != nil && d.refs.Add(-1) == 0 {
		unix.Close(d.fd) // a directory: closing it loses nothing
	}
}

// frame is a directory the walk is in: its path in the tree ("" for the top), the
// release's directory, and the base release's directory of the same path (nil if the base
// has none).
type frame struct {
	path     string
	dst, src *dir
}

func (f frame) release() {
	f.dst.release()
	f.src.release()
}
