package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/internal/notify"
	"github.com/slipway/slipway/releaser"
)

// The kinds of deploy run. Each is one journal entry.
const (
	kindPush     = "push"     // git push: build and test, or reactivate a kept release
	kindRollback = "rollback" // make a kept release live again, never a rebuild
	kindRedeploy = "redeploy" // build and test a commit again, without a new push
)

// maxRepoConfig bounds the pushed tree's slipway.toml: it is read whole.
const maxRepoConfig = 1 << 20

// maxLogBytes caps one deploy's log file: a build that floods its output cannot fill the disk.
const maxLogBytes = 16 << 20

// deploy is one run of the pipeline: a push, a rollback or a redeploy of one environment.
// The caller holds the environment's deploy lock.
type deploy struct {
	p       *Pipeline
	e       *environment
	entry   releaser.Entry // what the journal records; Kind, SHA, Pusher... set by the caller
	objects storer.EncodedObjectStorer
	recipe  configs.Recipe
	steps   []releaser.Step
	log     zerolog.Logger
	built   bool      // this deploy wrote the release (a revert removes it again)
	fleet   *fleetRun // the targets' connections, once prepareFleet opened them
	// rebuildsLive: a redeploy of the live release, whose build live before is held aside
	// (releaser.Hold) until the rebuild is healthy.
	rebuildsLive bool
	wentLive     bool       // current names the release this deploy made: a failure is activation's to handle
	stepsMu      sync.Mutex // guards steps: a fleet's targets record theirs at once

	setVars, setSecrets []string // what env set set: "K=V", and the secret values
}

// run journals and runs d, writing its progress to out. The returned error is short and
// safe for whoever asked (the pusher, or the operator's terminal).
func (d *deploy) run(ctx context.Context, out io.Writer) (err error) {
	if d.setVars, d.setSecrets, err = d.p.storedVars(d.e); err != nil {
		d.p.log.Error().Err(err).Str("repo", d.e.cfg.Repo).Msg("read the variables set with env set")
		return fmt.Errorf("the variables set with `env set` cannot be read: see the server log")
	}
	logFile, err := d.begin()
	if err != nil {
		return err
	}
	defer logFile.Close() // the log is best effort; the journal has the outcome
	pusher := newRelay(out)
	defer pusher.Close() // after finish: its last lines go out too
	out = &tee{pusher: pusher, log: &capped{w: logFile, left: maxLogBytes}, mask: newMask(d.secretValues())}
	start := time.Now()
	defer func() { err = d.finish(ctx, out, start, err) }()
	d.notify(notify.EventStarted, maskOf(out))

	what := map[string]string{kindPush: "deploying", kindRollback: "rolling back to", kindRedeploy: "redeploying"}[d.entry.Kind]
	say(out, "%s %s to %s (%s by %s, deploy #%d)", what, short(d.entry.SHA), d.entry.Repo, d.entry.Kind, d.entry.Pusher, d.entry.ID)
	if d.recipe, err = d.p.recipe(d.e, d.objects, d.entry.SHA, out); err != nil {
		return err
	}
	switch {
	case d.entry.Kind == kindRollback:
		return d.reactivate(ctx, out)
	case d.entry.Kind == kindPush && d.e.rel.IsComplete(d.entry.SHA):
		return d.reactivate(ctx, out)
	default:
		return d.build(ctx, out)
	}
}

// secretValues are the values masked in d's output and log: [env.secrets], and those of the
// mask_files in shared/. A mask file that cannot be read is logged, not fatal: its values
// are then not masked, and the operator log says so.
func (d *deploy) secretValues() []string {
	values := slices.Clone(d.setSecrets)
	for _, kv := range d.e.cfg.Secrets {
		_, v, _ := strings.Cut(kv, "=")
		values = append(values, v)
	}
	if len(d.e.cfg.MaskFiles) == 0 {
		return values
	}
	shared, err := os.OpenRoot(d.e.rel.SharedDir())
	if err != nil {
		d.p.log.Warn().Err(err).Str("repo", d.e.cfg.Repo).Msg("mask_files: shared/ cannot be opened; their values are not masked")
		return values
	}
	defer shared.Close() // a directory: closing it loses nothing
	for _, f := range d.e.cfg.MaskFiles {
		vs, err := maskFileValues(shared, f)
		if err != nil {
			d.p.log.Warn().Err(err).Str("repo", d.e.cfg.Repo).Str("file", f).Msg("mask_files: a file cannot be read; its values are not masked")
			continue
		}
		values = append(values, vs...)
	}
	return values
}

