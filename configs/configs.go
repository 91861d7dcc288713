// Package configs is slipway's configuration: the server's file (listen, data_dir,
// authorized_keys, the [[env]] environments), the embedded default used without one, and
// the recipe a pushed tree's own slipway.toml may set. It decodes strictly: an unknown key,
// a wrong type or a bad value is a problem, every problem is reported at once with its
// file and line (Problems), and a configuration with any problem is not returned. The
// example files beside it (slipway.example.toml, slipway.repo.example.toml) are decoded by
// its tests, so that the documentation cannot drift from the code.
//
// Invariants: a returned Server has absolute paths, parsed keys, valid environment names
// and branch names, no two environments with the same repo or overlapping deploy roots,
// and every default filled in.
package configs

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"

	"github.com/slipway/slipway/internal/authkeys"
	"github.com/slipway/slipway/internal/fleet"
	"github.com/slipway/slipway/internal/reponame"
)

// Defaults of the server configuration (SPEC section 2).
const (
	// DefaultFile is the configuration file used without --config, if it exists.
	DefaultFile = "slipway.toml"
	// DefaultBranch is an environment's deploy branch unless it sets one.
	DefaultBranch = "main"

	defaultListen         = "127.0.0.1:2222"
	defaultKeepReleases   = 5
	defaultCommandTimeout = 30 * time.Minute
	defaultShutdown       = 30 * time.Second
)

// Find loads file; without one, ./slipway.toml if it exists, else the embedded default.
func Find(file string) (*Server, error) {
	if file != "" {
		return Load(file)
	}
	if _, err := os.Stat(DefaultFile); err == nil {
		return Load(DefaultFile)
	}
	return Default()
}

// Server is the whole server configuration, resolved: paths absolute, keys parsed.
type Server struct {
	File    string // the config file; "" for the embedded default
	Listen  string
	DataDir string
	HostKey string
	// AuthorizedKeys is the authorized_keys file; "" in the embedded default, which reads
	// ~/.ssh/authorized_keys and ~/.ssh/*.pub.
	AuthorizedKeys string
	Keys           []authkeys.Key
	// ShutdownTimeout is how long SIGTERM waits for running deploys before cancelling them.
	ShutdownTimeout time.Duration
	Limits          Limits
	// Sandbox is how builds are confined (SPEC 11): "auto" confines where the kernel allows
	// and warns otherwise, "required" refuses to serve where it cannot, "off" confines
	// nothing (processes are still ended and limited).
	Sandbox string
	Envs    []Env
	// Notify are the [[notify]] webhooks (SPEC 7.3).
	Notify []Notify
	// Web is the dashboard (SPEC 12); off unless web_listen is set.
	Web Web
	// MetricsListen is where /metrics is served (metrics_listen); "" = off.
	MetricsListen string
	// Notes are what the operator should know at start (keys skipped, none found).
	Notes []string
	// Auto is the embedded default: an environment is created the first time an authorized
	// key pushes to it, and deployed under DeployRoot/APP/ENV.
	Auto       bool
	DeployRoot string
	sshDir     string // the embedded default's ~/.ssh
}

// Web is the dashboard's configuration (SPEC 12).
type Web struct {
	Listen string // web_listen: host:port; "" = no dashboard
	// URL is what login links begin with (web_url): the dashboard as browsers reach it, a
	// proxy's https://deploy.example.com; "" for http://<the address web_listen got>.
	URL           string
	SessionTTL    time.Duration // web_session_ttl: how long a login lasts; default 12h
	SecureCookies bool          // web_secure_cookies: Secure cookies even over plain HTTP (TLS at a proxy)
}

// DefaultWebSessionTTL is how long a dashboard login lasts unless web_session_ttl says.
const DefaultWebSessionTTL = 12 * time.Hour

// Limits bound what a push, and the connections before it, may cost the server (SPEC 13).
// The defaults are far above what a real app needs.
type Limits struct {
	MaxPushSize        int64         // max_push_size: pack bytes, enforced while it streams
	MaxReleaseSize     int64         // max_release_size: the expanded tree, checked before checkout
	MaxReleaseFiles    int64         // max_release_files
	HandshakeTimeout   time.Duration // handshake_timeout: to finish the SSH handshake and authenticate
	MaxUnauthenticated int           // max_unauthenticated: concurrent connections not yet authenticated
}

// DefaultLimits are the limits unless the configuration sets them.
var DefaultLimits = Limits{
	MaxPushSize:        2 << 30,
	MaxReleaseSize:     10 << 30,
	MaxReleaseFiles:    1_000_000,
	HandshakeTimeout:   20 * time.Second,
	MaxUnauthenticated: 64,
}

// Notify is one [[notify]]: a webhook told of deploys.
type Notify struct {
	URL        string
	Events     []string // default: every event but "started"
	Repos      []string // empty: every environment
	SecretFile string
	Secret     []byte // secret_file's content, trimmed; nil without one
	Slack      bool   // format = "slack"
}

// NotifyEvents are the events a [[notify]] may name.
var NotifyEvents = []string{"started", "live", "failed", "reverted", "rolled_back", "cancelled"}

// maxSecretFile bounds a secret_file.
const maxSecretFile = 4096

