package gitserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/slipway/slipway/gitserver/internal/pack"
	"github.com/slipway/slipway/internal/atomicfile"
)

// repoLocks serializes storage access per environment: go-git's storage is not safe for
// concurrent use, and receive, deploy and ref update form one critical section anyway.
// Fetches do not take an environment's lock (each session has its own storage, and packs
// appear by rename), but they read refs under its refs lock, because go-git rewrites a ref
// file in place, and hold its packs lock, because a push may remove packs it has merged.
type repoLocks struct {
	mu sync.Mutex           // guards m
	m  map[string]*repoLock // one per environment; entries are never removed
}

type repoLock struct {
	sem   chan struct{} // a one-slot semaphore held by the push that owns the environment
	refs  sync.RWMutex  // write-held while a ref or HEAD is written; read-held by readers without sem
	packs sync.RWMutex  // read-held by a fetch for its whole session; write-held to remove packs
}

func (l *repoLocks) get(repo string) *repoLock {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]*repoLock)
	}
	rl, ok := l.m[repo]
	if !ok {
		rl = &repoLock{sem: make(chan struct{}, 1)}
		l.m[repo] = rl
	}
	return rl
}

// lock takes repo's lock, or gives up when ctx is done (the pusher went away).
func (l *repoLocks) lock(ctx context.Context, repo string) (unlock func(), err error) {
	sem := l.get(repo).sem
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// tryLock takes repo's lock if no one holds it.
func (l *repoLocks) tryLock(repo string) (unlock func(), ok bool) {
	sem := l.get(repo).sem
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, true
	default:
		return nil, false
	}
}

// packs is repo's packs lock: a fetch holds it to read, so that packs it may open are not
// removed under it (they are merged, not removed, while it runs).
func (l *repoLocks) packs(repo string) *sync.RWMutex {
	return &l.get(repo).packs
}

// refs is repo's refs lock.
func (l *repoLocks) refs(repo string) *sync.RWMutex {
	return &l.get(repo).refs
}

// repoDir is where the bare repository of a valid environment name lives.
func (s *Server) repoDir(repo string) string {
	return s.repos.dir(repo)
}

// openRepo opens the bare repository of repo, creating it on first use with HEAD naming
// branchRef, and points HEAD at branchRef if it names another branch (the environment's
// branch was changed). The caller holds repo's lock.
func (s *Server) openRepo(repo string, branchRef plumbing.ReferenceName) (*filesystem.Storage, string, error) {
	dir := s.repoDir(repo)
	fi, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.removeLeftover(repo)
		if err := createRepo(dir, branchRef); err != nil {
			return nil, "", fmt.Errorf("create repository %s: %w", dir, err)
		}
	case err != nil:
		return nil, "", err
	case !fi.IsDir():
		return nil, "", fmt.Errorf("%s is not a directory", dir)
	}
	st := newStorage(dir)
	head, err := st.Reference(plumbing.HEAD)
	if err != nil && !errors.Is(err, plumbing.ErrReferenceNotFound) {
		return nil, "", fmt.Errorf("read HEAD of %s: %w", dir, err)
	}
	if head == nil || head.Type() != plumbing.SymbolicReference || head.Target() != branchRef {
		refs := s.locks.refs(repo)
		refs.Lock()
		err := st.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, branchRef))
		refs.Unlock()
		if err != nil {
			return nil, "", fmt.Errorf("set HEAD of %s: %w", dir, err)
		}
	}
	return st, dir, nil
}

// removeLeftover deletes what a crash during Repositories.Remove left of repo's earlier
// repository, before a new one is created. It costs the push nothing if it fails: the
// leftover has a name of its own, and the next Remove takes it.
func (s *Server) removeLeftover(repo string) {
	trash := s.repos.removing(repo)
	if _, err := os.Lstat(trash); err != nil {
		return
	}
	if err := os.RemoveAll(trash); err != nil {
		s.log.Warn().Err(err).Str("repo", repo).Msg("remove the leftover of a removed repository")
	}
}