// begin opens d's journal entry and returns its log file, and derives d's logger.
func (d *deploy) begin() (*os.File, error) {
	d.entry.Repo = d.e.cfg.Repo
	previous, err := d.e.rel.Current()
	if err != nil {
		d.p.log.Error().Err(err).Str("repo", d.entry.Repo).Msg("read current")
		return nil, shown("cannot read the live release", err)
	}
	d.entry.PreviousSHA = previous
	d.log = d.p.log.With().Str("repo", d.entry.Repo).Str("sha", d.entry.SHA).Str("old_sha", previous).
		Str("pusher", d.entry.Pusher).Str("key_fp", d.entry.KeyFingerprint).Str("kind", d.entry.Kind).Logger()
	entry, logFile, err := d.e.rel.Begin(d.entry)
	if err != nil {
		d.log.Error().Err(err).Msg("journal deploy")
		return nil, shown("cannot record the deploy", err)
	}
	d.entry = entry
	d.log = d.log.With().Int64("id", entry.ID).Logger()
	d.log.Info().Msg("deploy started")
	return logFile, nil
}

// finish records d's outcome in the journal, tells the requester and the operator log, and
// returns err as the requester should read it.
func (d *deploy) finish(ctx context.Context, out io.Writer, start time.Time, err error) error {
	var ae *activationError
	if err != nil && ctx.Err() != nil && !errors.As(err, &ae) { // after the swap, hanging up changes nothing
		d.log.Warn().Err(err).Msg("deploy cancelled")
		err = cancelled(ctx)
	}
	outcome, reason := releaser.OutcomeLive, ""
	switch {
	case errors.As(err, &ae):
		outcome, reason = ae.outcome, err.Error()
	case err != nil && ctx.Err() != nil:
		outcome, reason = releaser.OutcomeCancelled, err.Error()
	case err != nil:
		outcome, reason = releaser.OutcomeFailed, err.Error()
	}
	if ferr := d.e.rel.Finish(d.entry.ID, outcome, d.steps, reason); ferr != nil {
		d.log.Error().Err(ferr).Msg("journal deploy end")
	}
	// Queued before the requester hears the outcome, so that it is never lost after it.
	d.entry.Outcome, d.entry.Reason, d.entry.End = outcome, reason, time.Now().UTC()
	if o := d.p.cfg.Observer; o != nil {
		e := d.entry
		e.Steps = d.steps
		o.DeployFinished(e)
	}
	if err != nil && outcome != releaser.OutcomeUnhealthy {
		d.discardFleet() // what this deploy wrote on its targets, where it is not live
	}
	d.closeFleet()
	d.notify(d.event(outcome), maskOf(out))
	d.pruneCache(out)
	if len(d.recipe.CopyDirs) > 0 {
		var dirs []string
		for _, cd := range d.recipe.CopyDirs {
			dirs = append(dirs, cd.Path)
		}
		d.e.spares.want(dirs) // made once the environment is free (Pipeline.lock)
	}
	ev := d.log.Info()
	if err != nil {
		ev = d.log.Warn().Err(err)
		say(out, "%s of %s failed after %s: %v", d.entry.Kind, short(d.entry.SHA), since(start), err)
	} else {
		say(out, "%s is live (%s in all)", short(d.entry.SHA), since(start))
	}
	ev.Str("outcome", outcome).Int64("took_ms", time.Since(start).Milliseconds()).Msg("deploy finished")
	return err
}