// readNotify reads every [[notify]].
func readNotify(root table, resolve func(string) string, envs []Env) []Notify {
	var out []Notify
	for _, t := range root.list("notify") {
		t.only("url", "events", "repos", "secret_file", "format")
		n := Notify{URL: t.str("url"), Events: t.strings("events"), Repos: t.strings("repos"), SecretFile: resolve(t.str("secret_file"))}
		where := strings.TrimSuffix(t.name(""), ".")
		if u, err := url.Parse(n.URL); n.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			t.doc.addf(t.key("url"), "%s: url must be an http:// or https:// URL", where)
		}
		if !t.has("events") {
			n.Events = NotifyEvents[1:]
		}
		for _, ev := range n.Events {
			if !slices.Contains(NotifyEvents, ev) {
				t.doc.addf(t.key("events"), "%s: %q is not an event (%s)", t.name("events"), ev, strings.Join(NotifyEvents, ", "))
			}
		}
		for _, r := range n.Repos {
			if !slices.ContainsFunc(envs, func(e Env) bool { return e.Repo == r }) {
				t.doc.addf(t.key("repos"), "%s: no [[env]] has repo %q", t.name("repos"), r)
			}
		}
		switch format := t.str("format"); format {
		case "", "json":
		case "slack":
			n.Slack = true
		default:
			t.doc.addf(t.key("format"), "%s: %q is neither \"json\" nor \"slack\"", t.name("format"), format)
		}
		if n.SecretFile != "" {
			b, err := readSmall(n.SecretFile, maxSecretFile)
			switch {
			case err != nil:
				t.doc.addf(t.key("secret_file"), "%s: %v", t.name("secret_file"), err)
			case len(strings.TrimSpace(string(b))) == 0:
				t.doc.addf(t.key("secret_file"), "%s: %s is empty", t.name("secret_file"), n.SecretFile)
			default:
				n.Secret = []byte(strings.TrimSpace(string(b)))
			}
		}
		out = append(out, n)
	}
	return out
}

// readSmall reads a file of at most limit bytes.
func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read only: closing it loses nothing
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return b, nil
}

// Env is one [[env]] of the server configuration.
type Env struct {
	Repo           string
	Path           string
	Branch         string
	KeepReleases   int
	PruneGrace     time.Duration
	LinkFiles      bool // release_files = "link"
	CommandTimeout time.Duration
	Allow          []string // empty: every authorized key
	Vars           []string // "K=V", sorted by key
	// Secrets are [env.secrets], "K=V" sorted by key: given to commands like Vars, and their
	// values masked (***) wherever output is shown or stored.
	Secrets []string
	// MaskFiles are shared files (paths inside shared/) whose KEY=VALUE values are masked
	// like secrets.
	MaskFiles []string
	// EnvFile, if set, is the path inside each release where the environment's variables
	// are written (0600) before its build: the release carries its configuration.
	EnvFile string
	// SeedSharedFiles: a missing shared file is seeded from the file the release commits
	// at its path, instead of refusing the release.
	SeedSharedFiles bool
	// CacheMaxSize bounds the build cache (<path>/.slipway/cache): after each deploy it is
	// pruned to this, least recently used first.
	CacheMaxSize int64
	Recipe       Recipe
	// Writable are the paths, beyond the release, shared/, the build cache and TMPDIR, that
	// this environment's commands may write (absolute, clean).
	Writable []string
	Box      Box
	// OnFailure is what a failed after_activate or health check does (SPEC 7):
	// OnFailureRevert (the default) or OnFailureKeep.
	OnFailure string
	// HealthCheck, if set, runs after after_activate; its failure is handled by OnFailure.
	HealthCheck *HealthCheck
	// Fleet is where the environment's releases go live (SPEC 10); zero: on this host.
	Fleet Fleet
}

// Fleet is an environment's targets: releases are built and tested on this host, in Path,
// then shipped to every target and swapped live on all of them or on none.
type Fleet struct {
	Targets     []fleet.Target // the remote hosts, in the configuration's order
	Local       bool           // "local" is a target too: this host's Path has current
	Identity    string         // target_identity: the private key slipway logs in with
	KnownHosts  string         // target_known_hosts: the only host keys accepted
	Parallel    int            // target_parallel: targets prepared at once
	DialTimeout time.Duration  // connection and handshake, per target
	// BeforeEach is before_activate_each: run on each target (and here, with "local") in
	// every copy of a release written there, before any target swaps; a failure on one
	// host fails the deploy and no target swaps. Only the server's config sets it.
	BeforeEach []string
}

// Remote reports whether the environment ships to other hosts.
func (f Fleet) Remote() bool { return len(f.Targets) > 0 }

// DefaultTargetParallel is how many targets are prepared at once unless target_parallel
// is set.
const DefaultTargetParallel = 10

// What a failed after_activate or health check does.
const (
	OnFailureRevert = "revert" // current goes back to the previous release; the push is rejected
	OnFailureKeep   = "keep"   // the release stays live, recorded unhealthy; the push is rejected
)

