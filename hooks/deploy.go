package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/hooks"
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
	p       *pipeline
	e       *environment
	entry   releaser.Entry // what the journal records; Kind, SHA, Pusher... set by the caller
	objects storer.EncodedObjectStorer
	recipe  recipe
	steps   []releaser.Step
	log     zerolog.Logger
}

// run journals and runs d, writing its progress to out. The returned error is short and
// safe for whoever asked (the pusher, or the operator's terminal).
func (d *deploy) run(ctx context.Context, out io.Writer) (err error) {
	rel := d.e.rel
	d.entry.Repo = d.e.cfg.repo
	previous, err := rel.Current()
	if err != nil {
		d.p.log.Error().Err(err).Str("repo", d.entry.Repo).Msg("read current")
		return errors.New("cannot read the live release: see the server log")
	}
	d.entry.PreviousSHA = previous
	d.log = d.p.log.With().Str("repo", d.entry.Repo).Str("sha", d.entry.SHA).Str("old_sha", previous).
		Str("pusher", d.entry.Pusher).Str("key_fp", d.entry.KeyFingerprint).Str("kind", d.entry.Kind).Logger()

	entry, logFile, err := rel.Begin(d.entry)
	if err != nil {
		d.log.Error().Err(err).Msg("journal deploy")
		return errors.New("cannot record the deploy: see the server log")
	}
	d.entry = entry
	defer logFile.Close()
	out = &tee{pusher: out, log: &capped{w: logFile, left: maxLogBytes}}
	d.log = d.log.With().Int64("id", entry.ID).Logger()

	start := time.Now()
	d.log.Info().Msg("deploy started")
	defer func() {
		if err != nil && ctx.Err() != nil {
			d.log.Warn().Err(err).Msg("deploy cancelled")
			err = cancelled(ctx)
		}
		outcome, reason := releaser.OutcomeLive, ""
		switch {
		case err != nil && ctx.Err() != nil:
			outcome, reason = releaser.OutcomeCancelled, err.Error()
		case err != nil:
			outcome, reason = releaser.OutcomeFailed, err.Error()
		}
		if ferr := rel.Finish(entry.ID, outcome, d.steps, reason); ferr != nil {
			d.log.Error().Err(ferr).Msg("journal deploy end")
		}
		ev := d.log.Info()
		if err != nil {
			ev = d.log.Warn().Err(err)
			say(out, "%s of %s failed after %s: %v", d.entry.Kind, short(d.entry.SHA), since(start), err)
		} else {
			say(out, "%s is live (%s in all)", short(d.entry.SHA), since(start))
		}
		ev.Str("outcome", outcome).Dur("took", time.Since(start)).Msg("deploy finished")
	}()

	what := map[string]string{kindPush: "deploying", kindRollback: "rolling back to", kindRedeploy: "redeploying"}[d.entry.Kind]
	say(out, "%s %s to %s (%s by %s, deploy #%d)", what, short(d.entry.SHA), d.entry.Repo, d.entry.Kind, d.entry.Pusher, entry.ID)
	if d.recipe, err = d.p.recipe(d.e, d.objects, d.entry.SHA, out); err != nil {
		return err
	}
	switch {
	case d.entry.Kind == kindRollback:
		return d.reactivate(ctx, out)
	case d.entry.Kind == kindPush && rel.IsComplete(d.entry.SHA):
		return d.reactivate(ctx, out)
	default:
		return d.build(ctx, out)
	}
}

// build writes a release, runs its build and test commands, and activates it. Any failure
// before the swap removes the release and leaves current as it was. A redeploy of the live
// release builds at its own name while a hard-linked copy of it stays live.
func (d *deploy) build(ctx context.Context, out io.Writer) (err error) {
	rel, sha := d.e.rel, d.entry.SHA
	held := false
	if d.entry.Kind == kindRedeploy && rel.IsComplete(sha) {
		if sha == d.entry.PreviousSHA {
			say(out, "releases/%s is live: a copy serves while it is rebuilt", short(sha))
			if err := rel.Hold(sha); err != nil {
				d.log.Error().Err(err).Msg("hold live release")
				return errors.New("cannot set the live release aside for the rebuild: see the server log")
			}
			held = true
		} else if err := rel.Discard(sha); err != nil {
			d.log.Error().Err(err).Msg("remove release to rebuild")
			return errors.New("cannot remove the old build of this release: see the server log")
		}
	}
	defer func() {
		if err == nil {
			return
		}
		if held {
			if rerr := rel.Restore(sha); rerr != nil {
				d.log.Error().Err(rerr).Msg("restore held release")
			}
			return
		}
		if derr := rel.Discard(sha); derr != nil {
			d.log.Error().Err(derr).Msg("remove failed release")
		}
	}()

	say(out, "checkout %s", short(sha))
	start := time.Now()
	stats, err := rel.Materialize(ctx, d.objects, sha, out)
	d.record("checkout", start, err)
	if err != nil {
		d.log.Warn().Err(err).Msg("checkout failed")
		return fmt.Errorf("checkout: %s", safeReason(ctx, err))
	}
	reused := ""
	if stats.Reused > 0 {
		reused = fmt.Sprintf("; %d unchanged, copied from the live release", stats.Reused)
	}
	indent(out, "%d files, %s written (%s)%s", stats.Files, humanBytes(stats.Bytes), since(start), reused)
	if err := d.linkShared(out); err != nil {
		return err
	}
	steps := d.runner()
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
		return errCancelled
	}
	if err := rel.Complete(sha); err != nil {
		d.log.Error().Err(err).Msg("record release complete")
		return errors.New("cannot record the release: see the server log")
	}
	return d.activate(out)
}

// errCancelled is a deploy whose requester went away before the swap.
var errCancelled = errors.New("cancelled: the connection was closed before the release went live")

