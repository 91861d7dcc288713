package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/slipway/slipway/gitserver"
)

// The servers compared in every figure.
const (
	srvSlipway = "slipway"
	srvLink    = "slipway-link" // the same slipway process, environments with release_files = "link"
	srvSSH     = "ssh"          // stock git over the private OpenSSH sshd, pre-receive hook
	srvFile    = "file"         // the same hook over file:// (no SSH: a lower bound)
)

// bench is one run of the harness: what it made (to remove) and what it measured.
type bench struct {
	opts  *options
	start time.Time
	procs procs

	tmp       string // everything the harness writes, removed at the end unless -keep
	root      string // the slipway module (for building and for BENCHMARKS.md's command)
	bin       string // slipway binary under test
	binSource string // where it was built from
	env       []string
	key       string // the pusher's private key (authorized on both servers)
	authKeys  string
	signer    gossh.Signer
	sshd      *sshd
	slip      *slipwayServer

	machine machineInfo
	notes   []string // printed under the table: what was skipped and why, deviations
	// samples holds every measurement: key "figure|size|server" -> values (one per run).
	samples map[string][]float64
	// extra holds figures' details for the report (requests served, pack size, ...).
	extra map[string]string
	fig8  map[string]*loadResult
	// transports: what the OpenSSH client negotiates with each server, and its cost.
	transports map[string]transport
	// appOrder and appServers are figure 9's apps and their servers, in the order they ran.
	appOrder   []string
	appServers map[string][]string
	// load is the 1-minute load average at the start and end of each workload.
	load []string
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%5.0fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *bench) add(fig, sz, srv string, v float64) {
	k := fig + "|" + sz + "|" + srv
	b.samples[k] = append(b.samples[k], v)
}

func (b *bench) get(fig, sz, srv string) []float64 {
	return b.samples[fig+"|"+sz+"|"+srv]
}

// run is the whole benchmark.
func (b *bench) run(ctx context.Context) error {
	var err error
	b.tmp, err = os.MkdirTemp(b.opts.workdir, "slipway-bench-")
	if err != nil {
		return err
	}
	b.logf("working in %s", b.tmp)
	if b.root, err = moduleRoot(ctx); err != nil && b.opts.slipway == "" {
		return err
	}
	if b.opts.install {
		b.installPackages(ctx)
	}
	for _, tool := range []string{"git", "ssh", "ssh-keygen"} {
		if _, err := lookPath(tool); err != nil {
			return fmt.Errorf("%s is required: %w", tool, err)
		}
	}
	if err := b.setupClient(ctx); err != nil {
		return err
	}
	if err := b.prepareSlipway(ctx); err != nil {
		return err
	}
	b.machine = collectMachine(ctx, b.tmp, b.bin)

	sshdDir := filepath.Join(b.tmp, "sshd")
	if err := os.MkdirAll(sshdDir, 0o755); err != nil {
		return err
	}
	b.sshd, err = startSSHD(ctx, &b.procs, sshdDir, b.authKeys)
	if err != nil {
		return fmt.Errorf("baseline sshd: %w", err)
	}
	b.logf("sshd on 127.0.0.1:%d", b.sshd.port)

	switch {
	case b.opts.smoke:
		b.note("Figure 8 (zero downtime) skipped: -smoke runs no nginx and no load generator.")
	case !b.opts.zeroDown:
	case !slices.ContainsFunc(b.opts.sizes, func(s size) bool { return s.name == "small" }):
		b.note("Figure 8 (zero downtime) skipped: it runs with the small workload, which -sizes left out.")
	}
	for _, sz := range b.opts.sizes {
		if err := b.runSize(ctx, sz); err != nil {
			return fmt.Errorf("%s: %w", sz.name, err)
		}
	}
	if len(b.opts.apps) > 0 {
		if err := b.apps(ctx); err != nil {
			return fmt.Errorf("apps: %w", err)
		}
	}
	if b.opts.fleets {
		if err := b.fleets(ctx); err != nil {
			return fmt.Errorf("fleets: %w", err)
		}
	}
	b.sshd.stop(&b.procs)
	b.sshd = nil

	report := b.report()
	fmt.Println(report.table)
	if b.opts.out != "" {
		if err := os.WriteFile(b.opts.out, []byte(report.markdown), 0o644); err != nil {
			return err
		}
		b.logf("wrote %s", b.opts.out)
	}
	b.logf("done in %s", time.Since(b.start).Round(time.Second))
	return nil
}

