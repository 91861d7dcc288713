package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/hooks"
	"github.com/slipway/slipway/releaser"
)

// maxRepoConfig bounds the pushed tree's slipway.toml: it is read whole.
const maxRepoConfig = 1 << 20

// pipeline is the deploy pipeline: the one place that knows the order of a deploy. It
// implements gitserver.Deployer by composing the releaser (the deploy root on disk), the
// builder (build and test commands) and the hooks (after_activate).
type pipeline struct {
	cfg     *config
	builder *builder.Builder
	log     zerolog.Logger

	mu   sync.Mutex // guards envs (the embedded default adds environments while serving)
	envs map[string]*environment
}

// environment is one configured (or, in the embedded default, created) environment.
type environment struct {
	cfg envConfig
	rel *releaser.Releaser
}

var _ gitserver.Deployer = (*pipeline)(nil)

// errUnknownEnvironment is a push to a repo no [[env]] configures.
var errUnknownEnvironment = errors.New("unknown environment")

// newPipeline opens every environment and recovers it from whatever a crash left behind:
// build processes still running are ended, half-made releases removed, current checked.
func newPipeline(cfg *config, b *builder.Builder, log zerolog.Logger) (*pipeline, error) {
	p := &pipeline{cfg: cfg, builder: b, log: log, envs: map[string]*environment{}}
	envs := cfg.envs
	if cfg.auto {
		repos, err := loadRegistry(cfg.dataDir)
		if err != nil {
			return nil, err
		}
		for _, r := range repos {
			envs = append(envs, cfg.autoEnv(r))
		}
	}
	for _, ec := range envs {
		if _, err := p.open(ec); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// open recovers one environment and adds it. Callers adding at serve time hold p.mu.
func (p *pipeline) open(ec envConfig) (*environment, error) {
	log := p.log.With().Str("repo", ec.repo).Logger()
	n, err := builder.KillLeftovers("SLIPWAY_DEPLOY_PATH=" + ec.path)
	if err != nil {
		return nil, fmt.Errorf("end leftover builds of %s: %w", ec.repo, err)
	}
	if n > 0 {
		log.Warn().Int("killed", n).Msg("ended build processes left by a previous run")
	}
	rel, err := releaser.New(releaser.Config{
		Path:         ec.path,
		KeepReleases: ec.keepReleases,
		PruneGrace:   ec.pruneGrace,
	}, log.With().Str("component", "releaser").Logger())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ec.repo, err)
	}
	if err := rel.Recover(); err != nil {
		return nil, fmt.Errorf("recover %s: %w", ec.repo, err)
	}
	e := &environment{cfg: ec, rel: rel}
	p.envs[ec.repo] = e
	return e, nil
}

// environment returns repo's environment. The embedded default creates it on first use.
func (p *pipeline) environment(repo string) (*environment, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.envs[repo]; ok {
		return e, nil
	}
	if !p.cfg.auto {
		return nil, fmt.Errorf("%w %s", errUnknownEnvironment, repo)
	}
	e, err := p.open(p.cfg.autoEnv(repo))
	if err != nil {
		return nil, err
	}
	repos := make([]string, 0, len(p.envs))
	for r := range p.envs {
		repos = append(repos, r)
	}
	if err := saveRegistry(p.cfg.dataDir, repos); err != nil {
		delete(p.envs, repo)
		return nil, err
	}
	p.log.Info().Str("repo", repo).Str("path", e.cfg.path).Msg("environment created")
	return e, nil
}

