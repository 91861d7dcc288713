package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/hooks"
	"github.com/slipway/slipway/internal/atomicfile"
	"github.com/slipway/slipway/internal/metrics"
	"github.com/slipway/slipway/internal/notify"
)

// addrFile is written in data_dir once the server listens: its address, for scripts and
// tests that start it on port 0.
const addrFile = "ssh.addr"

// reposDir is where the git server keeps the environments' repositories.
func reposDir(cfg *configs.Server) string { return filepath.Join(cfg.DataDir, "repos") }

// serve wires the configuration, the deploy pipeline and the git server, and serves until
// ctx ends; then it lets running deploys finish for shutdown_timeout and cancels the rest.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	file := configFlag(fs)
	listen := fs.String("listen", "", "address to listen on, overriding the configuration (port 0 picks one)")
	logFormat := fs.String("log-format", "json", "operator log format: json or console")
	logLevel := fs.String("log-level", "info", "least level logged: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	cfg, err := configs.Find(*file)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data_dir: %w", err)
	}
	repos := gitserver.Repositories{Dir: reposDir(cfg)}
	outbox := notify.NewOutbox(cfg.DataDir, notifyTargets(cfg), log.With().Str("component", "notify").Logger())
	var p *hooks.Pipeline
	var m *metrics.Metrics // nil without metrics_listen: nothing is recorded
	var observer hooks.Observer
	var gitObserver gitserver.Observer
	if cfg.MetricsListen != "" {
		m = metrics.New(func() []metrics.EnvState { return envStates(p) })
		observer, gitObserver = deployMetrics{m}, m
	}
	p, err = hooks.New(hooks.Config{
		Server:   cfg,
		Builder:  builder.New(builder.Config{}, log.With().Str("component", "builder").Logger()),
		Repos:    repos,
		Notify:   outbox,
		Observer: observer,
		Serving:  true,
	}, log.With().Str("component", "hooks").Logger())
	if err != nil {
		return err
	}
	// Notifications are delivered until the server has stopped: those of the deploys that
	// finish during the shutdown are queued, and delivered at the next start if not before.
	deliverCtx, stopDelivery := context.WithCancel(context.Background())
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		dv := notify.NewDeliverer(outbox)
		if m != nil {
			dv.Observe = m.Delivery
		}
		dv.Run(deliverCtx)
	}()
	defer func() {
		stopDelivery()
		<-delivered
	}()
	gh := gitHooks{p}
	srv, err := gitserver.New(gitserver.Config{
		HostKeyPath: cfg.HostKey,
		Keys:        cfg.Keys,
		ReposDir:    repos.Dir,
		Commands:    gh,
		Observer:    gitObserver,
	}, gh, log.With().Str("component", "gitserver").Logger())
	if err != nil {
		return err
	}
	dash, err := startWeb(cfg, p, srv, log.With().Str("component", "web").Logger())
	if err != nil {
		return err
	}
	defer dash.shutdown(context.Background()) // at once, if serve returns before the shutdown below
	msrv, err := startMetrics(cfg.MetricsListen, cfg.DataDir, m, log.With().Str("component", "metrics").Logger())
	if err != nil {
		return err
	}
	defer msrv.stop()
	srv.SetLimits(gitLimits(cfg.Limits))
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addr := l.Addr().String()
	if err := atomicfile.WriteFile(filepath.Join(cfg.DataDir, addrFile), []byte(addr+"\n"), 0o644); err != nil {
		l.Close() // the address file error is the one to report
		return fmt.Errorf("write address file: %w", err)
	}
	log.Info().Str("addr", addr).Str("host_key_fp", srv.HostKeyFingerprint()).
		Int("environments", len(cfg.Envs)).Int("keys", len(cfg.Keys)).Msg("listening")
	greet(stdout, cfg, addr, srv.HostKeyFingerprint())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	w := &watcher{file: *file, listen: *listen, cfg: cfg, srv: srv, p: p, outbox: outbox, log: log.With().Str("component", "reload").Logger()}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		w.run(watchCtx)
	}()
	defer func() {
		stopWatch()
		<-watched
	}()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info().Int64("timeout_ms", cfg.ShutdownTimeout.Milliseconds()).Msg("shutting down: waiting for running deploys")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	// The dashboard and the git server wait for the deploys they started, at once.
	dashDone := make(chan struct{})
	go func() {
		defer close(dashDone)
		dash.shutdown(sctx)
	}()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("running deploys were cancelled")
	}
	<-dashDone
	<-served
	p.Close()
	log.Info().Msg("stopped")
	return nil
}

