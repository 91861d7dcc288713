package gitserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/slipway/slipway/internal/atomicfile"
	"github.com/slipway/slipway/internal/reponame"
)

// Repositories are the environments' bare repositories under Dir, one per environment
// "APP/ENV": <Dir>/<APP>/<ENV>.git. A Server creates an environment's repository on its
// first push and is the only one to write to it. Through Repositories, other packages reach
// them without a Server: to read a repository's objects (a rollback reads the commit's
// slipway.toml), or to remove one (an environment destroyed). Both are safe beside a running
// Server while the Deployer holds the environment, so that no push runs meanwhile: a push
// may merge packs away under a reader. A fetch running while Remove deletes fails.
//
// Names starting with '.' under <Dir>/<APP> are no environment's: they are a repository
// being created or removed, or what a crash left of one.
type Repositories struct {
	Dir string
}

// RepoDir is where the bare repository of environment repo ("APP/ENV", valid) lives under
// reposDir: <reposDir>/<APP>/<ENV>.git. Others read objects from it; only the Server
// writes to it.
func RepoDir(reposDir, repo string) string {
	return Repositories{Dir: reposDir}.dir(repo)
}

// dir is where the repository of the valid environment name repo lives.
func (r Repositories) dir(repo string) string {
	app, env, _ := strings.Cut(repo, "/")
	return filepath.Join(r.Dir, app, env+".git")
}

// removing is the hidden name the repository of repo has while Remove deletes it: no valid
// environment's repository has a name starting with '.'.
func (r Repositories) removing(repo string) string {
	dir := r.dir(repo)
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+removingSuffix)
}

// Suffixes of the hidden names next to <ENV>.git, after ".<ENV>.git".
const (
	removingSuffix   = ".removing" // being removed
	createTempSuffix = ".tmp-"     // being created (createRepo), and a random number
)

// ErrNoRepo is an environment nothing has been pushed to yet. It is an fs.ErrNotExist, so
// that callers can tell it without this package: errors.Is(err, fs.ErrNotExist).
var ErrNoRepo = fmt.Errorf("no repository: %w", fs.ErrNotExist)

// Objects opens the existing repository of environment repo for reading its objects. The
// caller closes it. If nothing has been pushed to repo yet, the error is ErrNoRepo.
func (r Repositories) Objects(repo string) (*filesystem.Storage, error) {
	if err := reponame.Validate(repo); err != nil {
		return nil, err
	}
	dir := r.dir(repo)
	fi, err := os.Stat(filepath.Join(dir, "HEAD"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, ErrNoRepo
	case err != nil:
		return nil, err
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s/HEAD is not a file", dir)
	}
	return newStorage(dir), nil
}

// Remove deletes the repository of environment repo, and <Dir>/<APP> if no other
// environment of APP has one left. A repository that does not exist is no error. The
// repository is first renamed to a hidden name, which is made durable, and then removed: a
// crash leaves either the whole repository or the hidden name, and never a repository that
// a push or fetch would take for whole. Remove also deletes what crashes left next to the
// repository: the hidden name of an earlier Remove, a creation's temporary directory. The
// caller holds the environment, so that no push runs meanwhile.
func (r Repositories) Remove(repo string) error {
	if err := reponame.Validate(repo); err != nil {
		return err
	}
	dir, trash := r.dir(repo), r.removing(repo)
	if err := removeLeftovers(dir); err != nil {
		return err
	}
	switch err := os.Rename(dir, trash); {
	case errors.Is(err, fs.ErrNotExist):
		// Nothing to remove: the repository, or even <Dir>/<APP>, does not exist.
	case err != nil:
		return fmt.Errorf("remove repository: %w", err)
	default:
		if err := atomicfile.SyncDir(filepath.Dir(dir)); err != nil {
			return fmt.Errorf("remove repository: %w", err)
		}
		if err := os.RemoveAll(trash); err != nil {
			return fmt.Errorf("remove repository: %w", err)
		}
	}
	return r.removeEmptyApp(filepath.Dir(dir))
}

// removeLeftovers removes what crashes left next to the repository at dir: its hidden name
// from a removal, and the temporary directories of its creation (createRepo).
func removeLeftovers(dir string) error {
	entries, err := os.ReadDir(filepath.Dir(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	hidden := "." + filepath.Base(dir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), hidden)
		if !ok || (rest != removingSuffix && !isCreateTemp(rest)) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(filepath.Dir(dir), e.Name())); err != nil {
			return fmt.Errorf("remove a leftover of the repository: %w", err)
		}
	}
	return nil
}

// isCreateTemp says whether rest, what follows ".<ENV>.git", is the suffix of one of
// createRepo's temporary directories: ".tmp-" and os.MkdirTemp's digits.
func isCreateTemp(rest string) bool {
	digits, ok := strings.CutPrefix(rest, createTempSuffix)
	if !ok || digits == "" {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// removeEmptyApp removes appDir, <Dir>/<APP>, if it is empty.
func (r Repositories) removeEmptyApp(appDir string) error {
	err := os.Remove(appDir)
	switch {
	case err == nil:
		return atomicfile.SyncDir(r.Dir)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST):
		return nil // gone already, or other environments' repositories are in it
	default:
		return fmt.Errorf("remove %s: %w", appDir, err)
	}
}
