package gitserver

import (
	"path/filepath"
	"strings"
)

// RepoDir is where the bare repository of environment repo ("APP/ENV", valid) lives under
// reposDir: <reposDir>/<APP>/<ENV>.git. Others read objects from it (a rollback reads the
// commit's slipway.toml); only the Server writes to it.
func RepoDir(reposDir, repo string) string {
	app, env, _ := strings.Cut(repo, "/")
	return filepath.Join(reposDir, app, env+".git")
}
