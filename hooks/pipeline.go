package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/internal/fleet"
	"github.com/slipway/slipway/releaser"
)

// Repositories are the environments' git repositories, which the git server keeps. The
// pipeline reads a commit from them for a rollback or a redeploy, and removes one with its
// environment.
type Repositories interface {
	// Objects opens repo's object store for reading; the caller closes it. Its error
	// matches fs.ErrNotExist when nothing has been pushed to repo yet.
	Objects(repo string) (*filesystem.Storage, error)
	// Remove deletes repo's repository, if it has one.
	Remove(repo string) error
}

// Config is what a Pipeline needs.
type Config struct {
	// Server is the server configuration: the environments, and for the embedded default
	// where it creates them.
	Server *configs.Server
	// Builder runs every command of a deploy.
	Builder *builder.Builder
	// Repos are the environments' repositories.
	Repos Repositories
	// Notify takes the deploys' notifications; nil: none are sent.
	Notify Notifier
	// Observer, if set, is told of every deploy that ends (metrics).
	Observer Observer
	// Serving is true in the process that serves pushes. Opening an environment then first
	// recovers it from whatever a crash left behind: build processes still running are
	// ended, half-made releases removed, current checked. The CLI, which runs beside a
	// server, leaves that to the server and only opens.
	Serving bool
}

// Observer is told of each deploy, rollback and redeploy as it ends, with its journal
// entry (outcome, start, end, steps). It must return at once.
type Observer interface {
	DeployFinished(e releaser.Entry)
}

// Pipeline is the deploy pipeline of every environment: the one place that knows the order
// of a deploy. It takes pushes (Reserve, Deploy) and operator commands (RunCommand) and
// turns them into live releases by composing the releaser (the deploy root on disk) and the
// builder (the commands).
type Pipeline struct {
	cfg  Config
	log  zerolog.Logger
	auto *registry // the embedded default's environments; nil with a config file

	mu   sync.Mutex // guards envs: the embedded default adds and removes environments while serving
	envs map[string]*environment

	// Background work (spares of copy_dirs): Close ends it and waits for it.
	bg       sync.WaitGroup
	bgMu     sync.Mutex // orders bg.Add after Close
	bgCtx    context.Context
	bgCancel context.CancelFunc

	// webLogin makes a dashboard login URL for a key (web-login); nil: no dashboard.
	webLogin func(Caller) (string, error)
}

// SetWebLogin gives web-login the dashboard's login URLs. It is called once, before the
// server serves.
func (p *Pipeline) SetWebLogin(fn func(Caller) (string, error)) { p.webLogin = fn }

// environment is one configured (or, in the embedded default, created) environment.
type environment struct {
	cfg    configs.Env
	rel    *releaser.Releaser // nil while broken
	broken error              // why it could not be opened; nil when it serves
	spares spares             // copy_dirs to make ready for the next deploy
	dialer *fleet.Dialer      // the targets' SSH client; nil without targets
}

// Target is what the pipeline says of an environment to the git server.
type Target struct {
	Branch string // the deploy branch, e.g. "main"
	Live   string // the commit of the live release, "" if none
}

// Push is one accepted update of an environment's deploy branch, as the git server hands
// it over: its objects are stored, the branch has not moved yet.
type Push struct {
	Repo           string                     // "APP/ENV"
	Branch         string                     // the deploy branch
	OldSHA         string                     // the branch's value the push replaces, "" if none
	NewSHA         string                     // the pushed commit
	Pusher         string                     // the name of the key that authenticated
	KeyFingerprint string                     // its SHA256 fingerprint
	Options        []string                   // git push -o values, in order
	Objects        storer.EncodedObjectStorer // the environment's object store, readable during Deploy
}

// Caller is who runs an operator command: an authorized key over SSH, or the local
// operator (the zero Caller), who may use every environment.
type Caller struct {
	Name           string
	KeyFingerprint string
}

// label names c in the journal and in freezes.
func (c Caller) label() string {
	if c.Name != "" {
		return c.Name
	}
	if u := os.Getenv("USER"); u != "" {
		return u + " (cli)"
	}
	return "operator (cli)"
}

var (
	// ErrUnknownEnvironment is a repo no environment has.
	ErrUnknownEnvironment = errors.New("unknown environment")
	// ErrBusy is what Reserve's error wraps when another deploy of the environment runs.
	ErrBusy = errors.New("busy")
	// ErrFrozen is what a refusal of a frozen environment matches (errors.Is).
	ErrFrozen = errors.New("frozen")
)