// Reserve checks that pusher may push to repo and takes its deploy lock.
func (p *pipeline) Reserve(repo, pusher string) (gitserver.Target, func(), error) {
	var none gitserver.Target
	e, err := p.environment(repo)
	if errors.Is(err, errUnknownEnvironment) {
		return none, nil, err
	}
	if err != nil {
		p.log.Error().Err(err).Str("repo", repo).Str("pusher", pusher).Msg("open environment")
		return none, nil, fmt.Errorf("%s is not available: see the server log", repo)
	}
	if len(e.cfg.allow) > 0 && !contains(e.cfg.allow, pusher) {
		return none, nil, fmt.Errorf("%s may not push to %s", pusher, repo)
	}
	unlock, err := e.rel.Lock(pusher)
	if err != nil {
		var le *releaser.LockedError
		if errors.As(err, &le) {
			return none, nil, fmt.Errorf("%s is busy: %w", repo, err)
		}
		p.log.Error().Err(err).Str("repo", repo).Msg("lock environment")
		return none, nil, fmt.Errorf("%s cannot be locked: see the server log", repo)
	}
	live, err := e.rel.Current()
	if err != nil {
		unlock()
		p.log.Error().Err(err).Str("repo", repo).Msg("read current")
		return none, nil, fmt.Errorf("%s: cannot read the live release: see the server log", repo)
	}
	return gitserver.Target{Branch: e.cfg.branch, Live: live}, unlock, nil
}

// Deploy turns one accepted push into the live release of its environment.
func (p *pipeline) Deploy(ctx context.Context, push gitserver.Push, out io.Writer) (err error) {
	log := p.log.With().Str("repo", push.Repo).Str("sha", push.NewSHA).
		Str("pusher", push.Pusher).Str("key_fp", push.KeyFingerprint).Logger()
	start := time.Now()
	p.mu.Lock()
	e := p.envs[push.Repo]
	p.mu.Unlock()
	if e == nil {
		return fmt.Errorf("%w %s", errUnknownEnvironment, push.Repo)
	}

	logFile, lerr := e.rel.LogFile(push.NewSHA)
	if lerr != nil {
		log.Error().Err(lerr).Msg("open deploy log")
	} else {
		defer logFile.Close()
		out = &tee{pusher: out, log: &capped{w: logFile, left: maxLogBytes}}
	}
	defer func() {
		ev := log.Info()
		if err != nil {
			ev = log.Warn().Err(err)
			say(out, "deploy of %s failed after %s: %v", short(push.NewSHA), since(start), err)
		}
		ev.Dur("took", time.Since(start)).Msg("deploy finished")
	}()

	previous, err := e.rel.Current()
	if err != nil {
		log.Error().Err(err).Msg("read current")
		return errors.New("cannot read the live release: see the server log")
	}
	log = log.With().Str("old_sha", previous).Logger()
	log.Info().Msg("deploy started")
	say(out, "deploying %s to %s (pushed by %s)", short(push.NewSHA), push.Repo, push.Pusher)

	rc, err := p.recipe(e, push, out)
	if err != nil {
		return err
	}
	d := &deploy{p: p, e: e, push: push, previous: previous, recipe: rc, log: log}
	if e.rel.IsComplete(push.NewSHA) {
		return d.reactivate(ctx, out)
	}
	return d.build(ctx, out)
}

// recipe merges the pushed tree's slipway.toml under the server's settings.
func (p *pipeline) recipe(e *environment, push gitserver.Push, out io.Writer) (recipe, error) {
	commit, err := object.GetCommit(push.Objects, plumbing.NewHash(push.NewSHA))
	if err != nil {
		return recipe{}, fmt.Errorf("read commit %s: %w", short(push.NewSHA), err)
	}
	f, err := commit.File("slipway.toml")
	if errors.Is(err, object.ErrFileNotFound) {
		return e.cfg.recipe, nil
	}
	if err != nil {
		return recipe{}, fmt.Errorf("read slipway.toml: %w", err)
	}
	if f.Size > maxRepoConfig {
		return recipe{}, fmt.Errorf("slipway.toml is larger than %d bytes", maxRepoConfig)
	}
	text, err := f.Contents()
	if err != nil {
		return recipe{}, fmt.Errorf("read slipway.toml: %w", err)
	}
	own, err := parseRepoRecipe(text)
	if err != nil {
		var pe problemsError
		if errors.As(err, &pe) && len(pe) > 0 {
			// The report line has room for one problem; the pusher sees them all above it.
			for _, pr := range pe {
				say(out, "%s", pr)
			}
			return recipe{}, fmt.Errorf("%s", pe[0])
		}
		return recipe{}, err
	}
	return own.over(e.cfg.recipe), nil
}

