package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Figure 9 deploys real applications, whose dependencies come from the public registries: a
// Node (Express) app from the npm registry and a Go web app from the Go module proxy. What
// it measures is the common push: one source file changed, dependencies not. Where a
// registry cannot be reached, the app's rows are skipped with a note; nothing fails.

// The servers of figure 9.
const (
	appCopy    = "slipway copy_dirs"          // copy_dirs with a key: node_modules copied when the lockfile is the live one's
	appInstall = "slipway copy_dirs, install" // the same, but a build that always runs npm install
	appPlain   = "slipway"                    // no copy_dirs: every release installs (from a warm cache)
	appFloor   = "floor"                      // node_modules linked from shared/, no install: checkout + tests alone
	appHook    = "hook (ssh)"                 // git + OpenSSH + the pre-receive hook of figure 1, same commands
)

// Pinned versions: the report names them, and every run installs the same packages.
const (
	expressVersion = "4.21.2"
	chiVersion     = "v5.2.3"
)

// app is one real application and how each server deploys it.
type app struct {
	name    string // "node", "go"
	label   string // what the report calls it, with versions and sizes
	src     string // the pusher's repository (a work tree)
	base    string // the first push
	incs    []string
	build   string // the build, identical on every server
	test    string // the test
	servers []appServer
	depsDir string // the floor's prebuilt node_modules ("" for Go)
}

// appServer is one way of deploying an app.
type appServer struct {
	name   string
	config string // slipway's TOML lines for its environment ("" for the hook)
}

var copyLine = regexp.MustCompile(`copy node_modules from [0-9a-f]+: [0-9,]+ files, [^(]*\(([0-9.]+[µm]?s)\)`)