// HealthCheck is [env.health_check]: exactly one of URL and Command.
type HealthCheck struct {
	URL          string        // an HTTP GET
	ExpectStatus int           // default 200
	ExpectBody   string        // a substring the body must hold, if set
	Command      string        // passes on exit 0; run in the release like a build command
	Interval     time.Duration // between attempts; default 1s
	Timeout      time.Duration // passes if one attempt passes within it; default 30s
}

// DefaultCacheMaxSize bounds an environment's build cache unless cache_max_size is set.
const DefaultCacheMaxSize = 5 << 30

// Health check defaults.
const (
	defaultHealthInterval = time.Second
	defaultHealthTimeout  = 30 * time.Second
)

// Box is what one command of an environment may use (SPEC 11). Zero fields set no limit.
type Box struct {
	MemoryMax int64 // memory_max
	PidsMax   int   // pids_max
	CPUWeight int   // cpu_weight: 1 to 10000, where a cgroup is delegated
}

// Sandbox modes.
const (
	SandboxAuto     = "auto"
	SandboxRequired = "required"
	SandboxOff      = "off"
)

// Box limits' bounds: below these, the helper that confines a command cannot run itself.
const (
	minMemoryMax = 16 << 20
	minPidsMax   = 16
	maxCPUWeight = 10000
)

// Recipe is what a deploy runs. It is set by the server's [[env]] and by the pushed tree's
// own slipway.toml; the server wins key by key, and a key set to an empty list counts as set.
type Recipe struct {
	Build          []string // shell commands run in the release after checkout
	Test           []string // run after Build; any failure rejects the push
	BeforeActivate []string // run in the release after Test, before the swap; failure rejects the push
	AfterActivate  []string // run after current names the release
	SharedFiles    []string // paths inside the release linked to <path>/shared/
	SharedDirs     []string
	// CopyDirs are directories of the live release copied into the new one before its
	// build (node_modules, vendor), unless their key files changed.
	CopyDirs []CopyDir
	set      map[string]bool // the keys the file set, even to an empty list
}

var recipeKeys = []string{"build", "test", "before_activate", "after_activate", "shared_files", "shared_dirs", "copy_dirs"}

// CopyDir is one of copy_dirs: "node_modules", or { path = "node_modules", key =
// ["package-lock.json"] }.
type CopyDir struct {
	Path string
	Key  []string // files whose change (from the live release's) means: start clean
}

// readCopyDirs reads copy_dirs: each a path, or a table with path and key.
func readCopyDirs(t table) []CopyDir {
	v, ok := t.m["copy_dirs"]
	if !ok {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		t.doc.addf(t.key("copy_dirs"), "%s must be a list of paths, or of { path = ..., key = [...] }", t.name("copy_dirs"))
		return nil
	}
	var out []CopyDir
	inside := func(p string) (string, bool) { return insideRelease(t, "copy_dirs", p) }
	for _, item := range list {
		switch item := item.(type) {
		case string:
			if p, ok := inside(item); ok {
				out = append(out, CopyDir{Path: p})
			}
		case map[string]any:
			sub := table{doc: t.doc, path: t.key("copy_dirs"), m: item}
			sub.only("path", "key")
			p, ok := inside(sub.str("path"))
			if !ok {
				continue
			}
			cd := CopyDir{Path: p}
			for _, k := range sub.strings("key") {
				if kp, ok := inside(k); ok {
					cd.Key = append(cd.Key, kp)
				}
			}
			out = append(out, cd)
		default:
			t.doc.addf(t.key("copy_dirs"), "%s must be a list of paths, or of { path = ..., key = [...] }", t.name("copy_dirs"))
		}
	}
	return out
}

// readRecipe reads the recipe keys of t.
func readRecipe(t table) Recipe {
	r := Recipe{set: map[string]bool{}}
	for _, k := range recipeKeys {
		if t.has(k) {
			r.set[k] = true
		}
	}
	r.Build = t.strings("build")
	r.Test = t.strings("test")
	r.BeforeActivate = t.strings("before_activate")
	r.AfterActivate = t.strings("after_activate")
	r.SharedFiles = sharedPaths(t, "shared_files")
	r.SharedDirs = sharedPaths(t, "shared_dirs")
	r.CopyDirs = readCopyDirs(t)
	return r
}

// sharedPaths reads a list of paths relative to the release: clean, no "..", not absolute.
func sharedPaths(t table, k string) []string {
	var out []string
	for _, p := range t.strings(k) {
		if c, ok := insideRelease(t, k, p); ok {
			out = append(out, c)
		}
	}
	return out
}

// insideRelease cleans p, a path of key k, and reports whether it stays inside the release
// (relative, no ".."); if not, it is a problem of k.
func insideRelease(t table, k, p string) (string, bool) {
	c := filepath.Clean(p)
	if p == "" || filepath.IsAbs(p) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
		t.doc.addf(t.key(k), "%s: %q must be a path inside the release (relative, no \"..\")", t.name(k), p)
		return "", false
	}
	return c, true
}

