package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/slipway/slipway/gitserver"
)

// Defaults of the server configuration (SPEC section 2).
const (
	defaultListen         = "127.0.0.1:2222"
	defaultBranch         = "main"
	defaultKeepReleases   = 5
	defaultCommandTimeout = 30 * time.Minute
	defaultConfigFile     = "slipway.toml"
	defaultShutdown       = 30 * time.Second
)

// config is the whole server configuration, resolved: paths absolute, keys parsed.
type config struct {
	file    string // the config file; "" for the embedded default
	listen  string
	dataDir string
	hostKey string
	keys    []gitserver.Key
	// shutdownTimeout is how long SIGTERM waits for running deploys before cancelling them.
	shutdownTimeout time.Duration
	envs            []envConfig
	// notes are what the operator should know at start (keys skipped, none found).
	notes []string
	// auto is the embedded default: an environment is created the first time an authorized
	// key pushes to it, and deployed under deployRoot/APP/ENV.
	auto       bool
	deployRoot string
}

// envConfig is one [[env]] of the server configuration.
type envConfig struct {
	repo           string
	path           string
	branch         string
	keepReleases   int
	pruneGrace     time.Duration
	linkFiles      bool // release_files = "link"
	commandTimeout time.Duration
	allow          []string // empty: every authorized key
	vars           []string // "K=V", sorted by key
	recipe         recipe
}

// recipe is what a deploy runs. It is set by the server's [[env]] and by the pushed tree's
// own slipway.toml; the server wins key by key, and a key set to an empty list counts as set.
type recipe struct {
	build, test, afterActivate []string
	sharedFiles, sharedDirs    []string
	set                        map[string]bool
}

var recipeKeys = []string{"build", "test", "after_activate", "shared_files", "shared_dirs"}

// readRecipe reads the recipe keys of t.
func readRecipe(t table) recipe {
	r := recipe{set: map[string]bool{}}
	for _, k := range recipeKeys {
		if t.has(k) {
			r.set[k] = true
		}
	}
	r.build = t.strings("build")
	r.test = t.strings("test")
	r.afterActivate = t.strings("after_activate")
	r.sharedFiles = sharedPaths(t, "shared_files")
	r.sharedDirs = sharedPaths(t, "shared_dirs")
	return r
}

// sharedPaths reads a list of paths relative to the release: clean, no "..", not absolute.
func sharedPaths(t table, k string) []string {
	var out []string
	for _, p := range t.strings(k) {
		c := filepath.Clean(p)
		if p == "" || filepath.IsAbs(p) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
			t.doc.addf(t.key(k), "%s: %q must be a path inside the release (relative, no \"..\")", t.name(k), p)
			continue
		}
		out = append(out, c)
	}
	return out
}

// over returns r with every key that base sets taken from base.
func (r recipe) over(base recipe) recipe {
	out := recipe{set: map[string]bool{}}
	pick := func(k string, mine, theirs []string) []string {
		if base.set[k] {
			out.set[k] = true
			return theirs
		}
		out.set[k] = r.set[k]
		return mine
	}
	out.build = pick("build", r.build, base.build)
	out.test = pick("test", r.test, base.test)
	out.afterActivate = pick("after_activate", r.afterActivate, base.afterActivate)
	out.sharedFiles = pick("shared_files", r.sharedFiles, base.sharedFiles)
	out.sharedDirs = pick("shared_dirs", r.sharedDirs, base.sharedDirs)
	return out
}

// parseRepoRecipe reads the pushed tree's own slipway.toml. Only recipe keys are allowed.
func parseRepoRecipe(text string) (recipe, error) {
	doc, err := parseTOML("slipway.toml", text)
	if err != nil {
		return recipe{}, err
	}
	root := table{doc: doc, m: doc.data}
	root.only(recipeKeys...)
	r := readRecipe(root)
	if len(doc.probs) > 0 {
		return recipe{}, doc.err()
	}
	return r, nil
}

var varNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// loadConfig reads and checks the configuration file. Every problem is reported at once,
// each with file:line, in a problemsError.
func loadConfig(file string) (*config, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, fmt.Errorf("config path: %w", err)
	}
	doc, err := parseTOML(file, string(text))
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(abs)
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}

	root := table{doc: doc, m: doc.data}
	root.only("listen", "data_dir", "authorized_keys", "host_key", "shutdown_timeout", "env")
	cfg := &config{file: file, shutdownTimeout: root.duration("shutdown_timeout", defaultShutdown)}

	cfg.listen = root.str("listen")
	if cfg.listen == "" {
		cfg.listen = defaultListen
	} else if _, _, err := net.SplitHostPort(cfg.listen); err != nil {
		doc.addf("listen", "listen: %q is not host:port", cfg.listen)
	}
	cfg.dataDir = resolve(root.str("data_dir"))
	if cfg.dataDir == "" {
		doc.addf("", "data_dir is required (where slipway keeps its repositories and state)")
	}
	cfg.hostKey = resolve(root.str("host_key"))
	if cfg.hostKey == "" && cfg.dataDir != "" {
		cfg.hostKey = filepath.Join(cfg.dataDir, "ssh_host_ed25519_key")
	}
	if keysFile := resolve(root.str("authorized_keys")); keysFile == "" {
		doc.addf("", "authorized_keys is required (an OpenSSH authorized_keys file; each key's comment is its user name)")
	} else {
		keys, err := gitserver.ParseKeys(keysFile)
		if err != nil {
			// ParseKeys already says file:line for each of its problems.
			for _, msg := range strings.Split(err.Error(), "\n") {
				doc.probs = append(doc.probs, problem{file: doc.file, line: doc.line("authorized_keys"), msg: "authorized_keys: " + msg})
			}
		}
		cfg.keys = keys
	}

	names := map[string]bool{}
	for _, k := range cfg.keys {
		names[k.Name] = true
	}
	repos := map[string]string{}
	paths := map[string]string{}
	envs := root.list("env")
	if len(envs) == 0 && !root.has("env") {
		doc.addf("", "no [[env]] configured: nothing can be deployed")
	}
	for _, t := range envs {
		e := readEnv(t, resolve, names)
		if e.repo != "" {
			if other, dup := repos[e.repo]; dup {
				t.doc.addf(t.key("repo"), "%s: repo %q is already configured by %s", t.name("repo"), e.repo, other)
			}
			repos[e.repo] = t.name("")
		}
		if e.path != "" {
			for p, other := range paths {
				if p == e.path || within(p, e.path) || within(e.path, p) {
					t.doc.addf(t.key("path"), "%s: %s overlaps the path of %s", t.name("path"), e.path, other)
				}
			}
			paths[e.path] = t.name("")
		}
		cfg.envs = append(cfg.envs, e)
	}
	if len(doc.probs) > 0 {
		return nil, doc.err()
	}
	return cfg, nil
}