// apps runs figure 9 for every app -apps names.
func (b *bench) apps(ctx context.Context) error {
	dir := filepath.Join(b.tmp, "apps")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !b.opts.keep {
		defer os.RemoveAll(dir)
	}
	var list []*app
	for _, name := range b.opts.apps {
		var a *app
		var err error
		b.logf("apps: generating the %s app (its dependencies come from the public registry)", name)
		switch name {
		case "node", "node-api":
			a, err = b.nodeApp(ctx, dir, name)
		case "go":
			a, err = b.goApp(ctx, dir)
		}
		if err != nil {
			b.note("Figure 9 (%s app) skipped: %s", name, firstLine(err.Error()))
			b.logf("apps: %s skipped: %v", name, err)
			continue
		}
		list = append(list, a)
	}
	if len(list) == 0 {
		return nil
	}
	// What the workloads before left in the page cache makes every new page cost a
	// reclaim on a small VM, which would weigh on whoever writes most; figure 9 starts
	// with the cache dropped (root only), and its first pushes warm what it reads.
	if err := dropCaches(); err != nil {
		b.note("Figure 9 ran with the page cache as the figures before left it: %v.", err)
	}
	b.load = append(b.load, "apps start "+loadAvg())
	defer func() { b.load = append(b.load, "apps end "+loadAvg()) }()

	var envs []slipwayEnv
	for _, a := range list {
		for _, s := range a.servers {
			if s.config == "" {
				continue
			}
			e := slipwayEnv{repo: appRepo(a, s), path: filepath.Join(dir, "slipway", "deploy", appSlug(a, s)), config: s.config}
			if s.name == appFloor {
				// checkout + tests alone: the dependencies are already in shared/.
				if err := os.MkdirAll(filepath.Join(e.path, "shared"), 0o755); err != nil {
					return err
				}
				if _, err := run(ctx, nil, dir, 5*time.Minute, "cp", "-a", a.depsDir, filepath.Join(e.path, "shared", "node_modules")); err != nil {
					return err
				}
			}
			envs = append(envs, e)
		}
	}
	slip, err := startSlipway(ctx, &b.procs, b.bin, filepath.Join(dir, "slipway"), b.authKeys, envs)
	if err != nil {
		return err
	}
	defer slip.stop(&b.procs)

	for _, a := range list {
		targets := map[string]target{}
		for _, s := range a.servers {
			if s.config != "" {
				targets[s.name] = target{url: slip.url(appRepo(a, s)), deploy: filepath.Join(dir, "slipway", "deploy", appSlug(a, s))}
				continue
			}
			t := target{deploy: filepath.Join(dir, "hook", a.name, "deploy"), repo: filepath.Join(dir, "hook", a.name+".git")}
			if err := newBaselineRepo(ctx, b.env, t.repo, t.deploy, hookCommand(a)); err != nil {
				return err
			}
			t.url = b.sshd.url(t.repo)
			targets[s.name] = t
		}
		// The first push: every cache cold (slipway's build cache is per environment; the
		// hook's, in its home, is shared by its apps). Recorded, not the figure.
		for _, s := range a.servers {
			b.logf("apps: %s: first push to %s", a.name, s.name)
			t := targets[s.name]
			res, err := timedPush(ctx, b.env, a.src, t.url, a.base, false, filepath.Join(t.deploy, "current"))
			if err != nil {
				return fmt.Errorf("%s app, %s, first push: %w", a.name, s.name, err)
			}
			b.add("9first", a.name, s.name, ms(res.Live))
			if err := b.waitSpare(ctx, a, s, t, a.base); err != nil {
				return err
			}
		}
		// The figure: one source file changed, dependencies not; the servers take turns
		// going first.
		for r, sha := range a.incs {
			for i := range a.servers {
				s := a.servers[(i+r)%len(a.servers)]
				t := targets[s.name]
				b.logf("apps: %s: run %d/%d: one-file change to %s", a.name, r+1, len(a.incs), s.name)
				syncAll()
				res, err := timedPush(ctx, b.env, a.src, t.url, sha, false, filepath.Join(t.deploy, "current"))
				if err != nil {
					return fmt.Errorf("%s app, %s, run %d: %w", a.name, s.name, r+1, err)
				}
				b.add("9", a.name, s.name, ms(res.Live))
				if err := b.waitSpare(ctx, a, s, t, sha); err != nil {
					return err
				}
				if m := copyLine.FindStringSubmatch(res.Stderr); m != nil {
					if d, err := time.ParseDuration(m[1]); err == nil {
						b.add("9copy", a.name, s.name, ms(d))
					}
				}
				if r == len(a.incs)-1 {
					prev := a.base
					if r > 0 {
						prev = a.incs[r-1]
					}
					added, _, err := releaseDisk(filepath.Join(t.deploy, "releases", sha), filepath.Join(t.deploy, "releases", prev))
					if err != nil {
						return fmt.Errorf("%s app, %s: disk: %w", a.name, s.name, err)
					}
					b.add("9disk", a.name, s.name, float64(added)/1e6)
				}
			}
		}
		b.extra["app|"+a.name] = a.label
		b.extra["appcmd|"+a.name] = fmt.Sprintf("build `%s`, test `%s`", a.build, a.test)
		b.appOrder = append(b.appOrder, a.name)
		b.appServers[a.name] = serverNames(a.servers)
	}
	return nil
}