// Over returns r with every key that base sets taken from base.
func (r Recipe) Over(base Recipe) Recipe {
	out := Recipe{set: map[string]bool{}}
	pick := func(k string, mine, theirs []string) []string {
		if base.set[k] {
			out.set[k] = true
			return theirs
		}
		out.set[k] = r.set[k]
		return mine
	}
	out.Build = pick("build", r.Build, base.Build)
	out.Test = pick("test", r.Test, base.Test)
	out.BeforeActivate = pick("before_activate", r.BeforeActivate, base.BeforeActivate)
	out.AfterActivate = pick("after_activate", r.AfterActivate, base.AfterActivate)
	out.SharedFiles = pick("shared_files", r.SharedFiles, base.SharedFiles)
	out.SharedDirs = pick("shared_dirs", r.SharedDirs, base.SharedDirs)
	out.CopyDirs = r.CopyDirs
	if base.set["copy_dirs"] {
		out.CopyDirs = base.CopyDirs
	}
	out.set["copy_dirs"] = base.set["copy_dirs"] || r.set["copy_dirs"]
	return out
}

// ParseRecipe reads the pushed tree's own slipway.toml. Only recipe keys are allowed.
func ParseRecipe(text string) (Recipe, error) {
	doc, err := parseTOML("slipway.toml", text)
	if err != nil {
		return Recipe{}, err
	}
	root := table{doc: doc, m: doc.data}
	root.only(recipeKeys...)
	r := readRecipe(root)
	if len(doc.probs) > 0 {
		return Recipe{}, doc.err()
	}
	return r, nil
}

var varNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Load reads and checks the configuration file. Every problem is reported at once, each
// with file:line, in a Problems.
func Load(file string) (*Server, error) {
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
	root := table{doc: doc, m: doc.data}
	root.only("listen", "data_dir", "authorized_keys", "host_key", "shutdown_timeout", "env", "sandbox", "notify",
		"max_push_size", "max_release_size", "max_release_files", "handshake_timeout", "max_unauthenticated",
		"web_listen", "web_url", "web_session_ttl", "web_secure_cookies", "metrics_listen")
	rel := relativeTo(filepath.Dir(abs))
	cfg := readServer(root, rel)
	cfg.File = file
	cfg.Limits = readLimits(root)
	cfg.AuthorizedKeys = rel(root.str("authorized_keys"))
	cfg.Keys = readKeys(root, cfg.AuthorizedKeys)
	cfg.Envs = readEnvs(root, rel, cfg.Keys)
	cfg.Notify = readNotify(root, rel, cfg.Envs)
	checkLayout(root, cfg)
	if len(doc.probs) > 0 {
		return nil, doc.err()
	}
	return cfg, nil
}

// relativeTo returns a function that makes a path from the file absolute and clean:
// relative paths are relative to the file's directory dir.
func relativeTo(dir string) func(string) string {
	return func(p string) string {
		if p == "" {
			return ""
		}
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(dir, p)
	}
}

// readServer reads the top-level keys but authorized_keys and env.
func readServer(root table, resolve func(string) string) *Server {
	cfg := &Server{ShutdownTimeout: root.duration("shutdown_timeout", defaultShutdown)}
	cfg.Listen = root.str("listen")
	if cfg.Listen == "" {
		cfg.Listen = defaultListen
	} else if problem := listenProblem(cfg.Listen); problem != "" {
		root.doc.addf("listen", "listen: %q %s", cfg.Listen, problem)
	}
	cfg.DataDir = resolve(root.str("data_dir"))
	if cfg.DataDir == "" {
		root.doc.addf("", "data_dir is required (where slipway keeps its repositories and state)")
	}
	cfg.HostKey = resolve(root.str("host_key"))
	if cfg.HostKey == "" && cfg.DataDir != "" {
		cfg.HostKey = filepath.Join(cfg.DataDir, "ssh_host_ed25519_key")
	}
	cfg.Web = readWeb(root)
	if cfg.MetricsListen = root.str("metrics_listen"); cfg.MetricsListen != "" {
		if problem := listenProblem(cfg.MetricsListen); problem != "" {
			root.doc.addf("metrics_listen", "metrics_listen: %q %s", cfg.MetricsListen, problem)
		}
	}
	switch cfg.Sandbox = root.str("sandbox"); cfg.Sandbox {
	case "":
		cfg.Sandbox = SandboxAuto
	case SandboxAuto, SandboxRequired, SandboxOff:
	default:
		root.doc.addf("sandbox", "sandbox: %q is not \"auto\", \"required\" or \"off\"", cfg.Sandbox)
	}
	return cfg
}

// readWeb reads the dashboard's keys (SPEC 12).
func readWeb(root table) Web {
	w := Web{
		Listen:        root.str("web_listen"),
		URL:           strings.TrimSuffix(root.str("web_url"), "/"),
		SessionTTL:    root.duration("web_session_ttl", DefaultWebSessionTTL),
		SecureCookies: root.boolean("web_secure_cookies"),
	}
	if w.Listen == "" {
		for _, k := range []string{"web_url", "web_session_ttl", "web_secure_cookies"} {
			if root.has(k) {
				root.doc.addf(k, "%s is set, but web_listen is not: the dashboard is off", k)
			}
		}
		return w
	}
	if problem := listenProblem(w.Listen); problem != "" {
		root.doc.addf("web_listen", "web_listen: %q %s", w.Listen, problem)
	}
	if w.SessionTTL < time.Minute || w.SessionTTL > 30*24*time.Hour {
		root.doc.addf("web_session_ttl", "web_session_ttl must be 1m to 720h")
	}
	if w.URL == "" {
		// The server makes it from the address it listens on (a port 0 made real).
	} else if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		root.doc.addf("web_url", "web_url: %q is not an http:// or https:// URL", w.URL)
	}
	return w
}