func readEnv(t table, resolve func(string) string, keyNames map[string]bool) envConfig {
	t.only("repo", "path", "branch", "keep_releases", "prune_grace", "release_files", "shared_files", "shared_dirs",
		"build", "test", "after_activate", "command_timeout", "allow", "vars")
	e := envConfig{
		repo:           t.str("repo"),
		path:           resolve(t.str("path")),
		branch:         t.str("branch"),
		keepReleases:   t.integer("keep_releases", defaultKeepReleases),
		pruneGrace:     t.duration("prune_grace", 0),
		commandTimeout: t.duration("command_timeout", defaultCommandTimeout),
		allow:          t.strings("allow"),
		recipe:         readRecipe(t),
	}
	// t.name("") is "env[N]." with a trailing dot; name the table without it.
	where := strings.TrimSuffix(t.name(""), ".")
	switch {
	case !t.has("repo"):
		t.doc.addf(t.path, "%s: repo is required (\"APP/ENV\")", where)
	case gitserver.ValidateRepo(e.repo) != nil:
		t.doc.addf(t.key("repo"), "%s: %v", t.name("repo"), gitserver.ValidateRepo(e.repo))
	}
	if !t.has("path") {
		t.doc.addf(t.path, "%s: path is required (the deploy root: releases/, shared/, current)", where)
	}
	if e.branch == "" {
		e.branch = defaultBranch
	} else if err := plumbing.NewBranchReferenceName(e.branch).Validate(); err != nil || strings.HasPrefix(e.branch, "-") {
		t.doc.addf(t.key("branch"), "%s: %q is not a valid branch name", t.name("branch"), e.branch)
	}
	switch files := t.str("release_files"); files {
	case "", "copy":
	case "link":
		e.linkFiles = true
	default:
		t.doc.addf(t.key("release_files"), "%s: %q is neither \"copy\" nor \"link\"", t.name("release_files"), files)
	}
	if e.keepReleases < 1 {
		t.doc.addf(t.key("keep_releases"), "%s must be at least 1 (the live release)", t.name("keep_releases"))
	}
	if t.has("command_timeout") && e.commandTimeout == 0 {
		t.doc.addf(t.key("command_timeout"), "%s must be more than 0", t.name("command_timeout"))
	}
	for _, name := range e.allow {
		if !keyNames[name] {
			t.doc.addf(t.key("allow"), "%s: no authorized key is named %q", t.name("allow"), name)
		}
	}
	if vars, ok := t.sub("vars"); ok {
		keys := make([]string, 0, len(vars.m))
		for k := range vars.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v := vars.str(k)
			switch {
			case !varNameRe.MatchString(k):
				t.doc.addf(vars.key(k), "%s: not a valid environment variable name", vars.name(k))
			case strings.HasPrefix(k, "SLIPWAY_"):
				t.doc.addf(vars.key(k), "%s: SLIPWAY_* variables are set by slipway", vars.name(k))
			default:
				e.vars = append(e.vars, k+"="+v)
			}
		}
	}
	return e
}

// within reports whether p is strictly inside dir.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..")
}

// defaultConfig is the embedded default (SPEC section 4): listen on 127.0.0.1:2222, keep
// state in ./.slipway/, authorize ~/.ssh/authorized_keys and ~/.ssh/*.pub, and create an
// environment under ./deploy/APP/ENV/ the first time an authorized key pushes to it.
func defaultConfig() (*config, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("working directory: %w", err)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return nil, fmt.Errorf("home directory: %w", err)
	}
	cfg := &config{
		listen:          defaultListen,
		dataDir:         filepath.Join(wd, ".slipway"),
		deployRoot:      filepath.Join(wd, "deploy"),
		auto:            true,
		shutdownTimeout: defaultShutdown,
	}
	cfg.hostKey = filepath.Join(cfg.dataDir, "ssh_host_ed25519_key")
	files := []string{filepath.Join(home, ".ssh", "authorized_keys")}
	pubs, _ := filepath.Glob(filepath.Join(home, ".ssh", "*.pub"))
	files = append(files, pubs...)
	seen := map[string]bool{}
	for _, f := range files {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			continue
		}
		keys, err := gitserver.ParseKeys(f)
		if err != nil {
			// The embedded default goes on with the keys that parse and says what it skipped.
			for _, msg := range strings.Split(err.Error(), "\n") {
				cfg.notes = append(cfg.notes, "skipped: "+msg)
			}
		}
		for _, k := range keys {
			id := string(k.Key.Marshal())
			if !seen[id] {
				seen[id] = true
				cfg.keys = append(cfg.keys, k)
			}
		}
	}
	if len(cfg.keys) == 0 {
		cfg.notes = append(cfg.notes, "no SSH key in ~/.ssh/authorized_keys or ~/.ssh/*.pub, so nobody can push yet:"+
			" create one with `ssh-keygen -t ed25519 -C yourname`, then restart slipway")
	}
	return cfg, nil
}

// autoEnv is the environment the embedded default creates for repo.
func (c *config) autoEnv(repo string) envConfig {
	return envConfig{
		repo:           repo,
		path:           filepath.Join(c.deployRoot, filepath.FromSlash(repo)),
		branch:         defaultBranch,
		keepReleases:   defaultKeepReleases,
		commandTimeout: defaultCommandTimeout,
		recipe:         recipe{set: map[string]bool{}},
	}
}