// dropCaches writes the dirty pages out and drops the clean page cache.
func dropCaches() error {
	syncAll()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

// waitSpare waits, for a server with copy_dirs, until slipway has copied node_modules ahead
// for the next deploy (in the background, after the push ended), so that no push of the
// figure runs beside that copy; it records how long after the push it was ready ("9spare").
func (b *bench) waitSpare(ctx context.Context, a *app, s appServer, t target, sha string) error {
	if !strings.Contains(s.config, "copy_dirs") {
		return nil
	}
	start := time.Now()
	pattern := filepath.Join(t.deploy, ".slipway", "spare", sha+"-*", "spare.json")
	for {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			b.add("9spare", a.name, s.name, ms(time.Since(start)))
			return nil
		}
		if time.Since(start) > 2*time.Minute {
			return fmt.Errorf("%s app, %s: no spare of node_modules for %s after %s", a.name, s.name, sha[:12], time.Since(start).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func serverNames(ss []appServer) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.name)
	}
	return out
}

// appSlug names a server's environment of an app: "node-copy".
func appSlug(a *app, s appServer) string {
	slug := strings.NewReplacer("slipway", "", "copy_dirs", "copy", ",", "", " ", "").Replace(s.name)
	if slug == "" {
		slug = "plain"
	}
	return a.name + "-" + slug
}

func appRepo(a *app, s appServer) string { return "apps/" + appSlug(a, s) }

// hookCommand is what the hook runs in a new release: the app's build, then its test, with
// the PATH of the harness (sshd gives its sessions a minimal one, without Go's directory).
func hookCommand(a *app) string {
	return fmt.Sprintf("export PATH=%s; { %s; } && { %s; }", shellQuote(os.Getenv("PATH")), a.build, a.test)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// envLines is the TOML of one app environment: the shared files of figure 1, the build, the
// test and extra lines.
func envLines(build, test string, sharedDirs []string, extra string) string {
	dirs := append([]string{"storage"}, sharedDirs...)
	quoted := make([]string, len(dirs))
	for i, d := range dirs {
		quoted[i] = fmt.Sprintf("%q", d)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "shared_files = [\".env\"]\nshared_dirs = [%s]\n", strings.Join(quoted, ", "))
	if build != "" {
		fmt.Fprintf(&b, "build = [%q]\n", build)
	}
	fmt.Fprintf(&b, "test = [%q]\n", test)
	b.WriteString(extra)
	return b.String()
}

// commitApp commits the work tree src as the first push, then one commit per run, each
// changing one source file with edit(run).
func (b *bench) commitApp(ctx context.Context, a *app, file string, edit func(int) string) error {
	steps := [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"commit", "-qm", "the app"}}
	for _, s := range steps {
		if _, err := run(ctx, b.env, a.src, time.Minute, "git", s...); err != nil {
			return err
		}
	}
	sha, err := run(ctx, b.env, a.src, time.Minute, "git", "rev-parse", "HEAD")
	if err != nil {
		return err
	}
	a.base = strings.TrimSpace(sha)
	for r := 1; r <= b.opts.runs; r++ {
		if err := os.WriteFile(filepath.Join(a.src, file), []byte(edit(r)), 0o644); err != nil {
			return err
		}
		if _, err := run(ctx, b.env, a.src, time.Minute, "git", "commit", "-qam", fmt.Sprintf("change %d", r)); err != nil {
			return err
		}
		sha, err := run(ctx, b.env, a.src, time.Minute, "git", "rev-parse", "HEAD")
		if err != nil {
			return err
		}
		a.incs = append(a.incs, strings.TrimSpace(sha))
	}
	return nil
}

// nodeApp writes an Express app in the shape express-generator gives (express, ejs, morgan,
// cookie-parser, http-errors, debug; mocha and supertest for its tests), resolves its
// lockfile from the npm registry, and installs it once for the floor.
func (b *bench) nodeApp(ctx context.Context, dir, name string) (*app, error) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := lookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (apt-get install npm)", tool)
		}
	}
	a := &app{name: name, src: filepath.Join(dir, name+"-src"),
		build: "[ -d node_modules ] || npm ci --no-audit --no-fund", test: "npm test"}
	for name, body := range nodeFiles {
		p := filepath.Join(a.src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(a.src, "package.json"), packageJSON(nodeDeps[name]), 0o644); err != nil {
		return nil, err
	}
	env := append(b.env[:len(b.env):len(b.env)], "npm_config_cache="+filepath.Join(dir, "npm-cache"))
	if _, err := run(ctx, env, a.src, 5*time.Minute, "npm", "install", "--no-audit", "--no-fund"); err != nil {
		return nil, fmt.Errorf("the npm registry could not be reached (npm install): %w", err)
	}
	if _, err := run(ctx, env, a.src, 2*time.Minute, "npm", "test"); err != nil {
		return nil, fmt.Errorf("the app's tests fail before any deploy: %w", err)
	}
	a.depsDir = filepath.Join(dir, name+"-deps")
	if err := os.Rename(filepath.Join(a.src, "node_modules"), a.depsDir); err != nil {
		return nil, err
	}
	lock, err := os.ReadFile(filepath.Join(a.src, "package-lock.json"))
	if err != nil {
		return nil, err
	}
	var l struct {
		Packages map[string]json.RawMessage `json:"packages"`
	}
	if err := json.Unmarshal(lock, &l); err != nil {
		return nil, fmt.Errorf("package-lock.json: %w", err)
	}
	files, bytes, err := treeSize(a.depsDir)
	if err != nil {
		return nil, err
	}
	nodeV, _ := run(ctx, nil, "", time.Minute, "node", "--version")
	npmV, _ := run(ctx, nil, "", time.Minute, "npm", "--version")
	a.label = fmt.Sprintf("Express %s %s: %d npm packages, node_modules %d files, %.1f MB; node %s, npm %s",
		expressVersion, nodeDeps[name].what, len(l.Packages)-1, files, float64(bytes)/1e6, strings.TrimSpace(nodeV), strings.TrimSpace(npmV))
	if err := b.commitApp(ctx, a, "version.js", func(r int) string { return fmt.Sprintf("module.exports = 'v%d';\n", r+1) }); err != nil {
		return nil, err
	}
	key := `copy_dirs = [{ path = "node_modules", key = ["package-lock.json"] }]` + "\n"
	a.servers = []appServer{
		{name: appCopy, config: envLines(a.build, a.test, nil, key)},
		{name: appInstall, config: envLines("npm install --no-audit --no-fund", a.test, nil, key)},
		{name: appPlain, config: envLines(a.build, a.test, nil, "")},
		{name: appFloor, config: envLines("", a.test, []string{"node_modules"}, "")},
		{name: appHook},
	}
	return a, nil
}