// cancelled says why ctx ended a deploy before the swap.
func cancelled(ctx context.Context) error {
	if errors.Is(context.Cause(ctx), gitserver.ErrShuttingDown) {
		return errors.New("cancelled: the server is shutting down")
	}
	return errCancelled
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
	if ctx.Err() != nil {
		return errCancelled
	}
	return d.activate(out)
}

func (d *deploy) linkShared(out io.Writer) error {
	if len(d.recipe.sharedFiles)+len(d.recipe.sharedDirs) == 0 {
		return nil
	}
	start := time.Now()
	say(out, "link shared: %s", strings.Join(append(append([]string{}, d.recipe.sharedFiles...), d.recipe.sharedDirs...), ", "))
	err := d.e.rel.LinkShared(d.entry.SHA, d.recipe.sharedFiles, d.recipe.sharedDirs)
	d.record("link shared", start, err)
	if err != nil {
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

// activate swaps current, runs after_activate and prunes. From the swap on, the requester
// hanging up changes nothing: the release is live and its hooks run to the end.
func (d *deploy) activate(out io.Writer) error {
	sha := d.entry.SHA
	start := time.Now()
	wasLive, err := d.e.rel.Activate(sha)
	d.record("activate", start, err)
	if err != nil {
		d.log.Error().Err(err).Msg("activate failed")
		return errors.New("activate: cannot swap current: see the server log")
	}
	say(out, "live: current -> releases/%s (%s)", sha, since(start))
	d.log.Info().Bool("rollback", wasLive).Msg("release activated")

	steps := d.runner()
	if wasLive {
		steps.env = append(steps.env, "SLIPWAY_ROLLBACK=1")
	}
	h := hooks.Hooks{AfterActivate: d.recipe.afterActivate}
	if err := h.Fire(context.Background(), hooks.AfterActivate, steps, out); err != nil {
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

// record adds a step that is not a command (checkout, link shared, activate) to the journal.
func (d *deploy) record(name string, start time.Time, err error) {
	exit := 0
	if err != nil {
		exit = 1
	}
	d.steps = append(d.steps, releaser.Step{Name: name, Took: time.Since(start), Exit: exit})
}

// runner runs this deploy's commands, with the environment SPEC section 5 names.
func (d *deploy) runner() *stepRunner {
	dir := d.e.rel.Dir(d.entry.SHA)
	env := []string{
		"SLIPWAY_REPO=" + d.entry.Repo,
		"SLIPWAY_BRANCH=" + d.e.cfg.branch,
		"SLIPWAY_SHA=" + d.entry.SHA,
		"SLIPWAY_PREVIOUS_SHA=" + d.entry.PreviousSHA,
		"SLIPWAY_RELEASE_DIR=" + dir,
		"SLIPWAY_DEPLOY_PATH=" + d.e.rel.Path(),
		"SLIPWAY_PUSHER=" + d.entry.Pusher,
	}
	env = append(env, d.e.cfg.vars...)
	for _, k := range []string{"PATH", "HOME", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return &stepRunner{d: d, dir: dir, env: env}
}

// stepRunner runs one named command with a header and its duration, and journals it.
type stepRunner struct {
	d   *deploy
	dir string
	env []string
}

var _ hooks.Runner = (*stepRunner)(nil)

func (s *stepRunner) RunStep(ctx context.Context, name, command string, out io.Writer) error {
	say(out, "%s: %s", name, command)
	start := time.Now()
	err := s.d.p.builder.Run(ctx, builder.Command{
		Name: name, Run: command, Dir: s.dir, Env: s.env, Timeout: s.d.e.cfg.commandTimeout,
	}, out)
	step := releaser.Step{Name: name, Took: time.Since(start)}
	s.d.log.Info().Str("step", name).Dur("took", step.Took).AnErr("error", err).Msg("step finished")
	if err != nil {
		step.Exit = -1
		var ee *builder.ExitError
		if errors.As(err, &ee) && ee.Code > 0 {
			step.Exit = ee.Code
		}
		s.d.steps = append(s.d.steps, step)
		if ee == nil {
			s.d.log.Error().Err(err).Str("step", name).Msg("step could not run")
			return fmt.Errorf("%s: could not run: see the server log", name)
		}
		indent(out, "%s failed (%s)", name, since(start))
		return err
	}
	s.d.steps = append(s.d.steps, step)
	indent(out, "%s ok (%s)", name, since(start))
	return nil
}

// recipe merges the commit's own slipway.toml under the server's settings.
func (p *pipeline) recipe(e *environment, objects storer.EncodedObjectStorer, sha string, out io.Writer) (recipe, error) {
	commit, err := object.GetCommit(objects, plumbing.NewHash(sha))
	if err != nil {
		return recipe{}, fmt.Errorf("read commit %s: %w", short(sha), err)
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

// notKept explains why sha cannot go live without a rebuild.
func notKept(e *environment, sha string) error {
	if en, err := e.rel.Entry(sha); err == nil && en.Outcome == releaser.OutcomeFailed {
		return fmt.Errorf("%s never went live (its deploy #%d failed): it is not a rollback target", short(sha), en.ID)
	}
	return fmt.Errorf("releases/%s is not kept (pruned, or never built): push it to rebuild it", short(sha))
}

// safeReason is the part of err fit for the pusher: no server paths.
func safeReason(ctx context.Context, err error) string {
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

// tee writes everything to the requester and to the deploy's log. A requester that hung
// up does not stop the log.
type tee struct {
	pusher io.Writer
	log    io.Writer
}

func (t *tee) Write(b []byte) (int, error) {
	t.log.Write(b)    //nolint:errcheck // the log is best effort
	t.pusher.Write(b) //nolint:errcheck // a gone requester cancels the deploy through ctx
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