// listenProblem says what is wrong with a listen address, or "".
func listenProblem(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "is not host:port"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "has no valid port (0 to 65535)"
	}
	return ""
}

// readLimits reads the limits, each defaulting to DefaultLimits.
func readLimits(root table) Limits {
	l := Limits{
		MaxPushSize:        root.size("max_push_size", DefaultLimits.MaxPushSize),
		MaxReleaseSize:     root.size("max_release_size", DefaultLimits.MaxReleaseSize),
		MaxReleaseFiles:    int64(root.integer("max_release_files", int(DefaultLimits.MaxReleaseFiles))),
		HandshakeTimeout:   root.duration("handshake_timeout", DefaultLimits.HandshakeTimeout),
		MaxUnauthenticated: root.integer("max_unauthenticated", DefaultLimits.MaxUnauthenticated),
	}
	for _, k := range []struct {
		key string
		bad bool
	}{
		{"max_push_size", l.MaxPushSize <= 0},
		{"max_release_size", l.MaxReleaseSize <= 0},
		{"max_release_files", l.MaxReleaseFiles <= 0},
		{"handshake_timeout", root.has("handshake_timeout") && l.HandshakeTimeout <= 0},
		{"max_unauthenticated", l.MaxUnauthenticated <= 0},
	} {
		if k.bad && root.has(k.key) {
			root.doc.addf(k.key, "%s must be more than 0", k.key)
		}
	}
	return l
}

// checkLayout refuses deploy roots that would make slipway destroy what it should keep:
// the filesystem root, and a deploy root inside data_dir (the repositories and state) or
// holding it.
func checkLayout(root table, cfg *Server) {
	for i, e := range cfg.Envs {
		t := table{doc: root.doc, path: fmt.Sprintf("env.%d", i)}
		switch {
		case e.Path == "":
		case e.Path == string(filepath.Separator):
			t.doc.addf(t.key("path"), "%s: the deploy root cannot be /", t.name("path"))
		case cfg.DataDir != "" && overlaps(e.Path, cfg.DataDir):
			t.doc.addf(t.key("path"), "%s: %s overlaps data_dir %s (slipway's repositories and state)", t.name("path"), e.Path, cfg.DataDir)
		}
		checkWritable(t, cfg, e)
	}
}

// checkWritable refuses writable paths that would let a build write what slipway keeps:
// the filesystem root, data_dir, and any environment's deploy root.
func checkWritable(t table, cfg *Server, e Env) {
	for _, w := range e.Writable {
		switch {
		case w == string(filepath.Separator):
			t.doc.addf(t.key("writable"), "%s: / cannot be writable", t.name("writable"))
		case cfg.DataDir != "" && overlaps(w, cfg.DataDir):
			t.doc.addf(t.key("writable"), "%s: %s overlaps data_dir %s (slipway's repositories and state)", t.name("writable"), w, cfg.DataDir)
		default:
			for _, o := range cfg.Envs {
				if o.Path != "" && overlaps(w, o.Path) {
					t.doc.addf(t.key("writable"), "%s: %s overlaps the deploy root %s (of %s): slipway's releases and state", t.name("writable"), w, o.Path, o.Repo)
					break
				}
			}
		}
	}
}

// overlaps reports whether a and b are the same path or one holds the other.
func overlaps(a, b string) bool {
	return a == b || within(a, b) || within(b, a)
}

// readKeys reads the authorized_keys file keysFile. Its problems are the configuration's,
// each on the line of authorized_keys.
func readKeys(root table, keysFile string) []authkeys.Key {
	if keysFile == "" {
		root.doc.addf("", "authorized_keys is required (an OpenSSH authorized_keys file; each key's comment is its user name)")
		return nil
	}
	keys, err := authkeys.Parse(keysFile)
	if err != nil {
		// authkeys.Parse says file:line for each of its problems, one per line.
		for _, msg := range strings.Split(err.Error(), "\n") {
			root.doc.addf("authorized_keys", "authorized_keys: %s", msg)
		}
	}
	return keys
}

// readEnvs reads every [[env]], and checks that no two share a repo or a deploy root.
func readEnvs(root table, resolve func(string) string, keys []authkeys.Key) []Env {
	names := map[string]bool{}
	for _, k := range keys {
		names[k.Name] = true
	}
	tables := root.list("env")
	if len(tables) == 0 && !root.has("env") {
		root.doc.addf("", "no [[env]] configured: nothing can be deployed")
	}
	var envs []Env
	repos := map[string]string{} // repo -> the table that configures it
	type owned struct{ path, by string }
	var paths []owned // in the file's order, so problems come out in a stable order
	for _, t := range tables {
		e := readEnv(t, resolve, names)
		if e.Repo != "" {
			if other, dup := repos[e.Repo]; dup {
				t.doc.addf(t.key("repo"), "%s: repo %q is already configured by %s", t.name("repo"), e.Repo, other)
			}
			repos[e.Repo] = t.name("")
		}
		// "/" overlaps everything; checkLayout refuses it on its own.
		if e.Path != "" && e.Path != string(filepath.Separator) {
			for _, o := range paths {
				if o.path == e.Path || within(o.path, e.Path) || within(e.Path, o.path) {
					t.doc.addf(t.key("path"), "%s: %s overlaps the path of %s", t.name("path"), e.Path, strings.TrimSuffix(o.by, "."))
				}
			}
			paths = append(paths, owned{e.Path, t.name("")})
		}
		envs = append(envs, e)
	}
	return envs
}