// goApp writes a Go web service (chi router, an in-memory store, tests of both) and
// resolves its go.sum from the Go module proxy.
func (b *bench) goApp(ctx context.Context, dir string) (*app, error) {
	if _, err := lookPath("go"); err != nil {
		return nil, fmt.Errorf("go is not installed: %w", err)
	}
	a := &app{name: "go", src: filepath.Join(dir, "go-src"), build: "go build -o bin/app .", test: "go test ./..."}
	for name, body := range goFiles {
		p := filepath.Join(a.src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(body, "CHI_VERSION", chiVersion)), 0o644); err != nil {
			return nil, err
		}
	}
	env := append(b.env[:len(b.env):len(b.env)], "GOMODCACHE="+filepath.Join(dir, "gomod"), "GOCACHE="+filepath.Join(dir, "gocache"),
		"GOFLAGS=-modcacherw", "GOTOOLCHAIN=local")
	if _, err := run(ctx, env, a.src, 5*time.Minute, "go", "mod", "tidy"); err != nil {
		return nil, fmt.Errorf("the Go module proxy could not be reached (go mod tidy): %w", err)
	}
	goV, _ := run(ctx, nil, "", time.Minute, "go", "env", "GOVERSION")
	a.label = fmt.Sprintf("Go web service: chi %s, 3 packages with tests; %s", chiVersion, strings.TrimSpace(goV))
	edit := func(r int) string {
		return strings.Replace(goFiles["internal/api/version.go"], `"v1"`, fmt.Sprintf(`"v%d"`, r+1), 1)
	}
	if err := b.commitApp(ctx, a, "internal/api/version.go", edit); err != nil {
		return nil, err
	}
	a.servers = []appServer{
		{name: appPlain, config: envLines(a.build, a.test, nil, "")},
		{name: appHook},
	}
	return a, nil
}

// treeSize counts the regular files under dir and their bytes.
func treeSize(dir string) (files int, bytes int64, err error) {
	err = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			files++
			bytes += fi.Size()
		}
		return nil
	})
	return files, bytes, err
}

