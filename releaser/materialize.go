package releaser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
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
// Regular files get 0644 and executables 0755 whatever the umask, directories 0755;
// symlinks are created with their target verbatim and never followed by the writer;
// submodules (gitlinks) become empty directories. Entry names go-git rejects (".", "..",
// ".git" and its disguises, control characters) and names containing "/" fail the
// whole release, as does any write an os.Root on the release refuses (a path through a
// symlink that leaves the release).
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
	// A record whose directory is gone must go before the directory reappears, or the
	// release would count as complete while it is being written.
	err := r.updateState(func(st *state) (bool, error) {
		if _, ok := st.Releases[sha]; !ok {
			return false, nil
		}
		delete(st.Releases, sha)
		return true, nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("materialize %s: %w", sha, err)
	}
	if err := r.removeRelease(sha); err != nil {
		return Stats{}, fmt.Errorf("materialize %s: remove leftover: %w", sha, err)
	}
	if err := os.Mkdir(r.Dir(sha), 0o755); err != nil {
		return Stats{}, fmt.Errorf("materialize %s: %w", sha, err)
	}
	stats, err := r.writeTree(ctx, objs, sha, progress)
	if err != nil {
		if rerr := r.removeRelease(sha); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove partial release: %w", rerr))
		}
		return Stats{}, fmt.Errorf("materialize %s: %w", sha, err)
	}
	return stats, nil
}

func (r *Releaser) writeTree(ctx context.Context, objs storer.EncodedObjectStorer, sha string, progress io.Writer) (Stats, error) {
	commit, err := object.GetCommit(objs, plumbing.NewHash(sha))
	if err != nil {
		return Stats{}, fmt.Errorf("commit: %w", err)
	}
	tree, err := commit.Tree()
	if err != nil {
		return Stats{}, fmt.Errorf("tree: %w", err)
	}

	root, err := os.OpenRoot(r.Dir(sha))
	if err != nil {
		return Stats{}, err
	}
	defer root.Close()
	// The umask can narrow the modes we create with; only if it does is every entry
	// chmod-ed to its exact mode.
	fi, err := root.Stat(".")
	if err != nil {
		return Stats{}, err
	}
	exact := fi.Mode().Perm() != 0o755
	if exact {
		if err := root.Chmod(".", 0o755); err != nil {
			return Stats{}, err
		}
	}

	b := r.openBase(objs, sha)
	defer b.close()
	tw := &treeWriter{
		ctx:      ctx,
		objs:     objs,
		base:     b,
		root:     root,
		exact:    exact,
		progress: progress,
		every:    r.progressEvery,
		last:     time.Now(),
	}
	walker := object.NewTreeWalker(tree, true, nil)
	defer walker.Close()
	// TreeWalker ends the walk with io.EOF, as if it were complete, when a subtree object
	// is missing. Counting the entries each tree holds against those walked tells a
	// truncated walk from a complete one.
	pending := len(tree.Entries)
	for {
		if err := ctx.Err(); err != nil {
			return Stats{}, err
		}
		name, entry, err := walker.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Stats{}, err
		}
		pending--
		if strings.ContainsRune(entry.Name, '/') {
			return Stats{}, fmt.Errorf("%q: entry name contains a slash", name)
		}
		if entry.Mode == filemode.Dir {
			sub, err := object.GetTree(objs, entry.Hash)
			if err != nil {
				return Stats{}, fmt.Errorf("%s: %w", name, err)
			}
			pending += len(sub.Entries)
		}
		if err := tw.write(name, entry); err != nil {
			return Stats{}, fmt.Errorf("%s: %w", name, err)
		}
	}
	if pending != 0 {
		return Stats{}, fmt.Errorf("tree %s: walk ended %d entries early (missing tree object?)", tree.Hash, pending)
	}
	// Record when the tree was written, for the next release to copy untouched files from
	// this one; then let the coarse clock pass it before any build can write.
	written := time.Now()
	r.mu.Lock()
	if r.written == nil {
		r.written = map[string]time.Time{}
	}
	r.written[sha] = written
	r.mu.Unlock()
	time.Sleep(clockGuard)
	return tw.stats, nil
}

// treeWriter writes tree entries into one release through root.
type treeWriter struct {
	ctx      context.Context
	objs     storer.EncodedObjectStorer
	base     *base // the live release, to copy unchanged files from; nil: inflate all
	root     *os.Root
	exact    bool // chmod every entry: the umask narrows the create modes
	stats    Stats
	progress io.Writer
	every    time.Duration
	last     time.Time
}

func (w *treeWriter) write(name string, e object.TreeEntry) error {
	switch e.Mode {
	case filemode.Dir, filemode.Submodule:
		return w.mkdir(name)
	case filemode.Regular:
		return w.file(name, e, 0o644)
	case filemode.Executable:
		return w.file(name, e, 0o755)
	case filemode.Symlink:
		return w.symlink(name, e.Hash)
	default:
		return fmt.Errorf("unsupported mode %s", e.Mode)
	}
}

func (w *treeWriter) mkdir(name string) error {
	// Mkdir, never MkdirAll: a name that exists already (a duplicate entry, a symlink of
	// the same name) is an error, so a later entry cannot go through it.
	if err := w.root.Mkdir(name, 0o755); err != nil {
		return err
	}
	if w.exact {
		return w.root.Chmod(name, 0o755)
	}
	return nil
}

func (w *treeWriter) file(name string, e object.TreeEntry, perm fs.FileMode) error {
	blob, err := object.GetBlob(w.objs, e.Hash)
	if err != nil {
		return err
	}
	copied, err := w.base.copyTo(w.root, name, e, blob.Size, perm, w.exact)
	if err != nil {
		return err
	}
	if copied {
		w.stats.Files++
		w.stats.Reused++
		w.stats.Bytes += blob.Size
		w.tick()
		return nil
	}
	rd, err := blob.Reader()
	if err != nil {
		return err
	}
	defer rd.Close()
	// O_EXCL: never write through, or over, anything that exists already.
	f, err := w.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, &countingReader{w: w, r: rd})
	if err == nil && w.exact {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	w.stats.Files++
	w.tick()
	return nil
}

func (w *treeWriter) symlink(name string, h plumbing.Hash) error {
	blob, err := object.GetBlob(w.objs, h)
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
	defer rd.Close()
	target, err := io.ReadAll(io.LimitReader(rd, maxSymlinkTarget+1))
	if err != nil {
		return err
	}
	if len(target) > maxSymlinkTarget {
		return fmt.Errorf("symlink target longer than %d bytes", maxSymlinkTarget)
	}
	if err := w.root.Symlink(string(target), name); err != nil {
		return err
	}
	w.stats.Files++
	w.tick()
	return nil
}

// tick writes a progress line if the last one is older than w.every.
func (w *treeWriter) tick() {
	if w.progress == nil || time.Since(w.last) < w.every {
		return
	}
	w.last = time.Now()
	fmt.Fprintf(w.progress, "  wrote %d files, %s\n", w.stats.Files, formatBytes(w.stats.Bytes))
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
	c.w.stats.Bytes += int64(n)
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
