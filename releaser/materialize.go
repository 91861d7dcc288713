package releaser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"golang.org/x/sys/unix"
)

// Stats is what Materialize wrote.
type Stats struct {
	Reused int   // files copied unchanged from the live release instead of inflated (counted in Files too)
	Files  int   // regular files, executables and symlinks
	Bytes  int64 // content of the regular files and executables
}

// maxSymlinkTarget bounds a symlink blob read into memory (Linux's PATH_MAX).
const maxSymlinkTarget = 4096

// Materialize writes the tree of commit sha from objs into releases/<sha>, straight from the
// object store (no worktree, no index). A leftover incomplete directory of that name is
// removed first; a release already complete is refused.
//
// Before it writes anything, it scans the whole tree (tree objects and blob headers, never
// blob content) and refuses, with a *TreeError, any entry it would not write: names git
// refuses (".", "..", ".git" in any case or disguise, control characters), names with a
// "/" or longer than 255 bytes, duplicates, trees nested more than 1000 directories deep,
// symlink targets over 4096 bytes, tree objects that do not parse. With a *LimitError, it
// refuses a tree over MaxReleaseSize or MaxReleaseFiles, or one that needs more space or
// inodes than the filesystem of releases/ has free, with a margin of 10% (files LinkFiles
// will hard-link from the live release need neither). Both errors are safe to show a
// pusher (see Reason).
//
// Regular files get 0644 and executables 0755 whatever the umask (0444 and 0555 with
// LinkFiles), directories 0755; symlinks are created with their target verbatim and never
// followed by the writer; submodules (gitlinks) become empty directories. Any entry whose
// path goes through something other than a directory the writer made (a symlink that
// leaves the release) fails the whole release.
//
// Every blob is copied to its file through its object's reader, a buffer at a time, so
// memory does not grow with a blob's size provided objs streams large objects: go-git's
// filesystem storage does for blobs above its Options.LargeObjectThreshold, and reads any
// other blob whole into memory.
//
// On any error, or when ctx is done, the partial directory is removed. progress, if not
// nil, gets a line about every second of a long write ("  wrote 12000 files, 120 MB") and
// nothing for a fast one.
func (r *Releaser) Materialize(ctx context.Context, objs storer.EncodedObjectStorer, sha string, progress io.Writer) (Stats, error) {
	if err := checkSHA(sha); err != nil {
		return Stats{}, fmt.Errorf("materialize: %w", err)
	}
	if r.IsComplete(sha) {
		return Stats{}, fmt.Errorf("materialize %s: release is already complete", sha)
	}
	stats, err := r.materialize(ctx, objs, sha, progress)
	if err != nil {
		return Stats{}, fmt.Errorf("materialize %s: %w", sha, err)
	}
	return stats, nil
}

func (r *Releaser) materialize(ctx context.Context, objs storer.EncodedObjectStorer, sha string, progress io.Writer) (Stats, error) {
	commit, err := object.GetCommit(objs, plumbing.NewHash(sha))
	if err != nil {
		return Stats{}, fmt.Errorf("commit: %w", err)
	}
	b := r.openBase(objs, sha)
	handedOver := false
	defer func() {
		if !handedOver {
			b.top().release()
		}
	}()
	var linkFrom *base
	if r.linkFiles {
		linkFrom = b
	}
	start := time.Now()
	total, linked, err := scanTree(ctx, objs, commit.TreeHash, linkFrom)
	if err != nil {
		return Stats{}, err
	}
	r.log.Debug().Str("sha", sha).Int64("entries", total.entries).Int64("bytes", total.bytes).
		Int64("linked_entries", linked.entries).Int64("linked_bytes", linked.bytes).
		Int64("took_ms", time.Since(start).Milliseconds()).Msg("release tree scanned")
	if err := r.checkLimits(total); err != nil {
		return Stats{}, err
	}
	tree, err := commit.Tree()
	if err != nil {
		return Stats{}, fmt.Errorf("tree: %w", err)
	}
	// A record whose directory is gone must go before the directory reappears, or the
	// release would count as complete while it is being written.
	err = r.updateState(func(st *state) (bool, error) {
		if _, ok := st.Releases[sha]; !ok {
			return false, nil
		}
		delete(st.Releases, sha)
		return true, nil
	})
	if err != nil {
		return Stats{}, err
	}
	if err := r.removeRelease(sha); err != nil {
		return Stats{}, fmt.Errorf("remove leftover: %w", err)
	}
	if err := r.removeInodes(sha); err != nil {
		return Stats{}, fmt.Errorf("remove leftover: %w", err)
	}
	need := size{entries: total.entries - linked.entries, bytes: total.bytes - linked.bytes}
	if err := r.checkSpace(need); err != nil {
		return Stats{}, err
	}
	if err := os.Mkdir(r.Dir(sha), 0o755); err != nil {
		return Stats{}, err
	}
	handedOver = true
	stats, err := r.writeTree(ctx, objs, sha, tree, b, progress)
	if err != nil {
		if rerr := r.removeRelease(sha); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove partial release: %w", rerr))
		}
		return Stats{}, err
	}
	return stats, nil
}