// readEnv reads one [[env]]; keyNames are the authorized keys' names, for allow.
func readEnv(t table, resolve func(string) string, keyNames map[string]bool) Env {
	t.only("repo", "path", "branch", "keep_releases", "prune_grace", "release_files", "shared_files", "shared_dirs",
		"build", "test", "before_activate", "after_activate", "copy_dirs", "command_timeout", "allow", "vars",
		"writable", "memory_max", "pids_max", "cpu_weight", "on_failure", "health_check", "secrets", "mask_files", "env_file", "seed_shared_files", "cache_max_size",
		"targets", "target_identity", "target_known_hosts", "target_parallel", "before_activate_each")
	e := Env{
		Repo:            t.str("repo"),
		Path:            resolve(t.str("path")),
		Branch:          t.str("branch"),
		KeepReleases:    t.integer("keep_releases", defaultKeepReleases),
		PruneGrace:      t.duration("prune_grace", 0),
		CommandTimeout:  t.duration("command_timeout", defaultCommandTimeout),
		Allow:           t.strings("allow"),
		Recipe:          readRecipe(t),
		Vars:            readVars(t, "vars"),
		Secrets:         readVars(t, "secrets"),
		MaskFiles:       sharedPaths(t, "mask_files"),
		Writable:        readWritable(t, resolve),
		Box:             readBox(t),
		OnFailure:       t.str("on_failure"),
		HealthCheck:     readHealthCheck(t),
		SeedSharedFiles: t.boolean("seed_shared_files"),
		CacheMaxSize:    t.size("cache_max_size", DefaultCacheMaxSize),
	}
	e.Fleet = readFleet(t, resolve, e)
	if t.has("env_file") {
		switch c, ok := insideRelease(t, "env_file", t.str("env_file")); {
		case !ok:
		case slices.Contains(e.Recipe.SharedFiles, c):
			t.doc.addf(t.key("env_file"), "%s: %s is a shared file too: it is either the release's or shared", t.name("env_file"), c)
		default:
			e.EnvFile = c
		}
	}
	for _, kv := range e.Secrets {
		name, _, _ := strings.Cut(kv, "=")
		if slices.ContainsFunc(e.Vars, func(v string) bool { return strings.HasPrefix(v, name+"=") }) {
			t.doc.addf(t.key("secrets"), "%s.%s is in [env.vars] too", t.name("secrets"), name)
		}
	}
	switch e.OnFailure {
	case "":
		e.OnFailure = OnFailureRevert
	case OnFailureRevert, OnFailureKeep:
	default:
		t.doc.addf(t.key("on_failure"), "%s: %q is neither \"revert\" nor \"keep\"", t.name("on_failure"), e.OnFailure)
	}
	// t.name("") is "env[N]." with a trailing dot; name the table without it.
	where := strings.TrimSuffix(t.name(""), ".")
	switch {
	case !t.has("repo"):
		t.doc.addf(t.path, "%s: repo is required (\"APP/ENV\")", where)
	case reponame.Validate(e.Repo) != nil:
		t.doc.addf(t.key("repo"), "%s: %v", t.name("repo"), reponame.Validate(e.Repo))
	}
	if !t.has("path") {
		t.doc.addf(t.path, "%s: path is required (the deploy root: releases/, shared/, current)", where)
	}
	switch {
	case e.Branch == "":
		e.Branch = DefaultBranch
	case strings.HasPrefix(e.Branch, "refs/"):
		t.doc.addf(t.key("branch"), "%s: give the branch's name (%q), not its ref", t.name("branch"), strings.TrimPrefix(e.Branch, "refs/heads/"))
	case plumbing.NewBranchReferenceName(e.Branch).Validate() != nil || strings.HasPrefix(e.Branch, "-"):
		t.doc.addf(t.key("branch"), "%s: %q is not a valid branch name", t.name("branch"), e.Branch)
	}
	switch files := t.str("release_files"); files {
	case "", "copy":
	case "link":
		e.LinkFiles = true
	default:
		t.doc.addf(t.key("release_files"), "%s: %q is neither \"copy\" nor \"link\"", t.name("release_files"), files)
	}
	if e.KeepReleases < 1 {
		t.doc.addf(t.key("keep_releases"), "%s must be at least 1 (the live release)", t.name("keep_releases"))
	}
	if t.has("command_timeout") && e.CommandTimeout == 0 {
		t.doc.addf(t.key("command_timeout"), "%s must be more than 0", t.name("command_timeout"))
	}
	for _, name := range e.Allow {
		if !keyNames[name] {
			t.doc.addf(t.key("allow"), "%s: no authorized key is named %q", t.name("allow"), name)
		}
	}
	return e
}