// build writes a release, runs its build and test commands, and activates it. Any failure
// before the swap removes the release and leaves current as it was.
func (d *deploy) build(ctx context.Context, out io.Writer) (err error) {
	undo, err := d.makeRoom(out)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	if err := d.checkout(ctx, out); err != nil {
		return err
	}
	if err := d.linkShared(out); err != nil {
		return err
	}
	if err := d.writeEnvFile(out); err != nil {
		return err
	}
	if err := d.copyDirs(out); err != nil {
		return err
	}
	if err := d.buildAndTest(ctx, out); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errCancelled
	}
	if err := d.e.rel.CheckLinked(d.entry.SHA); err != nil {
		d.log.Warn().Err(err).Msg("check linked files")
		return shown("check linked files", err)
	}
	if err := d.beforeActivate(ctx, BeforeActivate, out); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errCancelled
	}
	if err := d.prepareFleet(ctx, out, true); err != nil {
		return err
	}
	if err := d.beforeActivate(ctx, BeforeActivateEach, out); err != nil {
		return err
	}
	if err := d.e.rel.Complete(d.entry.SHA); err != nil {
		d.log.Error().Err(err).Msg("record release complete")
		return shown("cannot record the release", err)
	}
	d.built = true
	return d.activate(out)
}

// makeRoom clears releases/<sha> for a build and returns what undoes a failed one. A
// redeploy of the live release builds at its own name while a hard-linked copy of it stays
// live (undo puts it back); a redeploy of another kept release removes the old build first.
// Otherwise undo removes the failed release.
func (d *deploy) makeRoom(out io.Writer) (undo func(), err error) {
	rel, sha := d.e.rel, d.entry.SHA
	discard := func() {
		if err := rel.Discard(sha); err != nil {
			d.log.Error().Err(err).Msg("remove failed release")
		}
	}
	if d.entry.Kind != kindRedeploy || !rel.IsComplete(sha) {
		return discard, nil
	}
	if sha != d.entry.PreviousSHA {
		if err := rel.Discard(sha); err != nil {
			d.log.Error().Err(err).Msg("remove release to rebuild")
			return nil, shown("cannot remove the old build of this release", err)
		}
		return discard, nil
	}
	say(out, "releases/%s is live: a copy serves while it is rebuilt", short(sha))
	if err := rel.Hold(sha); err != nil {
		d.log.Error().Err(err).Msg("hold live release")
		return nil, shown("cannot set the live release aside for the rebuild", err)
	}
	d.rebuildsLive = true
	return func() {
		if d.wentLive {
			return // the revert, if any, was activation's (Unrebuild)
		}
		if err := rel.Restore(sha); err != nil {
			d.log.Error().Err(err).Msg("restore held release")
		}
	}, nil
}

// checkout writes the commit's tree into releases/<sha>.
func (d *deploy) checkout(ctx context.Context, out io.Writer) error {
	sha := d.entry.SHA
	say(out, "checkout %s", short(sha))
	start := time.Now()
	stats, err := d.e.rel.Materialize(ctx, d.objects, sha, out)
	d.record("checkout", start, err)
	if err != nil {
		d.log.Warn().Err(err).Msg("checkout failed")
		return fmt.Errorf("checkout: %s", safeReason(ctx, err))
	}
	reused := ""
	if stats.Reused > 0 {
		how := "copied"
		if d.e.cfg.LinkFiles {
			how = "linked"
		}
		reused = fmt.Sprintf("; %d unchanged, %s from the live release", stats.Reused, how)
	}
	indent(out, "%d files, %s written (%s)%s", stats.Files, humanBytes(stats.Bytes), since(start), reused)
	return nil
}