// notifyTargets are the configuration's [[notify]], as the outbox takes them.
func notifyTargets(cfg *configs.Server) []notify.Target {
	var ts []notify.Target
	for _, n := range cfg.Notify {
		ts = append(ts, notify.Target{URL: n.URL, Events: n.Events, Repos: n.Repos, Secret: n.Secret, Slack: n.Slack})
	}
	return ts
}

// newLogger is the operator log: JSON (or console) on w, from level up.
func newLogger(w io.Writer, format, level string) (zerolog.Logger, error) {
	switch format {
	case "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format must be json or console, not %q", format)
	}
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" || lvl < zerolog.DebugLevel || lvl > zerolog.ErrorLevel {
		return zerolog.Logger{}, fmt.Errorf("--log-level must be debug, info, warn or error, not %q", level)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// greet prints what a newcomer needs to push: the host key ssh will ask about, and the two
// git lines.
func greet(w io.Writer, cfg *configs.Server, addr, hostKeyFP string) {
	repo, branch := "myapp/production", configs.DefaultBranch
	if len(cfg.Envs) > 0 {
		repo, branch = cfg.Envs[0].Repo, cfg.Envs[0].Branch
	}
	remote := repo[strings.LastIndexByte(repo, '/')+1:]
	fmt.Fprintf(w, "slipway %s listening on %s\n", version, addr)
	for _, n := range cfg.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if cfg.Auto {
		fmt.Fprintf(w, "no config file: state in %s, pushes create environments under %s/APP/ENV\n", cfg.DataDir, cfg.DeployRoot)
	}
	fmt.Fprintf(w, "host key %s (ssh asks you to accept it on the first push)\n", hostKeyFP)
	fmt.Fprintf(w, "  git remote add %s ssh://git@%s/%s\n", remote, addr, repo)
	fmt.Fprintf(w, "  git push %s %s\n", remote, branch)
}

// gitLimits are the limits the git server enforces. An object larger than a release may be
// is refused as it arrives: it could never be deployed.
func gitLimits(l configs.Limits) gitserver.Limits {
	return gitserver.Limits{
		HandshakeTimeout:   l.HandshakeTimeout,
		MaxUnauthenticated: l.MaxUnauthenticated,
		MaxPushSize:        l.MaxPushSize,
		MaxObjectSize:      l.MaxReleaseSize,
	}
}

// gitHooks hands the git server's pushes and commands to the deploy pipeline. The two
// packages share no types, so that neither imports the other; their types convert 1:1.
type gitHooks struct{ p *hooks.Pipeline }

var (
	_ gitserver.Deployer  = gitHooks{}
	_ gitserver.Commander = gitHooks{}
)

func (g gitHooks) Reserve(ctx context.Context, repo, pusher string, wait time.Duration) (gitserver.Target, func(), error) {
	t, release, err := g.p.Reserve(ctx, repo, pusher, wait)
	switch {
	case errors.Is(err, hooks.ErrBusy):
		err = busyError{err}
	case errors.Is(err, hooks.ErrFrozen):
		err = frozenError{err}
	}
	return gitserver.Target(t), release, err
}

func (g gitHooks) Inspect(repo, who string) (gitserver.Target, error) {
	t, err := g.p.Inspect(repo, who)
	return gitserver.Target(t), err
}

func (g gitHooks) Deploy(ctx context.Context, push gitserver.Push, out io.Writer) error {
	return g.p.Deploy(ctx, hooks.Push(push), out)
}