// cleanup ends every process the harness started and removes its files (unless -keep).
func (b *bench) cleanup() {
	b.procs.stopAll()
	if b.sshd != nil && b.sshd.madeRun {
		os.Remove("/run/sshd")
	}
	if b.tmp == "" {
		return
	}
	if b.opts.keep {
		fmt.Fprintf(os.Stderr, "bench: kept %s\n", b.tmp)
		return
	}
	if err := os.RemoveAll(b.tmp); err != nil {
		fmt.Fprintf(os.Stderr, "bench: remove %s: %v\n", b.tmp, err)
	}
}

// setupClient makes the pusher's hermetic home and its key, authorized on both servers.
func (b *bench) setupClient(ctx context.Context) error {
	home := filepath.Join(b.tmp, "home")
	keys := filepath.Join(b.tmp, "keys")
	for _, d := range []string{home, keys} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	gitconfig := "[user]\n\tname = Bench\n\temail = bench@slipway.invalid\n[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n[gc]\n\tauto = 0\n"
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(gitconfig), 0o644); err != nil {
		return err
	}
	b.key = filepath.Join(keys, "bench")
	if _, err := run(ctx, nil, keys, time.Minute, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", b.key); err != nil {
		return err
	}
	pub, err := os.ReadFile(b.key + ".pub")
	if err != nil {
		return err
	}
	b.authKeys = filepath.Join(keys, "authorized_keys")
	if err := os.WriteFile(b.authKeys, pub, 0o644); err != nil {
		return err
	}
	if b.signer, err = loadSigner(b.key); err != nil {
		return err
	}
	b.env = gitEnv(home, b.key)
	return nil
}

// prepareSlipway takes -slipway or builds ./cmd/slipway; if the working tree does not
// compile (others may be mid-change), it builds the last commit from a temporary worktree.
func (b *bench) prepareSlipway(ctx context.Context) error {
	if b.opts.slipway != "" {
		b.bin = b.opts.slipway
		b.binSource = "prebuilt: " + b.bin
		return nil
	}
	out := filepath.Join(b.tmp, "bin", "slipway")
	desc, _ := run(ctx, nil, b.root, time.Minute, "git", "describe", "--always", "--dirty")
	desc = strings.TrimSpace(desc)
	b.logf("building ./cmd/slipway (%s)", desc)
	_, err := run(ctx, nil, b.root, 10*time.Minute, "go", "build", "-ldflags", "-X main.version="+desc, "-o", out, "./cmd/slipway")
	if err == nil {
		b.bin, b.binSource = out, "working tree "+desc
		return nil
	}
	b.logf("the working tree does not build; building HEAD from a temporary worktree:\n%s", tail(err.Error(), 600))
	wt := filepath.Join(b.tmp, "slipway-head")
	if _, werr := run(ctx, nil, b.root, 5*time.Minute, "git", "worktree", "add", "-q", "--detach", wt, "HEAD"); werr != nil {
		return fmt.Errorf("build slipway: %v; worktree of HEAD: %w", err, werr)
	}
	defer func() {
		run(context.WithoutCancel(ctx), nil, b.root, time.Minute, "git", "worktree", "remove", "--force", wt)
		run(context.WithoutCancel(ctx), nil, b.root, time.Minute, "git", "worktree", "prune")
	}()
	head, _ := run(ctx, nil, wt, time.Minute, "git", "rev-parse", "--short=12", "HEAD")
	head = strings.TrimSpace(head)
	if _, err := run(ctx, nil, wt, 10*time.Minute, "go", "build", "-ldflags", "-X main.version="+head, "-o", out, "./cmd/slipway"); err != nil {
		return fmt.Errorf("build slipway at HEAD: %w", err)
	}
	b.bin, b.binSource = out, "HEAD "+head+" (the working tree did not compile)"
	b.note("slipway was built from HEAD %s: the working tree's ./cmd/slipway did not compile. Figure 5 still measures the releaser package compiled into the harness, i.e. the working tree's.", head)
	return nil
}