// readFleet reads targets and the keys that go with them (SPEC 10). The identity and
// known_hosts are read now, so that a missing or malformed one is a configuration problem,
// not a failed deploy.
func readFleet(t table, resolve func(string) string, e Env) Fleet {
	f := Fleet{
		Identity:    resolve(t.str("target_identity")),
		KnownHosts:  resolve(t.str("target_known_hosts")),
		Parallel:    t.integer("target_parallel", DefaultTargetParallel),
		DialTimeout: 10 * time.Second,
		BeforeEach:  t.strings("before_activate_each"),
	}
	seen := map[string]bool{}
	for _, s := range t.strings("targets") {
		if s == fleet.Local {
			f.Local = true
			continue
		}
		tg, err := fleet.ParseTarget(s)
		if err != nil {
			t.doc.addf(t.key("targets"), "%s: %v", t.name("targets"), err)
			continue
		}
		if seen[tg.Addr()] {
			t.doc.addf(t.key("targets"), "%s: %s is listed twice", t.name("targets"), tg)
			continue
		}
		seen[tg.Addr()] = true
		f.Targets = append(f.Targets, tg)
	}
	if f.Parallel < 1 || f.Parallel > 100 {
		t.doc.addf(t.key("target_parallel"), "%s must be 1 to 100", t.name("target_parallel"))
	}
	if !f.Remote() {
		for _, k := range []string{"target_identity", "target_known_hosts", "target_parallel", "before_activate_each"} {
			if t.has(k) {
				t.doc.addf(t.key(k), "%s is set, but targets names no host", t.name(k))
			}
		}
		return f
	}
	switch {
	case f.Identity == "":
		t.doc.addf(t.key("targets"), "%s: target_identity is required with targets (the private key slipway logs in with)", t.name("targets"))
	case f.KnownHosts == "":
		t.doc.addf(t.key("targets"), "%s: target_known_hosts is required with targets (the host keys slipway accepts)", t.name("targets"))
	default:
		if _, err := fleet.NewDialer(f.Identity, f.KnownHosts, f.DialTimeout); err != nil {
			t.doc.addf(t.key("targets"), "%s: %v", t.name("targets"), err)
		}
	}
	return f
}

// readHealthCheck reads [env.health_check], nil if absent.
func readHealthCheck(t table) *HealthCheck {
	h, ok := t.sub("health_check")
	if !ok {
		return nil
	}
	h.only("url", "expect_status", "expect_body", "command", "interval", "timeout")
	hc := &HealthCheck{
		URL:          h.str("url"),
		ExpectStatus: h.integer("expect_status", 200),
		ExpectBody:   h.str("expect_body"),
		Command:      h.str("command"),
		Interval:     h.duration("interval", defaultHealthInterval),
		Timeout:      h.duration("timeout", defaultHealthTimeout),
	}
	where := strings.TrimSuffix(h.name(""), ".")
	switch {
	case (hc.URL == "") == (hc.Command == ""):
		h.doc.addf(h.path, "%s: set exactly one of url and command", where)
	case hc.URL != "":
		if u, err := url.Parse(hc.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			h.doc.addf(h.key("url"), "%s: %q is not an http:// or https:// URL", h.name("url"), hc.URL)
		}
	case h.has("expect_status") || h.has("expect_body"):
		h.doc.addf(h.path, "%s: expect_status and expect_body go with url, not command", where)
	}
	if hc.ExpectStatus < 100 || hc.ExpectStatus > 599 {
		h.doc.addf(h.key("expect_status"), "%s must be an HTTP status (100 to 599)", h.name("expect_status"))
	}
	if hc.Interval <= 0 {
		h.doc.addf(h.key("interval"), "%s must be more than 0", h.name("interval"))
	}
	if hc.Timeout <= 0 {
		h.doc.addf(h.key("timeout"), "%s must be more than 0", h.name("timeout"))
	}
	return hc
}

// readWritable reads writable: paths made absolute and clean, each once.
func readWritable(t table, resolve func(string) string) []string {
	var out []string
	for _, w := range t.strings("writable") {
		switch w = resolve(w); {
		case w == "":
			t.doc.addf(t.key("writable"), "%s: an empty path", t.name("writable"))
		case !slices.Contains(out, w):
			out = append(out, w)
		}
	}
	return out
}

// readBox reads memory_max, pids_max and cpu_weight.
func readBox(t table) Box {
	// -1 stands for "unset or already reported", so that a value is reported once.
	b := Box{
		MemoryMax: t.size("memory_max", -1),
		PidsMax:   t.integer("pids_max", -1),
		CPUWeight: t.integer("cpu_weight", -1),
	}
	if b.MemoryMax >= 0 && b.MemoryMax < minMemoryMax {
		t.doc.addf(t.key("memory_max"), "%s must be at least 16MiB", t.name("memory_max"))
	}
	if b.PidsMax >= 0 && b.PidsMax < minPidsMax {
		t.doc.addf(t.key("pids_max"), "%s must be at least %d", t.name("pids_max"), minPidsMax)
	}
	if b.CPUWeight >= 0 && (b.CPUWeight < 1 || b.CPUWeight > maxCPUWeight) {
		t.doc.addf(t.key("cpu_weight"), "%s must be from 1 to %d", t.name("cpu_weight"), maxCPUWeight)
	}
	b.MemoryMax, b.PidsMax, b.CPUWeight = max(b.MemoryMax, 0), max(b.PidsMax, 0), max(b.CPUWeight, 0)
	return b
}

