package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/releaser"
)

// pipeline is the deploy pipeline: the one place that knows the order of a deploy. It
// implements gitserver.Deployer (pushes) and gitserver.Commander (operator commands over
// SSH) by composing the releaser (the deploy root on disk), the builder (build and test
// commands) and the hooks (after_activate). The local CLI drives the same code.
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

var (
	_ gitserver.Deployer  = (*pipeline)(nil)
	_ gitserver.Commander = (*pipeline)(nil)
)

// errUnknownEnvironment is a repo no [[env]] configures.
var errUnknownEnvironment = errors.New("unknown environment")

// newPipeline opens every environment. The server (recover true) first recovers each from
// whatever a crash left behind: build processes still running are ended, half-made releases
// removed, current checked. The CLI, running beside a server, must not: it only opens.
func newPipeline(cfg *config, b *builder.Builder, log zerolog.Logger, recover bool) (*pipeline, error) {
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
		if _, err := p.open(ec, recover); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// open adds one environment. Callers adding at serve time hold p.mu.
func (p *pipeline) open(ec envConfig, recover bool) (*environment, error) {
	log := p.log.With().Str("repo", ec.repo).Logger()
	if recover { // serving: this process deploys
		if err := linkAsRoot(ec); err != nil {
			return nil, err
		}
	}
	if recover {
		n, err := builder.KillLeftovers("SLIPWAY_DEPLOY_PATH=" + ec.path)
		if err != nil {
			return nil, fmt.Errorf("end leftover builds of %s: %w", ec.repo, err)
		}
		if n > 0 {
			log.Warn().Int("killed", n).Msg("ended build processes left by a previous run")
		}
	}
	rel, err := releaser.New(releaser.Config{
		Path:         ec.path,
		KeepReleases: ec.keepReleases,
		PruneGrace:   ec.pruneGrace,
		LinkFiles:    ec.linkFiles,
	}, log.With().Str("component", "releaser").Logger())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ec.repo, err)
	}
	if recover {
		if err := rel.Recover(); err != nil {
			return nil, fmt.Errorf("recover %s: %w", ec.repo, err)
		}
	}
	e := &environment{cfg: ec, rel: rel}
	p.envs[ec.repo] = e
	return e, nil
}

// environment returns repo's environment. With create, the embedded default creates it.
func (p *pipeline) environment(repo string, create bool) (*environment, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.envs[repo]; ok {
		return e, nil
	}
	if !p.cfg.auto || !create {
		return nil, fmt.Errorf("%w %s", errUnknownEnvironment, repo)
	}
	e, err := p.open(p.cfg.autoEnv(repo), true)
	if err != nil {
		return nil, err
	}
	if err := saveRegistry(p.cfg.dataDir, p.repos()); err != nil {
		delete(p.envs, repo)
		return nil, err
	}
	p.log.Info().Str("repo", repo).Str("path", e.cfg.path).Msg("environment created")
	return e, nil
}

// repos returns the environments' names, sorted. The caller holds p.mu.
func (p *pipeline) repos() []string {
	repos := make([]string, 0, len(p.envs))
	for r := range p.envs {
		repos = append(repos, r)
	}
	sort.Strings(repos)
	return repos
}

// allowed reports whether who may use e. The local operator (who == "") may use all.
func (e *environment) allowed(who string) bool {
	return who == "" || len(e.cfg.allow) == 0 || contains(e.cfg.allow, who)
}

// access returns repo's environment if who may use it, with an error fit to show them.
func (p *pipeline) access(repo, who string, create bool) (*environment, error) {
	e, err := p.environment(repo, create)
	if errors.Is(err, errUnknownEnvironment) {
		return nil, err
	}
	if err != nil {
		p.log.Error().Err(err).Str("repo", repo).Msg("open environment")
		return nil, fmt.Errorf("%s is not available: see the server log", repo)
	}
	if !e.allowed(who) {
		return nil, fmt.Errorf("%s may not use %s", who, repo)
	}
	return e, nil
}

// Reserve checks that pusher may push to repo and takes its deploy lock, waiting up to
// wait for a running deploy.
func (p *pipeline) Reserve(ctx context.Context, repo, pusher string, wait time.Duration) (gitserver.Target, func(), error) {
	var none gitserver.Target
	e, err := p.access(repo, pusher, true)
	if err != nil {
		return none, nil, err
	}
	if err := frozen(e); err != nil {
		return none, nil, err
	}
	unlock, err := p.lock(ctx, e, pusher, wait)
	if err != nil {
		return none, nil, err
	}
	// A freeze may have come while this push waited.
	if err := frozen(e); err != nil {
		unlock()
		return none, nil, err
	}
	live, err := e.rel.Current()
	if err != nil {
		unlock()
		p.log.Error().Err(err).Str("repo", repo).Msg("read current")
		return none, nil, fmt.Errorf("%s: cannot read the live release: see the server log", repo)
	}
	return gitserver.Target{Branch: e.cfg.branch, Live: live}, unlock, nil
}