// buildAndTest runs the recipe's build commands, then its test commands, stopping at the
// first failure.
func (d *deploy) buildAndTest(ctx context.Context, out io.Writer) error {
	steps := d.runner()
	steps.confined = true
	for _, phase := range []struct {
		name string
		cmds []string
	}{{"build", d.recipe.Build}, {"test", d.recipe.Test}} {
		for i, c := range phase.cmds {
			name := fmt.Sprintf("%s %d/%d", phase.name, i+1, len(phase.cmds))
			if err := steps.RunStep(ctx, name, c, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// errCancelled is a deploy whose requester went away before the swap.
var errCancelled = errors.New("cancelled: the connection was closed before the release went live")

// cancelled says why ctx ended a deploy before the swap: the requester hung up, or the
// cause its canceller gave ("the server is shutting down").
func cancelled(ctx context.Context) error {
	cause := context.Cause(ctx)
	if cause == nil || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return errCancelled
	}
	return fmt.Errorf("cancelled: %w", cause)
}

// reactivate makes a kept release live again without a rebuild.
func (d *deploy) reactivate(ctx context.Context, out io.Writer) error {
	sha := d.entry.SHA
	if !d.e.rel.IsComplete(sha) {
		return notKept(d.e, sha)
	}
	say(out, "releases/%s is kept: activating it without a rebuild", short(sha))
	if err := d.linkShared(out); err != nil {
		return err
	}
	if err := d.prepareFleet(ctx, out, false); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errCancelled
	}
	return d.activate(out)
}

func (d *deploy) linkShared(out io.Writer) error {
	if len(d.recipe.SharedFiles)+len(d.recipe.SharedDirs) == 0 {
		return nil
	}
	start := time.Now()
	say(out, "link shared: %s", strings.Join(append(append([]string{}, d.recipe.SharedFiles...), d.recipe.SharedDirs...), ", "))
	err := d.e.rel.LinkShared(d.entry.SHA, d.recipe.SharedFiles, d.recipe.SharedDirs)
	d.record("link shared", start, err)
	if err != nil {
		var me *releaser.MissingSharedError
		if errors.As(err, &me) {
			// The pusher needs the name and the way to make it, not the server's path.
			return fmt.Errorf("shared file %s does not exist on the server: create it with `%s`", me.Name, d.p.sharedPutHint(d.e.cfg.Repo, me.Name))
		}
		d.log.Warn().Err(err).Msg("link shared failed")
		return fmt.Errorf("link shared: %s", safeReason(context.Background(), err))
	}
	indent(out, "linked (%s)", since(start))
	return nil
}

// record adds a step that is not a command (checkout, link shared, activate) to the journal.
func (d *deploy) record(name string, start time.Time, err error) {
	exit := 0
	if err != nil {
		exit = 1
	}
	d.stepsMu.Lock()
	defer d.stepsMu.Unlock()
	d.steps = append(d.steps, releaser.Step{Name: name, Took: time.Since(start), Exit: exit})
}

// runner runs this deploy's commands in its own release, with the environment SPEC
// sections 5, 7.2 and 11 name. Its commands are not confined unless the caller sets confined.
func (d *deploy) runner() *stepRunner {
	return d.runnerFor(d.entry.SHA, d.entry.PreviousSHA, false, false)
}

// runnerFor runs commands in release sha: this deploy's, or, for a revert, the one it goes
// back to; prev is the release live before it (SLIPWAY_PREVIOUS_RELEASE_DIR): for a revert,
// the one that failed. rollback and revert set SLIPWAY_ROLLBACK and SLIPWAY_REVERT.
func (d *deploy) runnerFor(sha, prev string, rollback, revert bool) *stepRunner {
	dir := realPath(d.e.rel.Dir(sha))
	env := d.slipwayVars(sha, prev, rollback, revert)
	// What [env.vars] and [env.secrets] set wins over what slipway would give (the cache
	// variables, the server's PATH, HOME and LANG): each name is in the environment once.
	own := d.variables()
	cache, err := d.e.rel.CacheDir()
	if err != nil {
		// Commands run without a build cache: they download again, and a confined one may
		// fail to write its own; the log says why.
		d.log.Warn().Err(err).Msg("no build cache")
	} else {
		env = append(env, cacheVars(cache, own)...)
	}
	for _, k := range []string{"PATH", "HOME", "LANG"} {
		if v, ok := os.LookupEnv(k); ok && !setsVar(own, k) {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, own...)
	writable := []string{dir, d.e.rel.SharedDir()}
	if cache != "" {
		writable = append(writable, cache)
	}
	return &stepRunner{d: d, dir: dir, env: env, writable: append(writable, d.e.cfg.Writable...)}
}

// slipwayVars are the SLIPWAY_* variables of a command run for release sha, prev being the
// release live before (rollback: sha was live before; revert: going back after a failure).
func (d *deploy) slipwayVars(sha, prev string, rollback, revert bool) []string {
	dir := realPath(d.e.rel.Dir(sha))
	previous := ""
	if prev != "" && prev != sha {
		previous = realPath(d.e.rel.Dir(prev))
	}
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return ""
	}
	return []string{
		"SLIPWAY_REPO=" + d.entry.Repo,
		"SLIPWAY_BRANCH=" + d.e.cfg.Branch,
		"SLIPWAY_SHA=" + sha,
		"SLIPWAY_PREVIOUS_SHA=" + d.entry.PreviousSHA,
		"SLIPWAY_RELEASE_DIR=" + dir,
		"SLIPWAY_PREVIOUS_RELEASE_DIR=" + previous,
		"SLIPWAY_DEPLOY_PATH=" + d.e.rel.Path(),
		"SLIPWAY_PUSHER=" + d.entry.Pusher,
		"SLIPWAY_MESSAGE=" + d.pushMessage(sha),
		"SLIPWAY_ROLLBACK=" + flag(rollback),
		"SLIPWAY_REVERT=" + flag(revert),
	}
}

// variables are the environment's own variables, "K=V": [env.vars], [env.secrets], and
// what env set set (never a name the first two set).
func (d *deploy) variables() []string {
	return append(append(slices.Clone(d.e.cfg.Vars), d.e.cfg.Secrets...), d.setVars...)
}

// realPath is p with its symlinks resolved, or p if that fails.
func realPath(p string) string {
	if real, err := filepath.EvalSymlinks(p); err == nil {
		return real
	}
	return p
}

// pushMessage is the push's message (git push -o message=...), or else sha's commit message.
func (d *deploy) pushMessage(sha string) string {
	if d.entry.Message != "" {
		return d.entry.Message
	}
	return d.message(sha)
}

// maxMessage bounds SLIPWAY_MESSAGE: a commit message can be of any size.
const maxMessage = 4096

// message is the commit message of sha, for SLIPWAY_MESSAGE; "" if it cannot be read.
func (d *deploy) message(sha string) string {
	if d.objects == nil {
		return ""
	}
	c, err := object.GetCommit(d.objects, plumbing.NewHash(sha))
	if err != nil {
		return ""
	}
	m := strings.TrimSpace(c.Message)
	if len(m) > maxMessage {
		m = strings.ToValidUTF8(m[:maxMessage], "")
	}
	return strings.ReplaceAll(m, "\x00", "")
}

// cacheDirs are where the usual package managers and compilers keep their caches: each is
// pointed into the environment's build cache unless [env.vars] sets it (SPEC 11).
var cacheDirs = []struct{ name, sub string }{
	{"XDG_CACHE_HOME", ""},
	{"npm_config_cache", "npm"},
	{"GOCACHE", "go-build"},
	{"GOMODCACHE", "go-mod"},
	{"COMPOSER_CACHE_DIR", "composer"},
	{"PIP_CACHE_DIR", "pip"},
	{"YARN_CACHE_FOLDER", "yarn"},
}

// cacheVars returns SLIPWAY_CACHE_DIR and the cache variables that vars do not set.
func cacheVars(cache string, vars []string) []string {
	env := []string{"SLIPWAY_CACHE_DIR=" + cache}
	for _, c := range cacheDirs {
		if !setsVar(vars, c.name) {
			env = append(env, c.name+"="+filepath.Join(cache, c.sub))
		}
	}
	return env
}

// setsVar reports whether the "K=V" list vars sets name.
func setsVar(vars []string, name string) bool {
	return slices.ContainsFunc(vars, func(kv string) bool { return strings.HasPrefix(kv, name+"=") })
}

// stepRunner runs one named command with a header and its duration, and journals it.
type stepRunner struct {
	d        *deploy
	dir      string
	env      []string
	writable []string // what a confined command may write, TMPDIR aside
	confined bool     // builds and tests are; after_activate is not (README: sudo)
	quiet    bool     // not journaled as a step: the health check's attempts, journaled as one
}

var _ Runner = (*stepRunner)(nil)

func (s *stepRunner) RunStep(ctx context.Context, name, command string, out io.Writer) error {
	say(out, "%s: %s", name, command)
	start := time.Now()
	tmp, err := s.d.e.rel.NewTempDir()
	if err != nil {
		s.d.log.Error().Err(err).Str("step", name).Msg("step could not run")
		return fmt.Errorf("%s: could not run: see the server log", name)
	}
	box := s.d.e.cfg.Box
	err = s.d.p.cfg.Builder.Run(ctx, builder.Command{
		Name: name, Run: command, Dir: s.dir, Env: s.env, Timeout: s.d.e.cfg.CommandTimeout,
		Confined: s.confined && s.d.p.server().Sandbox != configs.SandboxOff, Writable: s.writable, TempDir: tmp,
		Limits: builder.Limits{MemoryMax: box.MemoryMax, PidsMax: box.PidsMax, CPUWeight: box.CPUWeight},
	}, out)
	step := releaser.Step{Name: name, Took: time.Since(start)}
	s.d.log.Info().Str("step", name).Int64("took_ms", step.Took.Milliseconds()).AnErr("error", err).Msg("step finished")
	if err != nil {
		step.Exit = -1
		var ee *builder.ExitError
		if errors.As(err, &ee) && ee.Code > 0 {
			step.Exit = ee.Code
		}
		s.journal(step)
		if ee == nil {
			s.d.log.Error().Err(err).Str("step", name).Msg("step could not run")
			return fmt.Errorf("%s: could not run: see the server log", name)
		}
		indent(out, "%s failed (%s)%s", name, since(start), limitsNote(box))
		return err
	}
	s.journal(step)
	indent(out, "%s ok (%s)", name, since(start))
	return nil
}

func (s *stepRunner) journal(step releaser.Step) {
	if !s.quiet {
		s.d.steps = append(s.d.steps, step)
	}
}

// limitsNote names the limits a failed command ran with: where they are rlimits, a command
// that reaches one fails with its own error ("Cannot fork", "memory exhausted"), and this is
// where the pusher learns which limit that was.
func limitsNote(box configs.Box) string {
	var l []string
	if box.MemoryMax > 0 {
		l = append(l, "memory_max "+humanBytes(box.MemoryMax))
	}
	if box.PidsMax > 0 {
		l = append(l, fmt.Sprintf("pids_max %d", box.PidsMax))
	}
	if len(l) == 0 {
		return ""
	}
	return "; it ran with " + strings.Join(l, ", ")
}

// pruneCache prunes the build cache to cache_max_size, while this deploy still holds the
// lock: no build uses the cache meanwhile.
func (d *deploy) pruneCache(out io.Writer) {
	limit := d.e.cfg.CacheMaxSize
	if limit <= 0 {
		return
	}
	removed, freed, err := d.e.rel.PruneCache(limit)
	if err != nil {
		d.log.Warn().Err(err).Msg("prune the build cache")
		return
	}
	if removed > 0 {
		d.log.Info().Int("files", removed).Int64("bytes", freed).Msg("build cache pruned")
		indent(out, "build cache pruned to %s: %d files, %s freed", humanBytes(limit), removed, humanBytes(freed))
	}
}

// copyDirs copies the recipe's copy_dirs from the live release into the new one, before
// the build, unless a dir's key files changed (SPEC 9). A copy that fails fails the deploy:
// a half-copied node_modules is worse than none.
func (d *deploy) copyDirs(out io.Writer) error {
	live := d.entry.PreviousSHA
	if len(d.recipe.CopyDirs) == 0 || live == "" || live == d.entry.SHA || !d.e.rel.IsComplete(live) {
		return nil
	}
	for _, cd := range d.recipe.CopyDirs {
		if len(cd.Key) > 0 {
			same, err := d.e.rel.SameFiles(live, d.entry.SHA, cd.Key)
			if err != nil {
				d.log.Warn().Err(err).Str("dir", cd.Path).Msg("compare copy_dirs keys")
				same = false
			}
			if !same {
				say(out, "copy %s: %s changed since %s, so it starts clean", cd.Path, strings.Join(cd.Key, ", "), short(live))
				continue
			}
		}
		start := time.Now()
		how := "copied ahead, after it went live"
		stats, copied, err := d.e.rel.TakeSpare(live, d.entry.SHA, cd.Path)
		if err != nil {
			d.log.Warn().Err(err).Str("dir", cd.Path).Msg("copy_dirs: take the spare; copying instead")
		}
		if !copied {
			how = "copied now"
			stats, copied, err = d.e.rel.CopyDir(live, d.entry.SHA, cd.Path)
		}
		d.record("copy "+cd.Path, start, err)
		if err != nil {
			d.log.Error().Err(err).Str("dir", cd.Path).Msg("copy_dirs")
			return fmt.Errorf("copy %s from the live release: %s", cd.Path, safeReason(context.Background(), err))
		}
		if copied {
			say(out, "copy %s from %s: %d files, %s, %s (%s)", cd.Path, short(live), stats.Files, humanBytes(stats.Bytes), how, since(start))
		}
	}
	return nil
}

// recipe merges the commit's own slipway.toml under the server's settings.
func (p *Pipeline) recipe(e *environment, objects storer.EncodedObjectStorer, sha string, out io.Writer) (configs.Recipe, error) {
	commit, err := object.GetCommit(objects, plumbing.NewHash(sha))
	if err != nil {
		return configs.Recipe{}, fmt.Errorf("read commit %s: %w", short(sha), err)
	}
	text, found, err := repoConfig(commit)
	if err != nil {
		return configs.Recipe{}, err
	}
	if !found {
		return e.cfg.Recipe, nil
	}
	own, err := configs.ParseRecipe(text)
	if err != nil {
		var pe configs.Problems
		if errors.As(err, &pe) && len(pe) > 0 {
			// The report line has room for one problem; the pusher sees them all above it.
			for _, pr := range pe {
				say(out, "%s", pr)
			}
			if len(pe) > 1 {
				return configs.Recipe{}, fmt.Errorf("%s (%d problems in all, listed above)", pe[0], len(pe))
			}
			return configs.Recipe{}, fmt.Errorf("%s", pe[0])
		}
		return configs.Recipe{}, err
	}
	return own.Over(e.cfg.Recipe), nil
}

// repoConfig reads the commit's own slipway.toml. Anything but a regular file by that name
// (a directory, a symlink, a submodule) is refused rather than ignored: its author meant a
// recipe.
func repoConfig(commit *object.Commit) (text string, found bool, err error) {
	tree, err := commit.Tree()
	if err != nil {
		return "", false, fmt.Errorf("read the tree of %s: %w", short(commit.Hash.String()), err)
	}
	entry, err := tree.FindEntry("slipway.toml")
	if errors.Is(err, object.ErrEntryNotFound) || errors.Is(err, object.ErrDirectoryNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read slipway.toml: %w", err)
	}
	if entry.Mode != filemode.Regular && entry.Mode != filemode.Executable {
		return "", false, errors.New("slipway.toml must be a file, not a directory, symlink or submodule")
	}
	f, err := tree.TreeEntryFile(entry)
	if err != nil {
		return "", false, fmt.Errorf("read slipway.toml: %w", err)
	}
	if f.Size > maxRepoConfig {
		return "", false, fmt.Errorf("slipway.toml is larger than %d bytes", maxRepoConfig)
	}
	text, err = f.Contents()
	if err != nil {
		return "", false, fmt.Errorf("read slipway.toml: %w", err)
	}
	return text, true, nil
}

// notKept explains why sha cannot go live without a rebuild.
func notKept(e *environment, sha string) error {
	if en, err := e.rel.Entry(sha); err == nil && en.Outcome == releaser.OutcomeFailed {
		return fmt.Errorf("%s never went live (its deploy #%d failed): it is not a rollback target", short(sha), en.ID)
	}
	if en, err := e.rel.Entry(sha); err == nil && en.Outcome == releaser.OutcomeReverted {
		return fmt.Errorf("%s was reverted (deploy #%d): it is not a rollback target; push it to try it again", short(sha), en.ID)
	}
	return fmt.Errorf("releases/%s is not kept (pruned, or never built): push it to rebuild it", short(sha))
}

// shown is err as its requester may read it: what failed, and why when the reason is safe
// to show (releaser.Reason); the operator log has the whole chain.
func shown(what string, err error) error {
	if r, ok := releaser.Reason(err); ok {
		return fmt.Errorf("%s: %s", what, r)
	}
	return fmt.Errorf("%s: see the server log", what)
}

// safeReason is the part of err fit for the pusher: no server paths.
func safeReason(ctx context.Context, err error) string {
	if r, ok := releaser.Reason(err); ok {
		return r
	}
	switch {
	case ctx.Err() != nil:
		return errCancelled.Error()
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