// New opens every environment of cfg.Server (and, in the embedded default, every one it
// created before), recovering each first when cfg.Serving. An environment that cannot be
// opened (a damaged state file, a deploy root it may not write) does not stop the others:
// it is logged, refused with the reason while it stays broken, and opened again at its next
// use. Only what concerns every environment (release_files = "link" as root, an unreadable
// registry) is an error here.
func New(cfg Config, log zerolog.Logger) (*Pipeline, error) {
	p := &Pipeline{cfg: cfg, log: log, envs: map[string]*environment{}}
	p.bgCtx, p.bgCancel = context.WithCancel(context.Background())
	envs := cfg.Server.Envs
	if cfg.Server.Auto {
		p.auto = &registry{dataDir: cfg.Server.DataDir}
		if cfg.Serving {
			p.auto.sweep(cfg.Server.DeployRoot, log)
		}
		repos, err := p.auto.load()
		if err != nil {
			return nil, err
		}
		for _, r := range repos {
			envs = append(envs, cfg.Server.AutoEnv(r))
		}
	}
	for _, ec := range envs {
		if err := p.checkEnv(ec); err != nil {
			return nil, err
		}
	}
	if err := p.checkSandbox(cfg.Server); err != nil {
		return nil, err
	}
	if cfg.Serving {
		p.logSandbox(cfg.Server)
		p.warnPath(envs)
	}
	for _, ec := range envs {
		p.envs[ec.Repo] = p.openOrBroken(ec, cfg.Server.Limits, true)
	}
	return p, nil
}

// warnPath warns, under systemd (which gives a service its own short PATH), of the
// environments whose [env.vars] leave the commands' PATH to the server's: their builds do
// not find toolchains outside it (/usr/local/go/bin, ~/.nvm, ~/.cargo/bin).
func (p *Pipeline) warnPath(envs []configs.Env) {
	if os.Getenv("INVOCATION_ID") == "" { // not a systemd service
		return
	}
	var left []string
	for _, ec := range envs {
		if !setsVar(ec.Vars, "PATH") {
			left = append(left, ec.Repo)
		}
	}
	if len(left) > 0 {
		p.log.Warn().Strs("repos", left).Str("path", os.Getenv("PATH")).
			Msg("under systemd, commands get the service's PATH: set PATH in [env.vars] if builds need toolchains outside it")
	}
}

// checkSandbox refuses sandbox = "required" where builds cannot be confined.
func (p *Pipeline) checkSandbox(cfg *configs.Server) error {
	if !p.cfg.Serving || cfg.Sandbox != configs.SandboxRequired {
		return nil
	}
	if sb := p.cfg.Builder.Sandbox(); sb.Landlock == 0 {
		return fmt.Errorf("sandbox = \"required\", but this kernel cannot confine builds: %s", sb.Why)
	}
	return nil
}

// logSandbox says at start how builds are confined, with a warning where they are not.
func (p *Pipeline) logSandbox(cfg *configs.Server) {
	sb := p.cfg.Builder.Sandbox()
	switch {
	case cfg.Sandbox == configs.SandboxOff:
		p.log.Warn().Msg("builds are not confined: sandbox = \"off\"")
	case sb.Landlock == 0:
		p.log.Warn().Str("why", sb.Why).Msg("builds are not confined: this kernel has no Landlock " +
			"(sandbox = \"auto\"; \"required\" would refuse to start)")
	default:
		p.log.Info().Str("sandbox", sb.String()).Str("limits", sb.LimitsString()).Msg("builds are confined")
	}
}

// sandboxLine is what status says of the builds' confinement.
func (p *Pipeline) sandboxLine() string {
	sb := p.cfg.Builder.Sandbox()
	switch {
	case p.server().Sandbox == configs.SandboxOff:
		return "builds: not confined (sandbox = \"off\")"
	case sb.Landlock == 0:
		return "builds: NOT CONFINED: this kernel has no Landlock (" + sb.String() + ")"
	}
	return "builds: confined (" + sb.String() + ")"
}

// server is the server configuration in force (Reload replaces it).
func (p *Pipeline) server() *configs.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg.Server
}

// checkEnv refuses what no environment may be in this process.
func (p *Pipeline) checkEnv(ec configs.Env) error {
	if p.cfg.Serving {
		return linkAsRoot(ec)
	}
	return nil
}

// openOrBroken opens ec, or returns it broken with the reason, which it logs.
func (p *Pipeline) openOrBroken(ec configs.Env, limits configs.Limits, fresh bool) *environment {
	e, err := p.open(ec, limits, fresh)
	if err != nil {
		p.log.Error().Err(err).Str("repo", ec.Repo).Str("path", ec.Path).
			Msg("environment unavailable: it is refused until it opens")
		return &environment{cfg: ec, broken: err}
	}
	return e
}