// runSize runs every figure of one workload.
func (b *bench) runSize(ctx context.Context, sz size) error {
	dir := filepath.Join(b.tmp, sz.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !b.opts.keep {
		defer os.RemoveAll(dir)
	}
	b.logf("%s: generating the workload", sz.name)
	w, err := generate(ctx, b.env, dir, sz)
	if err != nil {
		return err
	}
	b.extra["files|"+sz.name] = fmt.Sprint(w.files)
	b.extra["bytes|"+sz.name] = fmt.Sprint(w.bytes)
	b.logf("%s: %d files, %.1f MB, base %s", sz.name, w.files, float64(w.bytes)/1e6, w.base[:12])

	b.load = append(b.load, fmt.Sprintf("%s start %s", sz.name, loadAvg()))
	defer func() { b.load = append(b.load, fmt.Sprintf("%s end %s", sz.name, loadAvg())) }()

	runs := b.opts.runsFor(sz)
	zd := b.opts.zeroDown && sz.name == "small"
	var envs []slipwayEnv
	for r := 1; r <= runs; r++ {
		envs = append(envs,
			slipwayEnv{repo: fmt.Sprintf("bench/first%d", r), path: filepath.Join(dir, "slipway", "deploy", fmt.Sprintf("first%d", r))},
			slipwayEnv{repo: fmt.Sprintf("bench/link%d", r), path: filepath.Join(dir, "slipway", "deploy", fmt.Sprintf("link%d", r)), link: true},
			slipwayEnv{repo: fmt.Sprintf("bench/ingest%d", r), path: filepath.Join(dir, "slipway", "deploy", fmt.Sprintf("ingest%d", r))})
	}
	if zd {
		envs = append(envs, slipwayEnv{repo: "bench/zd", path: filepath.Join(dir, "slipway", "deploy", "zd")})
	}
	// A fresh slipway per workload: its peak RSS (VmHWM) after the first push is that push's.
	b.slip, err = startSlipway(ctx, &b.procs, b.bin, filepath.Join(dir, "slipway"), b.authKeys, envs)
	if err != nil {
		return err
	}
	defer func() {
		if b.slip != nil {
			b.slip.stop(&b.procs)
			b.slip = nil
		}
	}()
	if hwm, err := vmHWM(b.slip.pid()); err == nil {
		b.extra["idle|"+sz.name] = fmt.Sprintf("%.1f", float64(hwm)/(1<<20))
	}

	if b.transports == nil {
		b.transports = map[string]transport{
			srvSlipway: b.probeSSH(ctx, "git", b.slip.port(), 5),
			srvSSH:     b.probeSSH(ctx, b.sshd.user, b.sshd.port, 5),
		}
	}

	servers := []string{srvSlipway, srvLink, srvSSH, srvFile}
	for r := 1; r <= runs; r++ {
		for i := range servers {
			srv := servers[(i+r-1)%len(servers)] // rotate who goes first
			b.logf("%s: run %d/%d: %s: first push, incremental push, rollback", sz.name, r, runs, srv)
			if err := b.pushCycle(ctx, w, dir, srv, r); err != nil {
				return fmt.Errorf("%s run %d: %w", srv, r, err)
			}
		}
	}
	// A fresh slipway again, so that its peak RSS after the first ingest (a push rejected
	// before checkout) is the pack ingest's alone.
	b.slip.stop(&b.procs)
	b.slip = nil
	if b.slip, err = startSlipway(ctx, &b.procs, b.bin, filepath.Join(dir, "slipway"), b.authKeys, envs); err != nil {
		return err
	}
	if err := b.ingest(ctx, w, dir, runs); err != nil {
		return fmt.Errorf("pack ingest: %w", err)
	}
	if !b.opts.smoke && sz.name == b.opts.sizes[len(b.opts.sizes)-1].name {
		// Once per run, with the last workload's slipway: the pack of a past (deltas).
		b.logf("history: generating %d commits", historyCommits+1)
		hw, err := generateHistory(ctx, b.env, dir)
		if err != nil {
			return fmt.Errorf("history: %w", err)
		}
		if err := b.ingest(ctx, hw, dir, runs); err != nil {
			return fmt.Errorf("pack ingest (history): %w", err)
		}
		os.RemoveAll(hw.repo)
	}
	if err := b.materialise(ctx, w, dir, runs); err != nil {
		return fmt.Errorf("materialise: %w", err)
	}
	if zd {
		if err := b.zeroDowntime(ctx, w, dir); err != nil {
			return fmt.Errorf("zero downtime: %w", err)
		}
	}
	return nil
}

// target is where one server's push goes.
type target struct {
	url    string
	deploy string // deploy root (current, releases/)
	repo   string // the server's bare repository, removed after the cycle
}

func (b *bench) target(ctx context.Context, srv, dir, name string) (target, error) {
	switch srv {
	case srvSlipway, srvLink:
		if srv == srvLink {
			name = "link" + strings.TrimPrefix(name, "first")
		}
		repo := "bench/" + name
		return target{url: b.slip.url(repo), deploy: filepath.Join(dir, "slipway", "deploy", name), repo: b.slip.repoDir(repo)}, nil
	default:
		t := target{deploy: filepath.Join(dir, srv, "deploy", name), repo: filepath.Join(dir, srv, name+".git")}
		if err := newBaselineRepo(ctx, b.env, t.repo, t.deploy, buildCommand); err != nil {
			return t, err
		}
		if srv == srvSSH {
			t.url = b.sshd.url(t.repo)
		} else {
			t.url = "file://" + t.repo
		}
		return t, nil
	}
}

// pushCycle is figures 1, 2, 3, 6 and 7 for one server and one run: the first push of the
// application to a new environment, an incremental push (one file changed), and a rollback
// to the first release (kept).
func (b *bench) pushCycle(ctx context.Context, w *workload, dir, srv string, r int) error {
	sz := w.size.name
	t, err := b.target(ctx, srv, dir, fmt.Sprintf("first%d", r))
	if err != nil {
		return err
	}
	defer func() {
		os.RemoveAll(t.deploy)
		os.RemoveAll(t.repo)
	}()
	current := filepath.Join(t.deploy, "current")

	// 1 (and 6 on the first run): the first push.
	syncAll()
	var sampler *rssSampler
	if r == 1 {
		switch srv {
		case srvSlipway:
			sampler = startRSSSampler(b.slip.pid(), false, "", 10*time.Millisecond)
		case srvSSH:
			sampler = startRSSSampler(b.sshd.proc.cmd.Process.Pid, true, "", 10*time.Millisecond)
		case srvFile:
			sampler = startRSSSampler(os.Getpid(), true, "git-receive", 10*time.Millisecond)
		}
	}
	off := b.slipLogSize(srv)
	first, err := timedPush(ctx, b.env, w.repo, t.url, w.base, false, current)
	if sampler != nil {
		peak := sampler.Stop()
		b.add("6s", sz, srv, float64(peak)/(1<<20))
		if srv == srvSlipway {
			if hwm, err := vmHWM(b.slip.pid()); err == nil {
				b.add("6", sz, srv, float64(hwm)/(1<<20))
			}
		} else {
			b.add("6", sz, srv, float64(peak)/(1<<20))
		}
	}
	if err != nil {
		return fmt.Errorf("first push: %w", err)
	}
	b.addPush("1", sz, srv, first, b.serverTook(srv, off, w.base, first))

	// 2: one file changed.
	syncAll()
	freeBefore, ferr := freeBytes(t.deploy)
	off = b.slipLogSize(srv)
	inc, err := timedPush(ctx, b.env, w.repo, t.url, w.inc, false, current)
	if err != nil {
		return fmt.Errorf("incremental push: %w", err)
	}
	// 7fs: what the filesystem itself lost to the incremental push (its release, the pack,
	// the logs): unlike inode counting it sees extents shared by reflinks.
	syncAll()
	if freeAfter, err := freeBytes(t.deploy); ferr == nil && err == nil {
		b.add("7fs", sz, srv, float64(freeBefore-freeAfter)/1e6)
	}
	b.addPush("2", sz, srv, inc, b.serverTook(srv, off, w.inc, inc))

	// 7: what the incremental release added on disk.
	added, full, err := releaseDisk(filepath.Join(t.deploy, "releases", w.inc), filepath.Join(t.deploy, "releases", w.base))
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	b.add("7", sz, srv, 100*float64(added)/float64(full))
	b.add("7added", sz, srv, float64(added)/1e6)
	b.add("7full", sz, srv, float64(full)/1e6)

	// 3: rollback to the first release, which is kept.
	syncAll()
	off = b.slipLogSize(srv)
	back, err := timedPush(ctx, b.env, w.repo, t.url, w.base, true, current)
	if err != nil {
		return fmt.Errorf("rollback push: %w", err)
	}
	if isSlipway(srv) && !strings.Contains(back.Stderr, "is kept") {
		return fmt.Errorf("rollback was not a re-activation of the kept release:\n%s", tail(back.Stderr, 2000))
	}
	b.addPush("3", sz, srv, back, b.serverTook(srv, off, w.base, back))
	return nil
}

// isSlipway reports whether srv is slipway (in either release_files mode).
func isSlipway(srv string) bool { return srv == srvSlipway || srv == srvLink }

func (b *bench) slipLogSize(srv string) int64 {
	if !isSlipway(srv) {
		return 0
	}
	return b.slip.logSize()
}

// serverTook is the server's own time for a deploy: slipway's Deploy "took_ms" from its log,
// the hook's runtime for the baselines.
func (b *bench) serverTook(srv string, off int64, sha string, res pushResult) time.Duration {
	if isSlipway(srv) {
		return b.slip.deployTook(off, sha)
	}
	return res.Server
}

// addPush records one timed push under figure fig: time to live, push exit, the server's
// own time and the client-side phases.
func (b *bench) addPush(fig, sz, srv string, res pushResult, server time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.add(fig, sz, srv, ms(res.Live))
	b.add(fig+"exit", sz, srv, ms(res.Exit))
	if server > 0 {
		b.add(fig+"server", sz, srv, ms(server))
	}
	if d, ok := res.Marks["deploying"]; ok {
		b.add(fig+"recv", sz, srv, ms(d))
		if c, ok := res.Marks["checkout"]; ok {
			b.add(fig+"checkout", sz, srv, ms(c-d))
			if l, ok := res.Marks["live"]; ok {
				b.add(fig+"build", sz, srv, ms(l-c))
			}
		}
	}
}

// ingest is figure 4: the same pack (a first push of the workload) sent to slipway and to
// git receive-pack over SSH, and given to a local git index-pack.
func (b *bench) ingest(ctx context.Context, w *workload, dir string, runs int) error {
	pack := filepath.Join(dir, "ingest.pack")
	n, err := makePack(ctx, b.env, w.repo, w.bad, pack)
	if err != nil {
		return err
	}
	defer os.Remove(pack)
	w.pack = n
	mb := float64(n) / 1e6
	b.extra["pack|"+w.size.name] = fmt.Sprintf("%.1f", mb)
	for r := 1; r <= runs; r++ {
		b.logf("%s: run %d/%d: pack ingest (%.1f MB pack)", w.size.name, r, runs, mb)
		order := []string{srvSlipway, srvSSH, srvFile}
		for i := range order {
			srv := order[(i+r-1)%len(order)]
			syncAll()
			var took time.Duration
			switch srv {
			case srvSlipway:
				repo := fmt.Sprintf("bench/ingest%d", r)
				took, err = rawReceivePack(ctx, b.slip.addr, "git", b.signer, fmt.Sprintf("git-receive-pack '%s'", repo), w.bad, pack)
				if r == 1 && err == nil {
					if hwm, herr := vmHWM(b.slip.pid()); herr == nil {
						b.add("6ingest", w.size.name, srv, float64(hwm)/(1<<20))
					}
				}
				os.RemoveAll(b.slip.repoDir(repo))
			case srvSSH:
				repo := filepath.Join(dir, "ssh", fmt.Sprintf("ingest%d.git", r))
				if err := newBaselineRepo(ctx, b.env, repo, "", ""); err != nil {
					return err
				}
				took, err = rawReceivePack(ctx, fmt.Sprintf("127.0.0.1:%d", b.sshd.port), b.sshd.user, b.signer,
					fmt.Sprintf("git-receive-pack '%s'", repo), w.bad, pack)
				os.RemoveAll(repo)
			case srvFile:
				repo := filepath.Join(dir, "file", fmt.Sprintf("ingest%d.git", r))
				if err := newBaselineRepo(ctx, b.env, repo, "", ""); err != nil {
					return err
				}
				f, ferr := os.Open(pack)
				if ferr != nil {
					return ferr
				}
				start := time.Now()
				_, err = runIn(ctx, b.env, repo, 10*time.Minute, f, "git", "index-pack", "--stdin")
				took = time.Since(start)
				f.Close()
				os.RemoveAll(repo)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", srv, err)
			}
			b.add("4", w.size.name, srv, mb/took.Seconds())
			b.add("4ms", w.size.name, srv, float64(took)/float64(time.Millisecond))
		}
	}
	return nil
}

// materialise is figure 5: writing the tree of the first commit, from a bare repository
// holding the pack a push produces, with slipway's releaser.Materialize, git archive | tar,
// git worktree add, and cp -a of a tree already written.
func (b *bench) materialise(ctx context.Context, w *workload, dir string, runs int) error {
	repos := filepath.Join(dir, "mat-repos")
	src := gitserver.RepoDir(repos, matRepo)
	if _, err := run(ctx, b.env, dir, 10*time.Minute, "git", "clone", "-q", "--bare", "--no-local", w.repo, src); err != nil {
		return err
	}
	defer os.RemoveAll(repos)
	tree := filepath.Join(dir, "mat-src")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(tree)
	if _, err := sh(ctx, b.env, dir, 10*time.Minute, fmt.Sprintf("git --git-dir=%q archive --format=tar %s | tar -x -C %q", src, w.base, tree)); err != nil {
		return err
	}
	out := filepath.Join(dir, "mat-out")
	methods := []string{"slipway", "archive", "worktree", "cp"}
	for r := 1; r <= runs; r++ {
		b.logf("%s: run %d/%d: materialise", w.size.name, r, runs)
		for i := range methods {
			m := methods[(i+r-1)%len(methods)]
			os.RemoveAll(out)
			syncAll()
			var took time.Duration
			var err error
			switch m {
			case "slipway":
				var files int
				took, files, err = materializeSlipway(ctx, repos, w.base, out)
				if err == nil && files != w.files {
					err = fmt.Errorf("materialize wrote %d files, the tree has %d", files, w.files)
				}
			case "archive":
				if err = os.MkdirAll(out, 0o755); err == nil {
					start := time.Now()
					_, err = sh(ctx, b.env, dir, 10*time.Minute, fmt.Sprintf("git --git-dir=%q archive --format=tar %s | tar -x -C %q", src, w.base, out))
					took = time.Since(start)
				}
			case "worktree":
				start := time.Now()
				_, err = run(ctx, b.env, dir, 10*time.Minute, "git", "--git-dir="+src, "worktree", "add", "-q", "--detach", out, w.base)
				took = time.Since(start)
				os.RemoveAll(out)
				run(ctx, b.env, dir, time.Minute, "git", "--git-dir="+src, "worktree", "prune")
			case "cp":
				start := time.Now()
				_, err = run(ctx, b.env, dir, 10*time.Minute, "cp", "-a", tree, out)
				took = time.Since(start)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			b.add("5", w.size.name, m, float64(w.files)/took.Seconds())
			b.add("5ms", w.size.name, m, float64(took)/float64(time.Millisecond))
		}
	}
	os.RemoveAll(out)
	return nil
}

// moduleRoot is the directory of the slipway module (go.mod), from the current directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := run(ctx, nil, "", time.Minute, "go", "env", "GOMOD")
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(out)
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the benchmark from inside the slipway module (or give -slipway)")
	}
	return filepath.Dir(gomod), nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// loadAvg is the 1, 5 and 15-minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