// MinSecret is the shortest value [env.secrets] takes: a shorter one, masked, would hide
// every occurrence of a common string.
const MinSecret = 4

// readVars reads [env.vars] or [env.secrets] (key) as "K=V", sorted by name.
func readVars(t table, key string) []string {
	vars, ok := t.sub(key)
	if !ok {
		return nil
	}
	names := make([]string, 0, len(vars.m))
	for k := range vars.m {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []string
	for _, k := range names {
		v := vars.str(k)
		switch {
		case !varNameRe.MatchString(k):
			t.doc.addf(vars.key(k), "%s: not a valid environment variable name", vars.name(k))
		case strings.HasPrefix(k, "SLIPWAY_"):
			t.doc.addf(vars.key(k), "%s: SLIPWAY_* variables are set by slipway", vars.name(k))
		case key == "secrets" && len(v) < MinSecret:
			t.doc.addf(vars.key(k), "%s: a secret must be at least %d characters long, to be masked", vars.name(k), MinSecret)
		default:
			out = append(out, k+"="+v)
		}
	}
	return out
}

// within reports whether p is strictly inside dir.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..")
}

// Default is the embedded default (SPEC section 4): listen on 127.0.0.1:2222, keep
// state in ./.slipway/, authorize ~/.ssh/authorized_keys and ~/.ssh/*.pub, and create an
// environment under ./deploy/APP/ENV/ the first time an authorized key pushes to it.
func Default() (*Server, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("working directory: %w", err)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return nil, fmt.Errorf("home directory: %w", err)
	}
	cfg := &Server{
		Listen:          defaultListen,
		DataDir:         filepath.Join(wd, ".slipway"),
		DeployRoot:      filepath.Join(wd, "deploy"),
		Auto:            true,
		ShutdownTimeout: defaultShutdown,
		Limits:          DefaultLimits,
		Sandbox:         SandboxAuto,
	}
	cfg.HostKey = filepath.Join(cfg.DataDir, "ssh_host_ed25519_key")
	cfg.sshDir = filepath.Join(home, ".ssh")
	cfg.Keys, cfg.Notes, _ = cfg.ReadKeys() // the embedded default skips what does not parse, with notes
	if len(cfg.Keys) == 0 {
		cfg.Notes = append(cfg.Notes, "no SSH key in ~/.ssh/authorized_keys or ~/.ssh/*.pub, so nobody can push yet:"+
			" create one with `ssh-keygen -t ed25519 -C yourname`; slipway reads it as soon as it is there")
	}
	return cfg, nil
}

// KeyFiles are the files the authorized keys come from: authorized_keys, or for the
// embedded default ~/.ssh/authorized_keys and ~/.ssh/*.pub (some may not exist).
func (c *Server) KeyFiles() []string {
	if !c.Auto {
		return []string{c.AuthorizedKeys}
	}
	files := []string{filepath.Join(c.sshDir, "authorized_keys")}
	pubs, _ := filepath.Glob(filepath.Join(c.sshDir, "*.pub")) // its only error is a malformed pattern
	return append(files, pubs...)
}

// ReadKeys reads the authorized keys again from KeyFiles. With a configuration file, any
// problem is an error (one line per problem, each with file:line) and no key is returned:
// an operator who breaks the file keeps the keys in force. The embedded default goes on
// with the keys that parse and notes what it skipped.
func (c *Server) ReadKeys() (keys []authkeys.Key, notes []string, err error) {
	if !c.Auto {
		keys, err := authkeys.Parse(c.AuthorizedKeys)
		if err != nil {
			return nil, nil, err
		}
		return keys, nil, nil
	}
	seen := map[string]bool{}
	for _, f := range c.KeyFiles() {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			continue
		}
		parsed, err := authkeys.Parse(f)
		if err != nil {
			for _, msg := range strings.Split(err.Error(), "\n") {
				notes = append(notes, "skipped: "+msg)
			}
		}
		for _, k := range parsed {
			if id := string(k.Key.Marshal()); !seen[id] {
				seen[id] = true
				keys = append(keys, k)
			}
		}
	}
	return keys, notes, nil
}

// AutoEnv is the environment the embedded default creates for repo.
func (c *Server) AutoEnv(repo string) Env {
	return Env{
		Repo:           repo,
		Path:           filepath.Join(c.DeployRoot, filepath.FromSlash(repo)),
		Branch:         DefaultBranch,
		KeepReleases:   defaultKeepReleases,
		CommandTimeout: defaultCommandTimeout,
		Recipe:         Recipe{set: map[string]bool{}},
		OnFailure:      OnFailureRevert,
		CacheMaxSize:   DefaultCacheMaxSize,
	}
}