// writeTree writes tree into releases/<sha>, which exists and is empty, copying unchanged
// files from b if it is not nil. It takes b's directory over, and releases it.
func (r *Releaser) writeTree(ctx context.Context, objs storer.EncodedObjectStorer, sha string, tree *object.Tree, b *base, progress io.Writer) (Stats, error) {
	top, err := openDir(unix.AT_FDCWD, r.Dir(sha))
	if err != nil {
		b.top().release()
		return Stats{}, err
	}
	// The umask can narrow the modes we create with; only if it does is every entry
	// chmod-ed to its exact mode.
	var st unix.Stat_t
	if err := unix.Fstat(top.fd, &st); err != nil {
		top.release()
		b.top().release()
		return Stats{}, err
	}
	exact := st.Mode&0o777 != 0o755
	if exact {
		if err := unix.Fchmod(top.fd, 0o755); err != nil {
			top.release()
			b.top().release()
			return Stats{}, err
		}
	}

	var inodes *inodeWriter
	if r.linkFiles {
		baseSHA := ""
		if b != nil {
			baseSHA = b.sha
		}
		if inodes, err = r.newInodeWriter(sha, baseSHA); err != nil {
			top.release()
			b.top().release()
			return Stats{}, err
		}
	}

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	tw := &treeWriter{
		ctx:      wctx,
		objs:     objs,
		base:     b,
		link:     r.linkFiles,
		inodes:   inodes,
		exact:    exact,
		progress: progress,
		every:    r.progressEvery,
		last:     time.Now(),
		jobs:     make(chan fileJob, 64),
	}
	tw.stack = []frame{{dst: top, src: b.top()}}
	for range writers() {
		tw.workers.Add(1)
		go tw.work(cancel)
	}
	err = tw.walk(tree)
	tw.closeDirs()
	close(tw.jobs)
	tw.workers.Wait()
	if err == nil {
		err = context.Cause(wctx) // a writer's error, or ctx's
	}
	if err != nil {
		if inodes != nil {
			inodes.abort()
		}
		return Stats{}, err
	}
	// The record of every file's inode and ctime, before any build can touch one.
	if inodes != nil {
		if err := inodes.commit(); err != nil {
			return Stats{}, err
		}
	}
	// Record when the tree was written, for the next release to copy untouched files from
	// this one; then let the coarse clock pass it before any build can write. The real
	// clock, not r.now: it is compared with file ctimes.
	written := time.Now()
	r.mu.Lock()
	if r.written == nil {
		r.written = map[string]time.Time{}
	}
	r.written[sha] = written
	r.mu.Unlock()
	time.Sleep(clockGuard)
	return tw.stats(), nil
}

// writers is how many goroutines write files: creating files is the kernel's work, and
// a few writers keep it busy while the walk reads the object store.
func writers() int {
	return min(max(runtime.GOMAXPROCS(0), 2), 8)
}

