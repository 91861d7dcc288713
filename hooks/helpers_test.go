package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/releaser"
)

// The pipeline's tests run it for real: a real object store on disk (go-git), real
// releases, real shell commands. Only the SSH and git wire side is left out; the
// end-to-end scripts in cmd/slipway cover it.

// dirRepos is the environments' repositories under dir, laid out as the git server does:
// <dir>/<APP>/<ENV>.git, bare.
type dirRepos struct{ dir string }

func (r dirRepos) path(repo string) string {
	app, env, _ := strings.Cut(repo, "/")
	return filepath.Join(r.dir, app, env+".git")
}

func (r dirRepos) Objects(repo string) (*filesystem.Storage, error) {
	if _, err := os.Stat(r.path(repo)); err != nil {
		return nil, err
	}
	return filesystem.NewStorage(osfs.New(r.path(repo)), cache.NewObjectLRUDefault()), nil
}

func (r dirRepos) Remove(repo string) error {
	err := os.RemoveAll(r.path(repo))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// store opens (creating) repo's object store for a test to write commits into.
func (r dirRepos) store(t *testing.T, repo string) *filesystem.Storage {
	t.Helper()
	if err := os.MkdirAll(r.path(repo), 0o755); err != nil {
		t.Fatal(err)
	}
	st := filesystem.NewStorage(osfs.New(r.path(repo)), cache.NewObjectLRUDefault())
	if err := st.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// commit writes a commit of files (flat: name -> content) and returns its sha.
func commit(t *testing.T, st *filesystem.Storage, files map[string]string) string {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	tree := &object.Tree{}
	for _, n := range names {
		blob := st.NewEncodedObject()
		blob.SetType(plumbing.BlobObject)
		w, _ := blob.Writer()
		w.Write([]byte(files[n]))
		w.Close()
		h, err := st.SetEncodedObject(blob)
		if err != nil {
			t.Fatal(err)
		}
		tree.Entries = append(tree.Entries, object.TreeEntry{Name: n, Mode: filemode.Regular, Hash: h})
	}
	to := st.NewEncodedObject()
	if err := tree.Encode(to); err != nil {
		t.Fatal(err)
	}
	th, err := st.SetEncodedObject(to)
	if err != nil {
		t.Fatal(err)
	}
	sig := object.Signature{Name: "Test", Email: "test@example.com", When: time.Unix(1700000000, 0)}
	c := &object.Commit{Author: sig, Committer: sig, Message: fmt.Sprintf("commit of %v\n", names), TreeHash: th}
	co := st.NewEncodedObject()
	if err := c.Encode(co); err != nil {
		t.Fatal(err)
	}
	ch, err := st.SetEncodedObject(co)
	if err != nil {
		t.Fatal(err)
	}
	return ch.String()
}

// fixture is one pipeline over a temp dir.
type fixture struct {
	t     *testing.T
	dir   string
	repos dirRepos
	cfg   *configs.Server
	p     *Pipeline
}

// newFixture makes a pipeline serving the environments envs (deployed under dir/deploy/…),
// or the embedded default when envs is nil.
func newFixture(t *testing.T, envs ...configs.Env) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{t: t, dir: dir, repos: dirRepos{dir: filepath.Join(dir, "repos")}}
	f.cfg = &configs.Server{File: filepath.Join(dir, "slipway.toml"), DataDir: filepath.Join(dir, "data"), Envs: envs}
	if envs == nil {
		f.cfg = &configs.Server{DataDir: filepath.Join(dir, "data"), Auto: true, DeployRoot: filepath.Join(dir, "deploy")}
	}
	if err := os.MkdirAll(f.cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	f.open()
	return f
}

// open (re)opens the pipeline, as a server start does.
func (f *fixture) open() {
	f.t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(f.t))
	p, err := New(Config{
		Server:  f.cfg,
		Builder: builder.New(builder.Config{KillGrace: time.Second}, log),
		Repos:   f.repos,
		Serving: true,
	}, log)
	if err != nil {
		f.t.Fatal(err)
	}
	f.p = p
}

// env returns a configured environment named repo, deployed under the fixture's dir.
func env(dir, repo string) configs.Env {
	return configs.Env{
		Repo: repo, Path: filepath.Join(dir, "deploy", filepath.FromSlash(repo)), Branch: "main",
		KeepReleases: 5, CommandTimeout: time.Minute,
	}
}

// push reserves repo and deploys sha as pusher, the way the git server does, and returns
// what the pusher saw and the deploy's error.
func (f *fixture) push(ctx context.Context, repo, sha string, options ...string) (string, error) {
	f.t.Helper()
	_, release, err := f.p.Reserve(ctx, repo, "alice", 0)
	if err != nil {
		return "", err
	}
	defer release()
	st, err := f.repos.Objects(repo)
	if err != nil {
		f.t.Fatal(err)
	}
	defer st.Close()
	var out bytes.Buffer
	err = f.p.Deploy(ctx, Push{Repo: repo, Branch: "main", NewSHA: sha, Pusher: "alice", Options: options, Objects: st}, &out)
	return out.String(), err
}

// command runs an operator command as c and returns its stdout, stderr and exit status.
func (f *fixture) command(c Caller, args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = f.p.RunCommand(f.t.Context(), c, args, strings.NewReader(""), &o, &e)
	return o.String(), e.String(), code
}

// rel opens repo's deploy root for a test to look at.
func (f *fixture) rel(repo string) *releaser.Releaser {
	f.t.Helper()
	f.p.mu.Lock()
	e := f.p.envs[repo]
	f.p.mu.Unlock()
	if e == nil {
		f.t.Fatalf("no environment %s", repo)
	}
	return e.rel
}

// live is the sha current names in repo, "" if none.
func (f *fixture) live(repo string) string {
	f.t.Helper()
	sha, err := f.rel(repo).Current()
	if err != nil {
		f.t.Fatal(err)
	}
	return sha
}
