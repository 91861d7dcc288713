package hooks

// Activation (SPEC 7): before_activate in the new release before the swap; then the swap,
// after_activate and the health check; and when one of those two fails, on_failure: revert
// to the release live before (the default), or keep the new one live, unhealthy. From the
// swap on, nothing the requester does changes the course: every command here runs to its end
// under context.Background.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/releaser"
)

// activationError is a deploy whose release went live and then failed its after_activate
// or health check: outcome is releaser.OutcomeReverted or releaser.OutcomeUnhealthy.
type activationError struct {
	outcome string
	msg     string
}

func (e *activationError) Error() string { return e.msg }

// beforeActivate runs the recipe's before_activate commands (ev BeforeActivate), or, if
// this host is one of its fleet's targets, before_activate_each (ev BeforeActivateEach,
// once the release is shipped: what it writes is this host's own), in the new release,
// confined like the build: a failure rejects the push as a failed test does.
func (d *deploy) beforeActivate(ctx context.Context, ev Event, out io.Writer) error {
	steps := d.runner()
	steps.confined = true
	h := Hooks{BeforeActivate: d.recipe.BeforeActivate}
	if f := d.e.cfg.Fleet; f.Remote() && f.Local {
		h.BeforeActivateEach = f.BeforeEach
	}
	return h.Fire(ctx, ev, steps, out)
}

// activate swaps current, runs after_activate and the health check, and prunes; a failure
// of either is on_failure's to handle.
func (d *deploy) activate(out io.Writer) error {
	sha := d.entry.SHA
	if err := d.activateFleet(out); err != nil {
		return err
	}
	start := time.Now()
	wasLive, err := d.e.rel.Activate(sha)
	d.record("activate", start, err)
	if err != nil {
		d.log.Error().Err(err).Msg("activate failed")
		d.restoreFleet(out)
		return shown("activate", err)
	}
	d.wentLive = true
	if f := d.e.cfg.Fleet; f.Remote() && !f.Local {
		say(out, "recorded live here: .slipway/live -> releases/%s (%s)", sha, since(start))
	} else {
		say(out, "live: current -> releases/%s (%s)", sha, since(start))
	}
	d.log.Info().Bool("rollback", wasLive).Msg("release activated")

	var failure error
	if d.runsHere() {
		steps := d.runnerFor(sha, d.entry.PreviousSHA, wasLive, false)
		failure = Hooks{AfterActivate: d.recipe.AfterActivate}.Fire(context.Background(), AfterActivate, steps, out)
		if failure == nil {
			failure = d.healthCheck(out)
		}
	}
	if failure == nil {
		failure = d.fleetCommands(out, "after_activate", d.recipe.AfterActivate, sha, d.entry.PreviousSHA, wasLive, false)
	}
	if failure == nil {
		failure = d.fleetHealth(out)
	}
	if failure != nil {
		d.log.Warn().Err(failure).Str("on_failure", d.onFailure()).Msg("activation failed")
		if d.onFailure() == configs.OnFailureKeep {
			say(out, "%v; on_failure = \"keep\": %s stays live, unhealthy", failure, short(sha))
			d.prune(out)
			return &activationError{outcome: releaser.OutcomeUnhealthy, msg: failure.Error() + "; kept live (on_failure = \"keep\")"}
		}
		return d.revert(out, failure)
	}
	d.prune(out)
	return nil
}

// runsHere reports whether the app runs on this host, so that after_activate and the health
// check run here: no targets, or "local" among them.
func (d *deploy) runsHere() bool {
	f := d.e.cfg.Fleet
	return !f.Remote() || f.Local
}

// onFailure is the environment's on_failure, revert unless it says keep.
func (d *deploy) onFailure() string {
	if d.e.cfg.OnFailure == configs.OnFailureKeep {
		return configs.OnFailureKeep
	}
	return configs.OnFailureRevert
}