func (g gitHooks) RunCommand(ctx context.Context, who gitserver.Identity, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return g.p.RunCommand(ctx, hooks.Caller(who), args, stdin, stdout, stderr)
}

// busyError is the pipeline's busy environment as the git server knows it.
type busyError struct{ error }

func (e busyError) Unwrap() error      { return e.error }
func (busyError) Is(target error) bool { return target == gitserver.ErrBusy }

// frozenError is the pipeline's frozen environment as the git server knows it.
type frozenError struct{ error }

func (e frozenError) Unwrap() error      { return e.error }
func (frozenError) Is(target error) bool { return target == gitserver.ErrFrozen }

// keyPoll is how often the authorized keys' files are checked for changes.
const keyPoll = time.Second

// watcher applies what changes while slipway serves: the authorized keys as soon as their
// files change, and the whole configuration on SIGHUP. A file with problems changes nothing:
// every problem is logged and what is in force stays.
type watcher struct {
	file, listen string // --config and --listen, as given
	cfg          *configs.Server
	srv          *gitserver.Server
	p            *hooks.Pipeline
	outbox       *notify.Outbox
	log          zerolog.Logger
}

func (w *watcher) run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(keyPoll)
	defer tick.Stop()
	stamp := keysStamp(w.cfg)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			w.reload()
			stamp = keysStamp(w.cfg)
		case <-tick.C:
			if now := keysStamp(w.cfg); now != stamp {
				stamp = now
				w.reloadKeys()
			}
		}
	}
}

// keysStamp sums up the authorized keys' files (name, size, times, inode): it changes when
// any of them is written, replaced, added or removed.
func keysStamp(cfg *configs.Server) string {
	var b strings.Builder
	for _, f := range cfg.KeyFiles() {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			fmt.Fprintf(&b, "%s:-;", f)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d.%d:%d.%d:%d;", f, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Ino)
	}
	return b.String()
}

func (w *watcher) reloadKeys() {
	keys, notes, err := w.cfg.ReadKeys()
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			w.log.Error().Str("problem", line).Msg("authorized keys not reloaded: the keys in force stay")
		}
		return
	}
	for _, n := range notes {
		w.log.Warn().Str("note", n).Msg("authorized keys")
	}
	w.srv.SetKeys(keys)
	w.log.Info().Int("keys", len(keys)).Msg("authorized keys reloaded")
}

// reload reads the configuration again and applies it: keys, environments and limits at
// once; listen, data_dir, host_key and shutdown_timeout at the next start.
func (w *watcher) reload() {
	cfg, err := configs.Find(w.file)
	if err != nil {
		var pe configs.Problems
		if errors.As(err, &pe) {
			for _, pr := range pe {
				w.log.Error().Str("problem", pr.String()).Msg("configuration not reloaded: the one in force stays")
			}
		} else {
			w.log.Error().Err(err).Msg("configuration not reloaded: the one in force stays")
		}
		return
	}
	if w.listen != "" {
		cfg.Listen = w.listen
	}
	if err := w.p.Reload(cfg); err != nil {
		w.log.Error().Err(err).Msg("configuration not reloaded: the one in force stays")
		return
	}
	w.srv.SetKeys(cfg.Keys)
	w.srv.SetLimits(gitLimits(cfg.Limits))
	w.outbox.SetTargets(notifyTargets(cfg))
	if cfg.Listen != w.cfg.Listen || cfg.HostKey != w.cfg.HostKey || cfg.ShutdownTimeout != w.cfg.ShutdownTimeout ||
		cfg.MetricsListen != w.cfg.MetricsListen || cfg.Web != w.cfg.Web {
		w.log.Warn().Msg("listen, host_key, shutdown_timeout, metrics_listen or a web_ key changed: they take effect when slipway restarts")
	}
	w.cfg = cfg
	w.log.Info().Int("environments", len(cfg.Envs)).Int("keys", len(cfg.Keys)).Msg("configuration reloaded")
}