// objectCache bounds go-git's cache of decoded objects per open repository (its default
// is 96 MiB): a deploy reads each blob once, so a large cache only adds to the peak memory.
const objectCache = 8 * cache.MiByte

// largeObject is the size above which go-git streams an object from its pack instead of
// inflating it whole into memory (and into its cache) when it is looked up.
const largeObject = 1 << 20

// newStorage opens the repository at dir. Its packs stay open while the storage is
// (KeepDescriptors): otherwise every object lookup opens its pack again, several system
// calls per file of a checkout. So every storage is closed by whoever opened it.
//
// An object above largeObject streams from its pack when read. go-git v5 streams a whole
// object right, but not a delta: see pack.LargeDeltas, which the storage's cache hands
// such deltas to.
func newStorage(dir string) *filesystem.Storage {
	fs := &repoFS{Filesystem: osfs.New(dir, osfs.WithBoundOS())}
	return filesystem.NewStorageWithOptions(fs, newStorageCache(dir, fs),
		filesystem.Options{KeepDescriptors: true, LargeObjectThreshold: largeObject})
}

// storageCache is a storage's object cache: go-git's LRU cache of decoded objects, in front
// of pack.LargeDeltas. go-git asks its cache for an object before it reads the object
// itself (and again before it streams a large one), and takes what it gets: so the large
// deltas that go-git v5 reads wrong (go-git#2378) or whole are read by slipway instead.
type storageCache struct {
	lru   cache.Object
	large *pack.LargeDeltas
}

var _ cache.Object = (*storageCache)(nil)

func newStorageCache(dir string, packs pack.PackLender) *storageCache {
	return &storageCache{lru: cache.NewObjectLRU(objectCache), large: pack.NewLargeDeltas(dir, largeObject, packs)}
}

func (c *storageCache) Put(o plumbing.EncodedObject) { c.lru.Put(o) }

func (c *storageCache) Get(h plumbing.Hash) (plumbing.EncodedObject, bool) {
	if o, ok := c.lru.Get(h); ok {
		return o, true
	}
	return c.large.Get(h)
}

func (c *storageCache) Clear() { c.lru.Clear() }

// repoFS is a repository's filesystem as go-git opens it, keeping track of the pack files
// that go-git holds open, so that pack.LargeDeltas reads through them instead of opening a
// pack again for every object it looks at.
type repoFS struct {
	billy.Filesystem
	mu    sync.Mutex             // guards packs and every packFile's borrowed and closed
	packs map[string][]*packFile // open pack files by base name
}

var _ pack.PackLender = (*repoFS)(nil)

// packFile is a pack file go-git opened. Closed while borrowed, it is closed by its last
// borrower instead.
type packFile struct {
	billy.File
	fs       *repoFS
	name     string
	borrowed int
	closed   bool
}

func (fs *repoFS) Open(name string) (billy.File, error) {
	f, err := fs.Filesystem.Open(name)
	base := filepath.Base(name)
	if err != nil || filepath.Base(filepath.Dir(name)) != "pack" || !strings.HasPrefix(base, "pack-") || !strings.HasSuffix(base, ".pack") {
		return f, err
	}
	pf := &packFile{File: f, fs: fs, name: base}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.packs == nil {
		fs.packs = make(map[string][]*packFile)
	}
	fs.packs[base] = append(fs.packs[base], pf)
	return pf, nil
}

// Chmod is the underlying filesystem's: go-git uses it, if there, on the files it writes.
func (fs *repoFS) Chmod(name string, mode os.FileMode) error {
	c, ok := fs.Filesystem.(billy.Chmod)
	if !ok {
		return errors.ErrUnsupported
	}
	return c.Chmod(name, mode)
}