// revert makes the release live before this deploy live again and runs its after_activate
// with SLIPWAY_ROLLBACK=1 and SLIPWAY_REVERT=1; on a first deploy it removes current. A
// release this deploy built is removed: it is never a rollback target.
func (d *deploy) revert(out io.Writer, failure error) error {
	sha, prev := d.entry.SHA, d.entry.PreviousSHA
	d.restoreFleet(out) // every target back on what it had live, whatever happens here
	if d.rebuildsLive {
		return d.unrebuild(out, failure)
	}
	if prev == "" || prev == sha {
		say(out, "%v; reverting: nothing was live before, so current is removed", failure)
		if err := d.e.rel.Deactivate(sha); err != nil {
			d.log.Error().Err(err).Msg("revert: remove current")
			return shown("revert: remove current", err)
		}
		d.discardBuilt()
		return &activationError{outcome: releaser.OutcomeReverted, msg: failure.Error() + "; reverted: nothing was live before"}
	}
	say(out, "%v; reverting to %s", failure, short(prev))
	start := time.Now()
	_, err := d.e.rel.Activate(prev)
	d.record("revert", start, err)
	if err != nil {
		d.log.Error().Err(err).Msg("revert: activate the previous release")
		return &activationError{outcome: releaser.OutcomeUnhealthy,
			msg: fmt.Sprintf("%v; the revert to %s failed (%s), so %s stays live", failure, short(prev), safeReason(context.Background(), err), short(sha))}
	}
	if d.runsHere() {
		say(out, "live again: current -> releases/%s (%s)", prev, since(start))
	} else {
		say(out, "recorded live here again: .slipway/live -> releases/%s (%s)", prev, since(start))
	}
	recipe, err := d.p.recipe(d.e, d.objects, prev, io.Discard)
	if err != nil {
		d.log.Warn().Err(err).Msg("revert: read the previous release's recipe; its after_activate does not run")
		say(out, "warning: the after_activate of %s could not be read: see the server log", short(prev))
	} else {
		if d.runsHere() {
			steps := d.runnerFor(prev, sha, true, true)
			if err := (Hooks{AfterActivate: recipe.AfterActivate}).Fire(context.Background(), AfterActivate, steps, out); err != nil {
				d.log.Warn().Err(err).Msg("revert: after_activate of the previous release failed")
				say(out, "warning: %v (after_activate of %s); it stays live", err, short(prev))
			}
		}
		if err := d.fleetCommands(out, "after_activate", recipe.AfterActivate, prev, sha, true, true); err != nil {
			d.log.Warn().Err(err).Msg("revert: after_activate of the previous release failed on targets")
			say(out, "warning: %v (after_activate of %s); it stays live", err, short(prev))
		}
	}
	d.discardBuilt()
	return &activationError{outcome: releaser.OutcomeReverted, msg: fmt.Sprintf("%v; reverted to %s", failure, short(prev))}
}

// unrebuild reverts a redeploy of the live release: the build that was live before,
// which the rebuild kept aside, goes back (releaser.Unrebuild), and its after_activate runs
// again with SLIPWAY_REVERT=1.
func (d *deploy) unrebuild(out io.Writer, failure error) error {
	sha := d.entry.SHA
	say(out, "%v; reverting to the build live before", failure)
	start := time.Now()
	err := d.e.rel.Unrebuild(sha)
	d.record("revert", start, err)
	if err != nil {
		d.log.Error().Err(err).Msg("revert: put back the build live before")
		return &activationError{outcome: releaser.OutcomeUnhealthy,
			msg: fmt.Sprintf("%v; the revert to the build live before failed (%s), so the rebuild stays live", failure, safeReason(context.Background(), err))}
	}
	say(out, "live again: the build of %s from before (%s)", short(sha), since(start))
	if d.runsHere() {
		steps := d.runnerFor(sha, sha, true, true)
		if err := (Hooks{AfterActivate: d.recipe.AfterActivate}).Fire(context.Background(), AfterActivate, steps, out); err != nil {
			d.log.Warn().Err(err).Msg("revert: after_activate of the build live before failed")
			say(out, "warning: %v (after_activate of the build live before); it stays live", err)
		}
	}
	if err := d.fleetCommands(out, "after_activate", d.recipe.AfterActivate, sha, sha, true, true); err != nil {
		d.log.Warn().Err(err).Msg("revert: after_activate of the build live before failed on targets")
		say(out, "warning: %v (after_activate of the build live before); it stays live", err)
	}
	return &activationError{outcome: releaser.OutcomeReverted, msg: failure.Error() + "; reverted to the build live before"}
}