// nodeDeps are the Node apps' dependencies: "node" in the shape express-generator gives,
// "node-api" an API with what such services commonly add (security headers, validation,
// auth, logging, an ORM, an HTTP client; lint and dev tools), near the 68 MB node_modules
// of the report that opened the issue.
var nodeDeps = map[string]struct {
	what      string
	deps, dev []string
}{
	"node": {"app (express-generator's shape)",
		[]string{"express@" + expressVersion, "ejs@3.1.10", "morgan@1.10.0", "cookie-parser@1.4.7", "http-errors@2.0.0", "debug@2.6.9"},
		[]string{"mocha@10.8.2", "supertest@7.0.0"}},
	"node-api": {"API (common production dependencies and dev tools)",
		[]string{"express@" + expressVersion, "ejs@3.1.10", "morgan@1.10.0", "cookie-parser@1.4.7", "http-errors@2.0.0", "debug@2.6.9",
			"helmet@8.0.0", "cors@2.8.5", "compression@1.7.5", "dotenv@16.4.7", "joi@17.13.3", "jsonwebtoken@9.0.2", "bcryptjs@2.4.3",
			"winston@3.17.0", "axios@1.7.9", "lodash@4.17.21", "dayjs@1.11.13", "uuid@11.0.3", "pg@8.13.1", "sequelize@6.37.5"},
		[]string{"mocha@10.8.2", "supertest@7.0.0", "eslint@8.57.1", "nodemon@3.1.9", "prettier@3.4.2"}},
}

// packageJSON is the app's package.json with deps ("name@version").
func packageJSON(d struct {
	what      string
	deps, dev []string
}) []byte {
	pin := func(list []string) map[string]string {
		m := map[string]string{}
		for _, nv := range list {
			i := strings.LastIndexByte(nv, '@')
			m[nv[:i]] = nv[i+1:]
		}
		return m
	}
	b, _ := json.MarshalIndent(map[string]any{
		"name": "bench-app", "version": "1.0.0", "private": true,
		"scripts":         map[string]string{"start": "node bin/www", "test": "mocha --reporter dot"},
		"dependencies":    pin(d.deps),
		"devDependencies": pin(d.dev),
	}, "", "  ")
	return append(b, '\n')
}

// nodeFiles is the Node app.
var nodeFiles = map[string]string{
	".gitignore": "node_modules/\n",
	"app.js": `const express = require('express');
const path = require('path');
const cookieParser = require('cookie-parser');
const logger = require('morgan');
const createError = require('http-errors');

const app = express();
app.set('views', path.join(__dirname, 'views'));
app.set('view engine', 'ejs');
if (process.env.NODE_ENV !== 'test') app.use(logger('dev'));
app.use(express.json({ limit: '64kb' }));
app.use(cookieParser());
app.use('/', require('./routes/index'));
app.use((req, res, next) => next(createError(404)));
app.use((err, req, res, next) => res.status(err.status || 500).json({ error: err.message }));
module.exports = app;
`,
	"bin/www": `#!/usr/bin/env node
const app = require('../app');
const port = process.env.PORT || 3000;
app.listen(port, '127.0.0.1', () => console.log('listening on ' + port));
`,
	"routes/index.js": `const router = require('express').Router();
const version = require('../version');

router.get('/', (req, res) => res.render('index', { title: 'bench', version }));
router.get('/health', (req, res) => res.json({ ok: true, version }));
router.post('/echo', (req, res) => res.json(req.body));
module.exports = router;
`,
	"version.js":       "module.exports = 'v1';\n",
	"views/index.ejs":  "<!doctype html>\n<h1><%= title %></h1>\n<p>version <%= version %></p>\n",
	"test/app.test.js": nodeTest,
}

const nodeTest = `process.env.NODE_ENV = 'test';
const assert = require('assert');
const request = require('supertest');
const app = require('../app');

describe('app', () => {
  it('renders the index', () => request(app).get('/').expect(200).expect(/<h1>bench<\/h1>/));
  it('reports its health', () =>
    request(app).get('/health').expect(200).then((res) => assert.strictEqual(res.body.ok, true)));
  it('echoes JSON', () => request(app).post('/echo').send({ a: 1 }).expect(200, { a: 1 }));
  it('answers 404 for what it does not serve', () => request(app).get('/nope').expect(404));
});
`