// lock takes e's deploy lock for holder, waiting up to wait. Busy errors wrap
// gitserver.ErrBusy and say who holds it since when; other failures are logged whole and
// reported without their details.
func (p *pipeline) lock(ctx context.Context, e *environment, holder string, wait time.Duration) (func(), error) {
	var unlock func()
	var err error
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		unlock, err = e.rel.LockWait(wctx, holder)
		cancel()
	} else {
		unlock, err = e.rel.Lock(holder)
	}
	var le *releaser.LockedError
	switch {
	case errors.As(err, &le):
		return nil, fmt.Errorf("%s is busy: %w%w", e.cfg.repo, err, busyMark{})
	case err != nil:
		p.log.Error().Err(err).Str("repo", e.cfg.repo).Msg("take the deploy lock")
		return nil, fmt.Errorf("%s cannot be locked: see the server log", e.cfg.repo)
	}
	return unlock, nil
}

// busyMark makes a busy error match gitserver.ErrBusy without changing its text.
type busyMark struct{}

func (busyMark) Error() string        { return "" }
func (busyMark) Is(target error) bool { return target == gitserver.ErrBusy }

// frozen returns the refusal for a frozen environment, or nil.
func frozen(e *environment) error {
	f, err := e.rel.Frozen()
	if err != nil {
		return fmt.Errorf("%s: cannot read its freeze: %w", e.cfg.repo, err)
	}
	if f != nil {
		return fmt.Errorf("%s is frozen by %s since %s: %s", e.cfg.repo, f.By, f.Since.UTC().Format(time.RFC3339), f.Message)
	}
	return nil
}

// Inspect checks that who may fetch repo and returns its target.
func (p *pipeline) Inspect(repo, who string) (gitserver.Target, error) {
	e, err := p.access(repo, who, false)
	if err != nil {
		return gitserver.Target{}, err
	}
	live, err := e.rel.Current()
	if err != nil {
		p.log.Error().Err(err).Str("repo", repo).Msg("read current")
		return gitserver.Target{}, fmt.Errorf("%s: cannot read the live release: see the server log", repo)
	}
	return gitserver.Target{Branch: e.cfg.branch, Live: live}, nil
}

// Deploy turns one accepted push into the live release of its environment.
func (p *pipeline) Deploy(ctx context.Context, push gitserver.Push, out io.Writer) error {
	p.mu.Lock()
	e := p.envs[push.Repo]
	p.mu.Unlock()
	if e == nil {
		return fmt.Errorf("%w %s", errUnknownEnvironment, push.Repo)
	}
	d := &deploy{p: p, e: e, objects: push.Objects, entry: releaser.Entry{
		Kind:           kindPush,
		SHA:            push.NewSHA,
		Pusher:         push.Pusher,
		KeyFingerprint: push.KeyFingerprint,
		Message:        pushMessage(push.Options),
	}}
	return d.run(ctx, out)
}

// pushMessage is the value of the last `git push -o message=...`.
func pushMessage(options []string) string {
	msg := ""
	for _, o := range options {
		if v, ok := strings.CutPrefix(o, "message="); ok {
			msg = v
		}
	}
	return msg
}

// objects opens the object store of e's repository for reading: a rollback or redeploy reads
// the commit (and its slipway.toml) from it. The deploy lock keeps pushes out meanwhile.
func (p *pipeline) objects(e *environment) (*filesystem.Storage, error) {
	st, err := gitserver.OpenObjects(p.reposDir(), e.cfg.repo)
	if errors.Is(err, gitserver.ErrNoRepo) {
		return nil, fmt.Errorf("nothing has been pushed to %s yet", e.cfg.repo)
	}
	if err != nil {
		return nil, fmt.Errorf("open the repository of %s: %w", e.cfg.repo, err)
	}
	return st, nil
}

// linkAsRoot refuses release_files = "link" to a deploying process running as root.
func linkAsRoot(ec envConfig) error {
	if ec.linkFiles && os.Geteuid() == 0 {
		return fmt.Errorf("%s: release_files = \"link\" needs slipway to run as a user other than root: "+
			"releases share read-only files, and root writes read-only files, so a build could change the live release", ec.repo)
	}
	return nil
}

// reposDir is where gitserver keeps the environments' repositories.
func (p *pipeline) reposDir() string { return filepath.Join(p.cfg.dataDir, "repos") }