// Borrow lends a pack file go-git holds open.
func (fs *repoFS) Borrow(name string) (io.ReaderAt, func(), bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	open := fs.packs[name]
	if len(open) == 0 {
		return nil, nil, false
	}
	pf := open[len(open)-1]
	pf.borrowed++
	return pf.File, func() {
		fs.mu.Lock()
		pf.borrowed--
		last := pf.borrowed == 0 && pf.closed
		fs.mu.Unlock()
		if last {
			_ = pf.File.Close() // opened for reading: Close has nothing to report
		}
	}, true
}

func (pf *packFile) Close() error {
	fs := pf.fs
	fs.mu.Lock()
	if pf.closed {
		fs.mu.Unlock()
		return os.ErrClosed
	}
	pf.closed = true
	fs.packs[pf.name] = slices.DeleteFunc(fs.packs[pf.name], func(o *packFile) bool { return o == pf })
	if len(fs.packs[pf.name]) == 0 {
		delete(fs.packs, pf.name)
	}
	borrowed := pf.borrowed > 0
	fs.mu.Unlock()
	if borrowed {
		return nil // the last borrower closes it
	}
	return pf.File.Close()
}

// readRefs returns the repository's refs that name an object (HEAD and symbolic refs
// left out), under repo's refs lock: for sessions that do not hold repo's lock.
func (s *Server) readRefs(repo string, st *filesystem.Storage) (map[plumbing.ReferenceName]plumbing.Hash, error) {
	refs := s.locks.refs(repo)
	refs.RLock()
	defer refs.RUnlock()
	return listRefs(st)
}

// listRefs returns the repository's refs that name an object (HEAD and symbolic refs left
// out). The caller holds repo's lock or its refs lock.
func listRefs(st *filesystem.Storage) (map[plumbing.ReferenceName]plumbing.Hash, error) {
	iter, err := st.IterReferences()
	if err != nil {
		return nil, err
	}
	m := make(map[plumbing.ReferenceName]plumbing.Hash)
	err = iter.ForEach(func(r *plumbing.Reference) error {
		if r.Type() == plumbing.HashReference && r.Name() != plumbing.HEAD {
			m[r.Name()] = r.Hash()
		}
		return nil
	})
	return m, err
}

// createRepo initializes a bare repository in a temporary directory next to dir and renames
// it into place, so that a crash never leaves a half-made repository under the final name.
func createRepo(dir string, branchRef plumbing.ReferenceName) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+createTempSuffix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed; a failure leaves a hidden name, which Repositories.Remove clears
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	st := newStorage(tmp)
	if err := st.Init(); err != nil {
		return err
	}
	cfg := config.NewConfig()
	cfg.Core.IsBare = true
	if err := st.SetConfig(cfg); err != nil {
		return err
	}
	if err := st.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, branchRef)); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "HEAD")); serr == nil {
			return nil // created meanwhile by someone else (another slipway process)
		}
		return err
	}
	return atomicfile.SyncDir(parent)
}

// receiveAdvertisement lists refs (like git's receive-pack: no HEAD, no symref) with the
// capabilities slipway's receive-pack implements on top of go-git.
func receiveAdvertisement(refs map[plumbing.ReferenceName]plumbing.Hash) (*packp.AdvRefs, error) {
	ar := packp.NewAdvRefs()
	for name, h := range refs {
		ar.References[name.String()] = h
	}
	for _, c := range []capability.Capability{
		capability.ReportStatus,
		capability.DeleteRefs,
		capability.OFSDelta,
		capability.Sideband64k,
		capNoThin, // go-git cannot complete thin packs (go-git#190)
		capability.PushOptions,
		capability.Quiet, // accepted; build output is never suppressed
	} {
		if err := ar.Capabilities.Add(c); err != nil {
			return nil, err
		}
	}
	if err := ar.Capabilities.Add(capability.Agent, "slipway"); err != nil {
		return nil, err
	}
	return ar, nil
}

// capNoThin asks the client to send complete packs, with no deltas against objects the
// server already has.
const capNoThin capability.Capability = "no-thin"