// goFiles is the Go app.
var goFiles = map[string]string{
	"go.mod": "module example.com/benchapp\n\ngo 1.22\n\nrequire github.com/go-chi/chi/v5 CHI_VERSION\n",
	"main.go": `package main

import (
	"log"
	"net/http"
	"os"

	"example.com/benchapp/internal/api"
	"example.com/benchapp/internal/store"
)

func main() {
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	log.Fatal(http.ListenAndServe(addr, api.Router(store.New())))
}
`,
	"internal/store/store.go": `// Package store keeps notes in memory.
package store

import (
	"errors"
	"sort"
	"sync"
)

// ErrNotFound is Get's error for an unknown id.
var ErrNotFound = errors.New("not found")

// Note is one note.
type Note struct {
	ID   int    ` + "`json:\"id\"`" + `
	Text string ` + "`json:\"text\"`" + `
}

// Store is safe for concurrent use.
type Store struct {
	mu    sync.Mutex
	next  int
	notes map[int]Note
}

// New returns an empty store.
func New() *Store { return &Store{next: 1, notes: map[int]Note{}} }

// Add stores a note.
func (s *Store) Add(text string) Note {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := Note{ID: s.next, Text: text}
	s.notes[n.ID] = n
	s.next++
	return n
}

// Get returns the note id.
func (s *Store) Get(id int) (Note, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.notes[id]
	if !ok {
		return Note{}, ErrNotFound
	}
	return n, nil
}

// List returns every note by id.
func (s *Store) List() []Note {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Note, 0, len(s.notes))
	for _, n := range s.notes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
`,
	"internal/store/store_test.go": `package store

import "testing"

func TestAddGet(t *testing.T) {
	s := New()
	n := s.Add("hello")
	got, err := s.Get(n.ID)
	if err != nil || got.Text != "hello" {
		t.Fatalf("Get = %v, %v", got, err)
	}
	if _, err := s.Get(99); err != ErrNotFound {
		t.Fatalf("Get(99) = %v", err)
	}
	if len(s.List()) != 1 {
		t.Fatal("List")
	}
}
`,
	"internal/api/version.go": "package api\n\n// Version is what /health reports.\nconst Version = \"v1\"\n",
	"internal/api/api.go": `// Package api is the HTTP interface.
package api

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"example.com/benchapp/internal/store"
)

// Router serves the notes of s.
func Router(s *store.Store) http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.RequestID, middleware.Recoverer)
	r.Get("/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": Version})
	})
	r.Route("/notes", func(r chi.Router) {
		r.Get("/", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.List()) })
		r.Post("/", func(w http.ResponseWriter, r *http.Request) {
			var in struct{ Text string }
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&in); err != nil || in.Text == "" {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "text required"})
				return
			}
			writeJSON(w, http.StatusCreated, s.Add(in.Text))
		})
		r.Get("/{id}", func(w http.ResponseWriter, r *http.Request) {
			id, err := strconv.Atoi(chi.URLParam(r, "id"))
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad id"})
				return
			}
			n, err := s.Get(id)
			if err != nil {
				writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, n)
		})
	})
	return r
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
`,
	"internal/api/api_test.go": `package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"example.com/benchapp/internal/store"
)

func TestNotes(t *testing.T) {
	srv := httptest.NewServer(Router(store.New()))
	defer srv.Close()
	res, err := http.Post(srv.URL+"/notes/", "application/json", strings.NewReader(` + "`" + `{"text":"hi"}` + "`" + `))
	if err != nil || res.StatusCode != http.StatusCreated {
		t.Fatalf("post: %v %v", res, err)
	}
	res, err = http.Get(srv.URL + "/notes/1")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("get: %v %v", res, err)
	}
	res, err = http.Get(srv.URL + "/health")
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("health: %v %v", res, err)
	}
}
`,
}

// appTarget is one summary row of figure 9: server against base, with the target.
type appTarget struct {
	app, server, base, what string
	max                     float64 // the ratio's target; 0: none
}