// Reload makes cfg the server configuration: environments it adds are opened, ones it
// changes (or all, when the limits change) are opened with their new settings, ones it
// drops are forgotten (their deploy roots stay as they are). A deploy running meanwhile finishes with the settings it
// started with. What needs a restart (data_dir, the embedded default) is refused.
func (p *Pipeline) Reload(cfg *configs.Server) error {
	p.mu.Lock()
	old := p.cfg.Server
	p.mu.Unlock()
	if cfg.DataDir != old.DataDir || cfg.Auto != old.Auto {
		return errors.New("data_dir (or the use of the embedded default) changed: restart slipway to apply it")
	}
	for _, ec := range cfg.Envs {
		if err := p.checkEnv(ec); err != nil {
			return err
		}
	}
	if err := p.checkSandbox(cfg); err != nil {
		return err
	}
	opened := map[string]*environment{}
	for _, ec := range cfg.Envs {
		p.mu.Lock()
		cur := p.envs[ec.Repo]
		p.mu.Unlock()
		if cur != nil && cur.broken == nil && reflect.DeepEqual(cur.cfg, ec) && cfg.Limits == old.Limits {
			opened[ec.Repo] = cur
			continue
		}
		// One that serves already may be deploying: it is opened anew, not recovered.
		opened[ec.Repo] = p.openOrBroken(ec, cfg.Limits, cur == nil || cur.broken != nil)
	}
	if p.auto != nil && cfg.Limits != old.Limits { // the created environments take the new limits too
		p.mu.Lock()
		created := make([]configs.Env, 0, len(p.envs))
		for _, e := range p.envs {
			created = append(created, e.cfg)
		}
		p.mu.Unlock()
		for _, ec := range created {
			opened[ec.Repo] = p.openOrBroken(ec, cfg.Limits, false)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for repo := range p.envs {
		if _, ok := opened[repo]; !ok && p.auto == nil {
			p.log.Info().Str("repo", repo).Msg("environment removed from the configuration")
			delete(p.envs, repo)
		}
	}
	for repo, e := range opened {
		p.envs[repo] = e
	}
	p.cfg.Server = cfg
	return nil
}

// open opens one environment. In the serving process, an environment opened fresh (not one
// that serves already, which may be deploying) is first recovered from whatever a crash
// left behind: its build processes, half-made releases, temporary directories.
func (p *Pipeline) open(ec configs.Env, limits configs.Limits, fresh bool) (*environment, error) {
	log := p.log.With().Str("repo", ec.Repo).Logger()
	repair := p.cfg.Serving && fresh
	if repair {
		n, err := builder.KillLeftovers("SLIPWAY_DEPLOY_PATH=" + ec.Path)
		if err != nil {
			return nil, fmt.Errorf("end leftover builds of %s: %w", ec.Repo, err)
		}
		if n > 0 {
			log.Warn().Int("killed", n).Msg("ended build processes left by a previous run")
		}
	}
	rel, err := releaser.New(releaser.Config{
		Path:            ec.Path,
		KeepReleases:    ec.KeepReleases,
		PruneGrace:      ec.PruneGrace,
		LinkFiles:       ec.LinkFiles,
		SeedSharedFiles: ec.SeedSharedFiles,
		MaxReleaseSize:  limits.MaxReleaseSize,
		MaxReleaseFiles: int(limits.MaxReleaseFiles),
		LiveInMeta:      ec.Fleet.Remote() && !ec.Fleet.Local,
	}, log.With().Str("component", "releaser").Logger())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ec.Repo, err)
	}
	if repair {
		if err := rel.Recover(); err != nil {
			return nil, fmt.Errorf("recover %s: %w", ec.Repo, err)
		}
		if err := rel.ClearTemp(); err != nil {
			log.Warn().Err(err).Msg("temporary directories left by a previous run stay")
		}
	}
	e := &environment{cfg: ec, rel: rel}
	if f := ec.Fleet; f.Remote() {
		if e.dialer, err = fleet.NewDialer(f.Identity, f.KnownHosts, f.DialTimeout); err != nil {
			return nil, fmt.Errorf("open %s: %w", ec.Repo, err)
		}
	}
	return e, nil
}

