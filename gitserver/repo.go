package gitserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// repoLocks serializes storage access per environment: go-git's storage is not safe for
// concurrent use, and receive, deploy and ref update form one critical section anyway.
type repoLocks struct {
	mu sync.Mutex               // guards m
	m  map[string]chan struct{} // repo -> a one-slot semaphore; entries are never removed (one per environment)
}

// lock takes repo's lock, or gives up when ctx is done (the pusher went away).
func (l *repoLocks) lock(ctx context.Context, repo string) (unlock func(), err error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]chan struct{})
	}
	sem, ok := l.m[repo]
	if !ok {
		sem = make(chan struct{}, 1)
		l.m[repo] = sem
	}
	l.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// repoDir is where the bare repository of a valid environment name lives.
func (s *Server) repoDir(repo string) string {
	app, env, _ := strings.Cut(repo, "/")
	return filepath.Join(s.cfg.ReposDir, app, env+".git")
}

// openRepo opens the bare repository of repo, creating it on first use with HEAD naming
// branchRef, and points HEAD at branchRef if it names another branch (the environment's
// branch was changed). The caller holds repo's lock.
func (s *Server) openRepo(repo string, branchRef plumbing.ReferenceName) (*filesystem.Storage, string, error) {
	dir := s.repoDir(repo)
	fi, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := createRepo(dir, branchRef); err != nil {
			return nil, "", fmt.Errorf("create repository %s: %w", dir, err)
		}
	case err != nil:
		return nil, "", err
	case !fi.IsDir():
		return nil, "", fmt.Errorf("%s is not a directory", dir)
	}
	st := filesystem.NewStorage(osfs.New(dir, osfs.WithBoundOS()), cache.NewObjectLRUDefault())
	head, err := st.Reference(plumbing.HEAD)
	if err != nil && !errors.Is(err, plumbing.ErrReferenceNotFound) {
		return nil, "", fmt.Errorf("read HEAD of %s: %w", dir, err)
	}
	if head == nil || head.Type() != plumbing.SymbolicReference || head.Target() != branchRef {
		if err := st.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, branchRef)); err != nil {
			return nil, "", fmt.Errorf("set HEAD of %s: %w", dir, err)
		}
	}
	return st, dir, nil
}

// createRepo initializes a bare repository in a temporary directory next to dir and renames
// it into place, so that a crash never leaves a half-made repository under the final name.
func createRepo(dir string, branchRef plumbing.ReferenceName) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	st := filesystem.NewStorage(osfs.New(tmp, osfs.WithBoundOS()), cache.NewObjectLRUDefault())
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
	return syncDir(parent)
}

// advertisement lists the repository's refs (like git's receive-pack: no HEAD, no symref)
// with the capabilities slipway's receive-pack implements on top of go-git.
func advertisement(st *filesystem.Storage) (*packp.AdvRefs, error) {
	ar := packp.NewAdvRefs()
	iter, err := st.IterReferences()
	if err != nil {
		return nil, err
	}
	err = iter.ForEach(func(r *plumbing.Reference) error {
		if r.Type() == plumbing.HashReference && r.Name() != plumbing.HEAD {
			ar.References[r.Name().String()] = r.Hash()
		}
		return nil
	})
	if err != nil {
		return nil, err
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