// appTargets are the summary rows of figure 9 for the apps that ran: the targets.
func appTargets(apps []string) []appTarget {
	var out []appTarget
	for _, a := range apps {
		if a == "go" {
			out = append(out, appTarget{a, appPlain, appHook, "Go app: one-file change to live (baseline: the hook, same commands)", 0.5})
			continue
		}
		what := "Node app (" + a + "): one-file change to live, "
		out = append(out,
			appTarget{a, appCopy, appHook, what + "copy_dirs (baseline: the hook, same commands)", 0.25},
			appTarget{a, appCopy, appFloor, what + "copy_dirs (baseline column: checkout + tests alone, node_modules linked from shared/)", 1.3},
			appTarget{a, appPlain, appHook, what + "slipway without copy_dirs (baseline: the hook)", 0},
			appTarget{a, appInstall, appHook, what + "copy_dirs with a build that always runs npm install (baseline: the hook)", 0})
	}
	return out
}

// appRows are figure 9's rows of the summary table.
func (b *bench) appRows() []row {
	var rows []row
	for _, t := range appTargets(b.appOrder) {
		s, h := median(b.get("9", t.app, t.server)), median(b.get("9", t.app, t.base))
		if s == 0 || h == 0 {
			continue
		}
		rs, r := ratio(s, h)
		rw := row{figure: "9. " + t.what, size: t.app, slip: fmtMS(s), ssh: fmtMS(h), file: "—", ratio: rs, target: "—", met: "—"}
		if t.max > 0 {
			rw.target, rw.met = fmt.Sprintf("≤ %.2gx", t.max), yesNo(r <= t.max)
		}
		rows = append(rows, rw)
	}
	return rows
}

// appSection is figure 9's part of BENCHMARKS.md.
func (b *bench) appSection() string {
	if len(b.appOrder) == 0 {
		return ""
	}
	var w strings.Builder
	w.WriteString("## Real applications (figure 9)\n\n")
	w.WriteString("Each app is generated by the harness and its dependencies come from the public registry (pinned versions), so every run installs the same packages. ")
	w.WriteString("Every server runs the same commands in each new release. The first push of each environment starts with cold caches and is recorded, not the figure; ")
	w.WriteString("then each run pushes one commit that changes one source file (dependencies unchanged) to every server in turn, the servers taking turns to go first. ")
	w.WriteString("Time = from just before `git push` until `current` names the new release.\n\n")
	w.WriteString("- `slipway copy_dirs`: `copy_dirs = [{ path = \"node_modules\", key = [\"package-lock.json\"] }]`; the build installs only when `node_modules` is missing, i.e. when slipway did not copy it because the lockfile changed (or on a first deploy). After each deploy slipway copies `node_modules` of the live release ahead, in the background, and the next deploy takes that copy with a rename; the harness waits for that copy before the next push of the figure (column \"copied ahead\": how long after the push it was ready), so that no push runs beside it.\n")
	w.WriteString("- `slipway copy_dirs, install`: the same copy, with a build that always runs `npm install --no-audit --no-fund` (which finds nothing to do).\n")
	w.WriteString("- `slipway`: no `copy_dirs`; every release installs, from the environment's warm build cache (`SLIPWAY_CACHE_DIR`, where slipway points npm's and Go's caches).\n")
	w.WriteString("- `floor`: checkout + tests alone: `node_modules` is linked from `shared/` and there is no build.\n")
	w.WriteString("- `hook (ssh)`: stock git over OpenSSH with the pre-receive hook of figure 1 running the same build and test; its home's npm and Go caches stay warm from push to push, as a hand-made hook's would.\n\n")
	for _, name := range b.appOrder {
		fmt.Fprintf(&w, "**%s** (%s): %s.\n\n", name, b.extra["app|"+name], b.extra["appcmd|"+name])
		w.WriteString("| server | first push (cold caches) | one-file change, median | of which copy_dirs | copied ahead, after the push (background) | disk added per release | ratio to the hook |\n|---|---|---|---|---|---|---|\n")
		hook := median(b.get("9", name, appHook))
		for _, srv := range b.appServers[name] {
			v := median(b.get("9", name, srv))
			rs, _ := ratio(v, hook)
			fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %s | %s |\n", srv, fmtMS(median(b.get("9first", name, srv))), fmtMS(v),
				fmtMS(median(b.get("9copy", name, srv))), fmtMS(median(b.get("9spare", name, srv))), fmtNum(median(b.get("9disk", name, srv)), "MB"), rs)
		}
		w.WriteString("\n")
	}
	return w.String()
}