// walk goes through tree in order: directories and symlinks are made here, each before
// anything inside it; files are handed to the writers.
func (w *treeWriter) walk(tree *object.Tree) error {
	walker := object.NewTreeWalker(tree, true, nil)
	defer walker.Close()
	// TreeWalker ends the walk with io.EOF, as if it were complete, when a subtree object
	// is missing. Counting the entries each tree holds against those walked tells a
	// truncated walk from a complete one.
	pending := len(tree.Entries)
	for {
		if w.ctx.Err() != nil {
			return nil // the cause is the writers' error or the caller's cancel
		}
		w.objMu.Lock()
		name, entry, err := walker.Next()
		w.objMu.Unlock()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		pending--
		if strings.ContainsRune(entry.Name, '/') {
			return fmt.Errorf("%q: entry name contains a slash", name)
		}
		if entry.Mode == filemode.Dir {
			w.objMu.Lock()
			sub, err := object.GetTree(w.objs, entry.Hash)
			w.objMu.Unlock()
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			pending += len(sub.Entries)
		}
		if err := w.write(name, entry); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if pending != 0 {
		return fmt.Errorf("tree %s: walk ended %d entries early (missing tree object?)", tree.Hash, pending)
	}
	return nil
}

// treeWriter writes tree entries into one release. Every entry is created relative to an
// open directory that the writer made itself (see dir), never through a path, so nothing
// in the tree can lead a write outside the release. The walk and the writers share the
// object store, which is not safe for concurrent use, under objMu; the writers read the
// blobs the walk resolved, each through its own reader.
type treeWriter struct {
	ctx      context.Context
	objs     storer.EncodedObjectStorer
	objMu    sync.Mutex
	base     *base        // the live release, to copy unchanged files from; nil: inflate all
	stack    []frame      // the directories the walk is in, the release's top first
	link     bool         // files read-only, unchanged ones hard-linked from the base
	inodes   *inodeWriter // with link: the release's inode record; nil otherwise
	exact    bool         // chmod every entry: the umask narrows the create modes
	jobs     chan fileJob
	workers  sync.WaitGroup
	progress io.Writer
	every    time.Duration

	files, reused, bytes atomic.Int64

	mu   sync.Mutex // guards last and writes to progress
	last time.Time
}

// fileJob is one file for the writers, with the directories it goes in (and may be
// copied from), which it holds until it is written.
type fileJob struct {
	name, leaf string
	entry      object.TreeEntry
	blob       *object.Blob // nil when the file is to be copied from the base
	perm       fs.FileMode
	dst, src   *dir
}

func (j fileJob) release() {
	j.dst.release()
	j.src.release()
}

func (w *treeWriter) stats() Stats {
	return Stats{Files: int(w.files.Load()), Reused: int(w.reused.Load()), Bytes: w.bytes.Load()}
}

// work writes files until the walk is over; the first error stops everything.
func (w *treeWriter) work(fail context.CancelCauseFunc) {
	defer w.workers.Done()
	for job := range w.jobs {
		if w.ctx.Err() == nil {
			if err := w.writeFile(job); err != nil {
				fail(fmt.Errorf("%s: %w", job.name, err))
			}
		}
		job.release() // also when draining: the walk stops at its next entry
	}
}

// parent returns the frame of the directory name goes in, and name's last element. The
// walk is depth-first, so that directory is on the stack, under the ones the walk has left,
// which are closed here. If it is not there, name's path goes through something that is
// not a directory this writer made (a symlink, a file), and nothing is written.
func (w *treeWriter) parent(name string) (frame, string, error) {
	dirPath := path.Dir(name)
	if dirPath == "." {
		dirPath = ""
	}
	for i := len(w.stack) - 1; i >= 0; i-- {
		if w.stack[i].path != dirPath {
			continue
		}
		for _, left := range w.stack[i+1:] {
			left.release()
		}
		w.stack = w.stack[:i+1]
		return w.stack[i], path.Base(name), nil
	}
	return frame{}, "", fmt.Errorf("%s is not a directory of this release", dirPath)
}

// closeDirs closes the directories still on the stack, at the end of the walk.
func (w *treeWriter) closeDirs() {
	for _, f := range w.stack {
		f.release()
	}
	w.stack = nil
}

func (w *treeWriter) write(name string, e object.TreeEntry) error {
	switch e.Mode {
	case filemode.Dir, filemode.Submodule:
		return w.mkdir(name, e.Mode == filemode.Dir)
	case filemode.Regular, filemode.Executable:
		return w.file(name, e, filePerm(e.Mode, w.link))
	case filemode.Symlink:
		return w.symlink(name, e.Hash)
	default:
		return fmt.Errorf("unsupported mode %s", e.Mode)
	}
}

// mkdir makes a directory; for a tree (not a submodule's empty directory) it opens it for
// what goes in it, and the base release's directory of the same path if there is one.
func (w *treeWriter) mkdir(name string, enter bool) error {
	f, leaf, err := w.parent(name)
	if err != nil {
		return err
	}
	// mkdirat, never "mkdir -p": a name that exists already (a duplicate entry, a symlink
	// of the same name) is an error, so a later entry cannot go through it.
	if err := unix.Mkdirat(f.dst.fd, leaf, 0o755); err != nil {
		return err
	}
	d, err := openDir(f.dst.fd, leaf)
	if err != nil {
		return err
	}
	if w.exact {
		if err := unix.Fchmod(d.fd, 0o755); err != nil {
			d.release()
			return err
		}
	}
	if !enter {
		d.release()
		return nil
	}
	var src *dir
	if f.src != nil {
		src, _ = openDir(f.src.fd, leaf) // none in the base: nothing to copy from there
	}
	w.stack = append(w.stack, frame{path: name, dst: d, src: src})
	return nil
}

// file hands a file to the writers: to be copied from the base if the base had it with the
// same blob and mode, else with its blob resolved.
func (w *treeWriter) file(name string, e object.TreeEntry, perm fs.FileMode) error {
	f, leaf, err := w.parent(name)
	if err != nil {
		return err
	}
	job := fileJob{name: name, leaf: leaf, entry: e, perm: perm}
	if f.src == nil || !w.base.has(name, e) {
		if job.blob, err = w.getBlob(e.Hash); err != nil {
			return err
		}
	}
	job.dst, job.src = f.dst.acquire(), f.src.acquire()
	select {
	case w.jobs <- job:
	case <-w.ctx.Done():
		job.release()
	}
	return nil
}

func (w *treeWriter) getBlob(h plumbing.Hash) (*object.Blob, error) {
	w.objMu.Lock()
	defer w.objMu.Unlock()
	return object.GetBlob(w.objs, h)
}

// filePerm is the mode of a file of a release: 0644 or 0755, read-only in link mode.
func filePerm(m filemode.FileMode, link bool) fs.FileMode {
	perm := fs.FileMode(0o644)
	if m == filemode.Executable {
		perm = 0o755
	}
	if link {
		perm &^= 0o222
	}
	return perm
}

// writeFile writes one file: copied (or linked) from the base if the base still holds it
// untouched, else inflated from its blob.
func (w *treeWriter) writeFile(j fileJob) error {
	exec := j.entry.Mode == filemode.Executable
	var st unix.Stat_t
	if j.blob == nil {
		copied, err := w.base.reuse(j, w.link, w.exact, &st)
		if err != nil || copied {
			if copied {
				if w.inodes != nil {
					w.inodes.add(j.name, &st, j.entry.Hash, exec, true)
				}
				w.reused.Add(1)
				w.done()
			}
			return err
		}
		if j.blob, err = w.getBlob(j.entry.Hash); err != nil {
			return err
		}
	}
	rd, err := j.blob.Reader()
	if err != nil {
		return err
	}
	defer rd.Close() // a reader of the object store: closing it loses nothing
	// O_EXCL: never write through, or over, anything that exists already.
	fd, err := unix.Openat(j.dst.fd, j.leaf, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(j.perm))
	if err != nil {
		return err
	}
	buf := copyBufs.Get().(*[]byte)
	_, err = io.CopyBuffer(fdWriter(fd), &countingReader{w: w, r: rd}, *buf)
	copyBufs.Put(buf)
	if err == nil && w.exact {
		err = unix.Fchmod(fd, uint32(j.perm))
	}
	if err == nil && w.inodes != nil {
		err = unix.Fstat(fd, &st) // the ctime after the last change slipway makes
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if w.inodes != nil {
		w.inodes.add(j.name, &st, j.entry.Hash, exec, false)
	}
	w.done()
	return nil
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// fdWriter writes to a file descriptor the writers own (no os.File: it would register the
// descriptor with the poller, for a regular file in vain).
type fdWriter int

func (f fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(int(f), p[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

func (w *treeWriter) symlink(name string, h plumbing.Hash) error {
	f, leaf, err := w.parent(name)
	if err != nil {
		return err
	}
	blob, err := w.getBlob(h)
	if err != nil {
		return err
	}
	if blob.Size > maxSymlinkTarget {
		return fmt.Errorf("symlink target of %d bytes", blob.Size)
	}
	rd, err := blob.Reader()
	if err != nil {
		return err
	}
	defer rd.Close() // a reader of the object store: closing it loses nothing
	target, err := io.ReadAll(io.LimitReader(rd, maxSymlinkTarget+1))
	if err != nil {
		return err
	}
	if len(target) > maxSymlinkTarget {
		return fmt.Errorf("symlink target longer than %d bytes", maxSymlinkTarget)
	}
	if err := unix.Symlinkat(string(target), f.dst.fd, leaf); err != nil {
		return err
	}
	w.done()
	return nil
}

// done counts a finished entry.
func (w *treeWriter) done() {
	w.files.Add(1)
	w.tick()
}

// tick writes a progress line if the last one is older than w.every.
func (w *treeWriter) tick() {
	if w.progress == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.last) < w.every {
		return
	}
	w.last = time.Now()
	// Progress is for the pusher: a line it does not get must not fail the release.
	fmt.Fprintf(w.progress, "  wrote %d files, %s\n", w.files.Load(), formatBytes(w.bytes.Load()))
}

// countingReader counts a blob's bytes as they are copied, so that progress keeps going
// through a large blob and a cancel stops it midway.
type countingReader struct {
	w *treeWriter
	r io.Reader
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.w.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.w.bytes.Add(int64(n))
	c.w.tick()
	return n, err
}

func formatBytes(n int64) string {
	switch {
	case n >= 10e9:
		return fmt.Sprintf("%d GB", n/1e9)
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%d MB", n/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%d kB", n/1e3)
	default:
		return fmt.Sprintf("%d B", n)
	}
}