// environment returns repo's environment. With create, the embedded default creates it
// (created is then true). In the embedded default the registry on disk is the truth: an
// environment another process destroyed is forgotten here too.
func (p *Pipeline) environment(repo string, create bool) (e *environment, created bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auto != nil {
		if err := p.syncRegistry(); err != nil {
			return nil, false, err
		}
	}
	if e, ok := p.envs[repo]; ok {
		return e, false, nil
	}
	if p.auto == nil || !create {
		return nil, false, fmt.Errorf("%w %s", ErrUnknownEnvironment, repo)
	}
	e, err = p.open(p.cfg.Server.AutoEnv(repo), p.cfg.Server.Limits, true)
	if err != nil {
		return nil, false, err
	}
	if err := p.auto.add(repo); err != nil {
		return nil, false, err
	}
	p.envs[repo] = e
	p.log.Info().Str("repo", repo).Str("path", e.cfg.Path).Msg("environment created")
	return e, true, nil
}

// syncRegistry forgets the created environments that are no longer registered: another
// process destroyed them. The caller holds p.mu.
func (p *Pipeline) syncRegistry() error {
	repos, err := p.auto.load()
	if err != nil {
		return err
	}
	for r := range p.envs {
		if !slices.Contains(repos, r) {
			delete(p.envs, r)
		}
	}
	return nil
}

// list returns the environments who may use, sorted by name.
func (p *Pipeline) list(who string) ([]*environment, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.auto != nil {
		if err := p.syncRegistry(); err != nil {
			return nil, err
		}
	}
	var out []*environment
	for _, e := range p.envs {
		if e.allowed(who) {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b *environment) int { return strings.Compare(a.cfg.Repo, b.cfg.Repo) })
	return out, nil
}

// allowed reports whether who may use e. The local operator (who == "") may use all.
func (e *environment) allowed(who string) bool {
	return who == "" || len(e.cfg.Allow) == 0 || slices.Contains(e.cfg.Allow, who)
}

// access returns repo's environment if who may use it, with an error fit to show them. An
// environment that does not exist and one that who may not use get the same answer, so
// that a key cannot learn which environments exist. A broken environment is opened again;
// while that fails it is refused with the reason.
func (p *Pipeline) access(repo, who string, create bool) (*environment, bool, error) {
	e, created, err := p.environment(repo, create)
	switch {
	case errors.Is(err, ErrUnknownEnvironment) || (err == nil && !e.allowed(who)):
		if who == "" {
			return nil, false, fmt.Errorf("%w %s", ErrUnknownEnvironment, repo)
		}
		return nil, false, fmt.Errorf("%w %s, or %s may not use it", ErrUnknownEnvironment, repo, who)
	case err != nil:
		p.log.Error().Err(err).Str("repo", repo).Msg("open environment")
		return nil, false, fmt.Errorf("%s is not available: see the server log", repo)
	}
	if e.broken != nil {
		if e, err = p.reopen(e); err != nil {
			return nil, false, err
		}
	}
	return e, created, nil
}