// deploy is one run of the pipeline for one push.
type deploy struct {
	p        *pipeline
	e        *environment
	push     gitserver.Push
	previous string
	recipe   recipe
	log      zerolog.Logger
}

// build writes a new release, runs its build and test commands, and activates it. Any
// failure before the swap removes the release and leaves current as it was.
func (d *deploy) build(ctx context.Context, out io.Writer) (err error) {
	rel, sha := d.e.rel, d.push.NewSHA
	defer func() {
		if err == nil {
			return
		}
		if derr := rel.Discard(sha); derr != nil {
			d.log.Error().Err(derr).Msg("remove failed release")
		}
	}()

	say(out, "checkout %s", short(sha))
	start := time.Now()
	stats, err := rel.Materialize(ctx, d.push.Objects, sha, out)
	if err != nil {
		d.log.Warn().Err(err).Msg("checkout failed")
		return fmt.Errorf("checkout: %s", safeReason(ctx, err))
	}
	indent(out, "%d files, %s written (%s)", stats.Files, humanBytes(stats.Bytes), since(start))
	if err := d.linkShared(out); err != nil {
		return err
	}

	steps := d.steps()
	for _, phase := range []struct {
		name string
		cmds []string
	}{{"build", d.recipe.build}, {"test", d.recipe.test}} {
		for i, c := range phase.cmds {
			name := fmt.Sprintf("%s %d/%d", phase.name, i+1, len(phase.cmds))
			if err := steps.RunStep(ctx, name, c, out); err != nil {
				return err
			}
		}
	}
	if ctx.Err() != nil {
		return errors.New("cancelled: the pusher disconnected")
	}
	if err := rel.Complete(sha); err != nil {
		d.log.Error().Err(err).Msg("record release complete")
		return errors.New("cannot record the release: see the server log")
	}
	return d.activate(out)
}

// reactivate makes a kept release live again without a rebuild.
func (d *deploy) reactivate(ctx context.Context, out io.Writer) error {
	say(out, "releases/%s is kept: activating it without a rebuild", short(d.push.NewSHA))
	if err := d.linkShared(out); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errors.New("cancelled: the pusher disconnected")
	}
	return d.activate(out)
}

func (d *deploy) linkShared(out io.Writer) error {
	if len(d.recipe.sharedFiles)+len(d.recipe.sharedDirs) == 0 {
		return nil
	}
	start := time.Now()
	say(out, "link shared: %s", strings.Join(append(append([]string{}, d.recipe.sharedFiles...), d.recipe.sharedDirs...), ", "))
	if err := d.e.rel.LinkShared(d.push.NewSHA, d.recipe.sharedFiles, d.recipe.sharedDirs); err != nil {
		var me *releaser.MissingSharedError
		if errors.As(err, &me) {
			return err
		}
		d.log.Warn().Err(err).Msg("link shared failed")
		return fmt.Errorf("link shared: %s", safeReason(context.Background(), err))
	}
	indent(out, "linked (%s)", since(start))
	return nil
}

// activate swaps current, runs after_activate and prunes. From the swap on, the pusher
// hanging up changes nothing: the release is live and its hooks run to the end.
func (d *deploy) activate(out io.Writer) error {
	sha := d.push.NewSHA
	start := time.Now()
	wasLive, err := d.e.rel.Activate(sha)
	if err != nil {
		d.log.Error().Err(err).Msg("activate failed")
		return errors.New("activate: cannot swap current: see the server log")
	}
	say(out, "live: current -> releases/%s (%s)", sha, since(start))
	d.log.Info().Bool("rollback", wasLive).Msg("release activated")

	steps := d.steps()
	if wasLive {
		steps.env = append(steps.env, "SLIPWAY_ROLLBACK=1")
	}
	h := hooks.Hooks{AfterActivate: d.recipe.afterActivate}
	if err := h.Fire(context.WithoutCancel(context.Background()), hooks.AfterActivate, steps, out); err != nil {
		d.log.Warn().Err(err).Msg("after_activate failed")
		say(out, "warning: %v; the release stays live", err)
	}

	removed, err := d.e.rel.Prune()
	if err != nil {
		d.log.Error().Err(err).Msg("prune failed")
		say(out, "warning: old releases could not be pruned: see the server log")
	}
	if len(removed) > 0 {
		d.log.Info().Strs("removed", removed).Msg("releases pruned")
		say(out, "pruned %d old release(s)", len(removed))
	}
	return nil
}