// discardBuilt removes the release this deploy built, now that it is not live.
func (d *deploy) discardBuilt() {
	if !d.built {
		return
	}
	if err := d.e.rel.Discard(d.entry.SHA); err != nil {
		d.log.Error().Err(err).Msg("remove the reverted release")
	}
}

// prune removes releases beyond keep_releases, here and on the targets.
func (d *deploy) prune(out io.Writer) {
	defer d.pruneFleet()
	removed, err := d.e.rel.Prune()
	if err != nil {
		d.log.Error().Err(err).Msg("prune failed")
		say(out, "warning: old releases could not be pruned: see the server log")
	}
	if len(removed) > 0 {
		d.log.Info().Strs("removed", removed).Msg("releases pruned")
		say(out, "pruned %d old release(s)", len(removed))
	}
}

// maxHealthBody bounds what a health check reads of a response.
const maxHealthBody = 1 << 20

// healthCheck runs the environment's health check, if it has one: an attempt every
// interval until one passes or timeout runs out.
func (d *deploy) healthCheck(out io.Writer) error {
	hc := d.e.cfg.HealthCheck
	if hc == nil {
		return nil
	}
	say(out, "health check: %s (every %s, for up to %s)", healthWhat(hc), hc.Interval, hc.Timeout)
	return d.healthLoop(out, "", func(ctx context.Context) error {
		if hc.Command != "" {
			return d.healthCommand(ctx, hc.Command)
		}
		return healthHTTP(ctx, http.DefaultClient, hc)
	})
}

func healthWhat(hc *configs.HealthCheck) string {
	if hc.Command != "" {
		return hc.Command
	}
	return "GET " + hc.URL
}

// healthLoop tries probe every interval until it passes or the health check's timeout runs
// out; who ("web1: ", or "") begins its lines.
func (d *deploy) healthLoop(out io.Writer, who string, probe func(context.Context) error) error {
	hc := d.e.cfg.HealthCheck
	start := time.Now()
	deadline := start.Add(hc.Timeout)
	var last error
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := probe(ctx)
		cut := ctx.Err() != nil
		cancel()
		// An attempt the deadline cut short says less than the one before it did.
		if last == nil || err == nil || !cut {
			last = err
		}
		if last == nil {
			d.record(strings.TrimSpace(who+" health check"), start, nil)
			indent(out, "%shealthy (%d attempt(s), %s)", who, attempt, since(start))
			return nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			break
		}
		time.Sleep(min(hc.Interval, wait))
		if time.Now().After(deadline) {
			break
		}
	}
	d.record(strings.TrimSpace(who+" health check"), start, last)
	indent(out, "%sunhealthy: %v", who, last)
	return fmt.Errorf("%shealth check: %v after %s", who, last, hc.Timeout)
}

// healthHTTP is one GET of the health check's URL.
func healthHTTP(ctx context.Context, client *http.Client, hc *configs.HealthCheck) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hc.URL, nil)
	if err != nil {
		return fmt.Errorf("bad URL %s", hc.URL)
	}
	req.Header.Set("User-Agent", "slipway-health-check")
	resp, err := client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer from %s", hc.URL)
		}
		return fmt.Errorf("%v (%s)", err, hc.URL)
	}
	defer resp.Body.Close() // read below: closing it loses nothing
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHealthBody))
	if err != nil {
		return fmt.Errorf("HTTP %d from %s, body unread: %v", resp.StatusCode, hc.URL, err)
	}
	if resp.StatusCode != hc.ExpectStatus {
		return fmt.Errorf("HTTP %d from %s (want %d)", resp.StatusCode, hc.URL, hc.ExpectStatus)
	}
	if hc.ExpectBody != "" && !strings.Contains(string(body), hc.ExpectBody) {
		return fmt.Errorf("the body from %s lacks %q", hc.URL, hc.ExpectBody)
	}
	return nil
}

// healthCommand is one run of the health check's command, in the release, confined like a
// build; its output is not shown (it would repeat every interval), only its failure.
func (d *deploy) healthCommand(ctx context.Context, command string) error {
	steps := d.runner()
	steps.confined = true
	steps.quiet = true
	return steps.RunStep(ctx, "health check", command, io.Discard)
}