// reopen tries again to open a broken environment, and says why it is unavailable if it
// still cannot be.
func (p *Pipeline) reopen(broken *environment) (*environment, error) {
	e, err := p.open(broken.cfg, p.server().Limits, true)
	if err != nil {
		p.log.Warn().Err(err).Str("repo", broken.cfg.Repo).Msg("environment still unavailable")
		return nil, unavailable(broken.cfg.Repo, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.envs[broken.cfg.Repo] == broken { // not replaced by a reload meanwhile
		p.envs[broken.cfg.Repo] = e
	}
	p.log.Info().Str("repo", e.cfg.Repo).Msg("environment available again")
	return e, nil
}

// unavailable is the refusal of an environment that cannot be opened.
func unavailable(repo string, err error) error {
	return fmt.Errorf("%s is unavailable: %s", repo, safeReason(context.Background(), err))
}

// Reserve checks that pusher may push to repo and takes its deploy lock, waiting up to
// wait for a running deploy; a busy environment's error wraps ErrBusy. release gives the
// environment back. In the embedded default, a push that created its environment and
// leaves nothing live (a mistyped remote, a first deploy that failed) removes it again when
// it releases it.
func (p *Pipeline) Reserve(ctx context.Context, repo, pusher string, wait time.Duration) (t Target, release func(), err error) {
	// An environment destroyed while this push waited for it is created again: the pusher
	// asked for it by name. Twice is enough for any interleaving but a pathological one.
	for attempt := 0; ; attempt++ {
		t, release, err = p.reserve(ctx, repo, pusher, wait)
		if !errors.Is(err, releaser.ErrDestroyed) || attempt == 2 {
			break
		}
	}
	if errors.Is(err, releaser.ErrDestroyed) {
		err = fmt.Errorf("%s was destroyed while this push waited: push again", repo)
	}
	return t, release, err
}

func (p *Pipeline) reserve(ctx context.Context, repo, pusher string, wait time.Duration) (Target, func(), error) {
	e, created, err := p.access(repo, pusher, true)
	if err != nil {
		return Target{}, nil, err
	}
	if err := frozen(e); err != nil {
		return Target{}, nil, err
	}
	unlock, err := p.lock(ctx, e, pusher, wait)
	if err != nil {
		return Target{}, nil, err
	}
	release := func() {
		if created {
			p.dropIfNeverLive(e)
		}
		unlock()
	}
	// A freeze may have come while this push waited.
	if err := frozen(e); err != nil {
		release()
		return Target{}, nil, err
	}
	live, err := e.rel.Current()
	if err != nil {
		release()
		p.log.Error().Err(err).Str("repo", repo).Msg("read current")
		return Target{}, nil, shown(repo+": cannot read the live release", err)
	}
	return Target{Branch: e.cfg.Branch, Live: live}, release, nil
}

// lock takes e's deploy lock for holder, waiting up to wait. Busy errors wrap ErrBusy and
// say who holds it since when; releaser.ErrDestroyed is returned as it is; other failures
// are logged whole and reported without their details.
func (p *Pipeline) lock(ctx context.Context, e *environment, holder string, wait time.Duration) (func(), error) {
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
		return nil, fmt.Errorf("%s is busy: %w%w", e.cfg.Repo, err, busyMark{})
	case errors.Is(err, releaser.ErrDestroyed):
		return nil, err
	case err != nil:
		p.log.Error().Err(err).Str("repo", e.cfg.Repo).Msg("take the deploy lock")
		return nil, shown(e.cfg.Repo+" cannot be locked", err)
	}
	return func() {
		unlock()
		p.makeSpares(e) // now that no deploy waits for it
	}, nil
}

// busyMark makes a busy error match ErrBusy without changing its text.
type busyMark struct{}

func (busyMark) Error() string        { return "" }
func (busyMark) Is(target error) bool { return target == ErrBusy }

// frozenMark makes a freeze's refusal match ErrFrozen without changing its text.
type frozenMark struct{}

func (frozenMark) Error() string        { return "" }
func (frozenMark) Is(target error) bool { return target == ErrFrozen }

// frozen returns the refusal for a frozen environment, or nil.
func frozen(e *environment) error {
	f, err := e.rel.Frozen()
	if err != nil {
		return shown(e.cfg.Repo+": cannot read its freeze", err)
	}
	if f != nil {
		return fmt.Errorf("%s is frozen by %s since %s: %s%w", e.cfg.Repo, f.By, f.Since.UTC().Format(time.RFC3339), f.Message, frozenMark{})
	}
	return nil
}

// Inspect checks that who may fetch repo and returns its target.
func (p *Pipeline) Inspect(repo, who string) (Target, error) {
	e, _, err := p.access(repo, who, false)
	if err != nil {
		return Target{}, err
	}
	live, err := e.rel.Current()
	if err != nil {
		p.log.Error().Err(err).Str("repo", repo).Msg("read current")
		return Target{}, shown(repo+": cannot read the live release", err)
	}
	return Target{Branch: e.cfg.Branch, Live: live}, nil
}

// Deploy turns one accepted push, reserved with Reserve, into the live release of its
// environment. out reaches the pusher. The returned error is short and safe to show them.
func (p *Pipeline) Deploy(ctx context.Context, push Push, out io.Writer) error {
	p.mu.Lock()
	e := p.envs[push.Repo]
	p.mu.Unlock()
	if e == nil {
		return fmt.Errorf("%w %s", ErrUnknownEnvironment, push.Repo)
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
func (p *Pipeline) objects(e *environment) (*filesystem.Storage, error) {
	st, err := p.cfg.Repos.Objects(e.cfg.Repo)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nothing has been pushed to %s yet", e.cfg.Repo)
	}
	if err != nil {
		return nil, fmt.Errorf("open the repository of %s: %w", e.cfg.Repo, err)
	}
	return st, nil
}

// linkAsRoot refuses release_files = "link" to a deploying process running as root.
func linkAsRoot(ec configs.Env) error {
	if ec.LinkFiles && os.Geteuid() == 0 {
		return fmt.Errorf("%s: release_files = \"link\" needs slipway to run as a user other than root: "+
			"releases share read-only files, and root writes read-only files, so a build could change the live release", ec.Repo)
	}
	return nil
}