// steps is the runner for this deploy's commands, with the environment SPEC section 5 names.
func (d *deploy) steps() *stepRunner {
	dir := d.e.rel.Dir(d.push.NewSHA)
	env := []string{
		"SLIPWAY_REPO=" + d.push.Repo,
		"SLIPWAY_BRANCH=" + d.push.Branch,
		"SLIPWAY_SHA=" + d.push.NewSHA,
		"SLIPWAY_PREVIOUS_SHA=" + d.previous,
		"SLIPWAY_RELEASE_DIR=" + dir,
		"SLIPWAY_DEPLOY_PATH=" + d.e.rel.Path(),
		"SLIPWAY_PUSHER=" + d.push.Pusher,
	}
	env = append(env, d.e.cfg.vars...)
	for _, k := range []string{"PATH", "HOME", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return &stepRunner{b: d.p.builder, dir: dir, env: env, timeout: d.e.cfg.commandTimeout, log: d.log}
}

// stepRunner runs one named command with a header and its duration.
type stepRunner struct {
	b       *builder.Builder
	dir     string
	env     []string
	timeout time.Duration
	log     zerolog.Logger
}

var _ hooks.Runner = (*stepRunner)(nil)

func (s *stepRunner) RunStep(ctx context.Context, name, command string, out io.Writer) error {
	say(out, "%s: %s", name, command)
	start := time.Now()
	err := s.b.Run(ctx, builder.Command{Name: name, Run: command, Dir: s.dir, Env: s.env, Timeout: s.timeout}, out)
	s.log.Info().Str("step", name).Dur("took", time.Since(start)).AnErr("error", err).Msg("step finished")
	if err != nil {
		var ee *builder.ExitError
		if !errors.As(err, &ee) {
			s.log.Error().Err(err).Str("step", name).Msg("step could not run")
			return fmt.Errorf("%s: could not run: see the server log", name)
		}
		indent(out, "%s failed (%s)", name, since(start))
		return err
	}
	indent(out, "%s ok (%s)", name, since(start))
	return nil
}

// safeReason is the part of err fit for the pusher: no server paths.
func safeReason(ctx context.Context, err error) string {
	switch {
	case ctx.Err() != nil:
		return "cancelled: the pusher disconnected"
	case errors.Is(err, syscall.ENOSPC):
		return "no space left on device"
	case errors.Is(err, syscall.EDQUOT):
		return "disk quota exceeded"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return "see the server log"
}

func say(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "-----> "+format+"\n", args...)
}

func indent(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "       "+format+"\n", args...)
}

func since(t time.Time) string {
	d := time.Since(t)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func short(sha string) string {
	if len(sha) > 7 {
		return sha[:7]
	}
	return sha
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// maxLogBytes caps one deploy's log file: a build that floods its output cannot fill the disk.
const maxLogBytes = 16 << 20

// tee writes everything to the pusher and to the deploy's log. A pusher that hung up does
// not stop the log.
type tee struct {
	pusher io.Writer
	log    io.Writer
}

func (t *tee) Write(b []byte) (int, error) {
	t.log.Write(b)    //nolint:errcheck // the log is best effort; its errors are capped's
	t.pusher.Write(b) //nolint:errcheck // a gone pusher cancels the deploy through ctx
	return len(b), nil
}

// capped writes at most left bytes, then one truncation marker, then nothing.
type capped struct {
	w    io.Writer
	left int64
}

func (c *capped) Write(b []byte) (int, error) {
	if c.left <= 0 {
		return len(b), nil
	}
	if int64(len(b)) > c.left {
		c.w.Write(b[:c.left])                                  //nolint:errcheck
		c.w.Write([]byte("\n[slipway: log truncated here]\n")) //nolint:errcheck
		c.left = 0
		return len(b), nil
	}
	c.left -= int64(len(b))
	return c.w.Write(b)
}
