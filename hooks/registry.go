package hooks

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/slipway/slipway/internal/atomicfile"
	"github.com/slipway/slipway/releaser"
)

// registryFile is where the embedded default keeps the names of the environments it
// created, under data_dir, so that they persist across restarts.
const registryFile = "environments.json"

// registry is the embedded default's list of the environments it created. The server adds
// to it, and a destroy (from the server or the CLI beside it) removes from it: every change
// is a read-modify-write under an flock(2) of environments.lock, and the file is replaced
// atomically, so readers never see half of it and no change is lost.
type registry struct {
	dataDir string
}

type registryDoc struct {
	Environments []string `json:"environments"`
}

// load returns the registered environments.
func (r *registry) load() ([]string, error) {
	name := filepath.Join(r.dataDir, registryFile)
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read environments: %w", err)
	}
	var doc registryDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("read environments %s: %w", name, err)
	}
	return doc.Environments, nil
}

func (r *registry) add(repo string) error {
	return r.update(func(repos []string) []string {
		if slices.Contains(repos, repo) {
			return repos
		}
		return append(repos, repo)
	})
}

func (r *registry) remove(repo string) error {
	return r.update(func(repos []string) []string {
		return slices.DeleteFunc(repos, func(s string) bool { return s == repo })
	})
}

// update changes the registry with fn, under its lock.
func (r *registry) update(fn func([]string) []string) error {
	lock, err := os.OpenFile(filepath.Join(r.dataDir, "environments.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock environments: %w", err)
	}
	defer lock.Close() // closing releases the flock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock environments: %w", err)
	}
	repos, err := r.load()
	if err != nil {
		return err
	}
	repos = fn(repos)
	slices.Sort(repos)
	b, err := json.MarshalIndent(registryDoc{Environments: repos}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(r.dataDir, registryFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save environments: %w", err)
	}
	return nil
}

// sweep removes what a crash in the middle of a destroy left under deployRoot/APP/.
// A failure costs only disk space, so it is logged and the server goes on.
func (r *registry) sweep(deployRoot string, log zerolog.Logger) {
	apps, err := os.ReadDir(deployRoot)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn().Err(err).Msg("look for leftovers of destroyed environments")
		}
		return
	}
	for _, app := range apps {
		if !app.IsDir() {
			continue
		}
		if err := releaser.RemoveDestroyed(filepath.Join(deployRoot, app.Name())); err != nil {
			log.Warn().Err(err).Str("dir", app.Name()).Msg("remove leftovers of destroyed environments")
		}
	}
}
