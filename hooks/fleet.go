package hooks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slipway/slipway/internal/fleet"
)

// Fleets (SPEC 10): an environment with targets builds and tests here, in its path, then
// ships the release to every target and swaps it live on all of them or on none. Prepare
// writes releases/<sha> on each target, in parallel; only if every target prepared does
// activate swap current on each, and if one swap fails, every target that swapped is swapped
// back. A failed deploy removes what it prepared on every target.

// fleetRun is one deploy's connections to its targets.
type fleetRun struct {
	conns    []*fleet.Conn
	prepared map[*fleet.Conn]bool   // releases/<sha> was written there by this deploy
	previous map[*fleet.Conn]string // what current named before this deploy swapped it
}

// prepareFleet connects to every target and writes the release there. Any failure fails
// the deploy, naming the hosts, and removes what was written.
func (d *deploy) prepareFleet(ctx context.Context, out io.Writer) error {
	f := d.e.cfg.Fleet
	if !f.Remote() {
		return nil
	}
	if len(d.recipe.AfterActivate) > 0 {
		return errors.New("after_activate is not yet supported with targets: it would run on the slipway host, not on each target")
	}
	sha := d.entry.SHA
	start := time.Now()
	say(out, "prepare %s on %s (%d at a time)", short(sha), targets(len(f.Targets)), min(f.Parallel, len(f.Targets)))
	run := &fleetRun{prepared: map[*fleet.Conn]bool{}, previous: map[*fleet.Conn]string{}}
	d.fleet = run
	var mu sync.Mutex
	var failed []string
	sem := make(chan struct{}, f.Parallel)
	var wg sync.WaitGroup
	for _, t := range f.Targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			tstart := time.Now()
			c, sent, wrote, err := d.prepareTarget(ctx, t)
			mu.Lock()
			defer mu.Unlock()
			if c != nil {
				run.conns = append(run.conns, c)
				run.prepared[c] = wrote
			}
			if err != nil {
				d.log.Warn().Err(err).Str("target", t.String()).Msg("prepare target")
				failed = append(failed, fmt.Sprintf("%s: %s", t, d.targetReason(ctx, t, err)))
				indent(out, "%s: failed: %s", t, d.targetReason(ctx, t, err))
				return
			}
			if sent < 0 {
				indent(out, "%s: kept from before (%s)", t, since(tstart))
			} else {
				indent(out, "%s: %s sent (%s)", t, humanBytes(sent), since(tstart))
			}
		}()
	}
	wg.Wait()
	// In the configuration's order, whichever finished first.
	slices.SortFunc(run.conns, func(a, b *fleet.Conn) int {
		return slices.Index(f.Targets, a.Target()) - slices.Index(f.Targets, b.Target())
	})
	d.record("prepare targets", start, nil)
	if ctx.Err() != nil {
		return errCancelled
	}
	if len(failed) > 0 {
		slices.Sort(failed)
		return fmt.Errorf("prepare failed on %d of %s, so none was swapped: %s", len(failed), targets(len(f.Targets)), strings.Join(failed, "; "))
	}
	return nil
}

// prepareTarget connects to t and writes the release there; sent is the bytes sent, -1 if
// t kept the release from before; wrote, whether this deploy (may have) written it there.
func (d *deploy) prepareTarget(ctx context.Context, t fleet.Target) (c *fleet.Conn, sent int64, wrote bool, err error) {
	c, err = d.e.dialer.Dial(ctx, t, d.e.cfg.Path)
	if err != nil {
		return nil, 0, false, err
	}
	// A target that stops answering fails like a command that runs too long.
	stop := c.Watchdog(d.e.cfg.CommandTimeout)
	defer stop()
	sha := d.entry.SHA
	kept, err := c.Has(sha)
	if err != nil {
		return c, 0, false, err
	}
	if kept && d.entry.Kind != kindRedeploy {
		return c, -1, false, nil
	}
	if kept { // a redeploy rebuilt it: the target's old build goes, unless it is live there
		if live, err := c.Live(); err != nil {
			return c, 0, false, err
		} else if live == sha {
			return c, 0, false, fmt.Errorf("releases/%s is live there: a redeploy of the live release is not yet supported with targets", short(sha))
		}
		if err := c.Discard(ctx, sha); err != nil {
			return c, 0, false, err
		}
	}
	sent, err = c.Prepare(ctx, sha, d.e.rel.Dir(sha), d.recipe.SharedFiles, d.recipe.SharedDirs)
	return c, sent, true, err
}

// targetReason is what the pusher reads of a target's failure: what went wrong there (the
// target's own words: unreachable, a host key, a shared file missing, tar's last line),
// with the deploy path shown as <path>.
func (d *deploy) targetReason(ctx context.Context, t fleet.Target, err error) string {
	if ctx.Err() != nil {
		return errCancelled.Error()
	}
	if _, ok := fleet.HostOf(err); !ok {
		return safeReason(ctx, err)
	}
	msg := strings.TrimPrefix(err.Error(), t.Host+": ")
	return strings.ReplaceAll(msg, d.e.cfg.Path, "<path>")
}

// targets is "1 target", "3 targets".
func targets(n int) string {
	if n == 1 {
		return "1 target"
	}
	return fmt.Sprintf("%d targets", n)
}

// swapTimeout bounds one target's swap (or swap back): a few SFTP requests.
const swapTimeout = 30 * time.Second

// activateFleet swaps current on every target. If one fails, those swapped are swapped
// back, and the deploy fails naming the hosts.
func (d *deploy) activateFleet(out io.Writer) error {
	run := d.fleet
	if run == nil {
		return nil
	}
	start := time.Now()
	var failed []string
	for _, c := range run.conns {
		stop := c.Watchdog(swapTimeout)
		prev, err := c.Activate(d.entry.SHA)
		stop()
		if err != nil {
			d.log.Error().Err(err).Str("target", c.Target().String()).Msg("activate target")
			failed = append(failed, fmt.Sprintf("%s: %s", c.Target(), d.targetReason(context.Background(), c.Target(), err)))
			break
		}
		run.previous[c] = prev
	}
	if len(failed) == 0 {
		d.record("activate targets", start, nil)
		names := make([]string, 0, len(run.conns))
		for _, c := range run.conns {
			names = append(names, c.Target().String())
		}
		say(out, "live on %s: %s (%s)", targets(len(run.conns)), strings.Join(names, ", "), since(start))
		return nil
	}
	d.restoreFleet(out)
	return fmt.Errorf("activate failed on %s; every target swapped was swapped back", strings.Join(failed, "; "))
}

// restoreFleet points current back, on every target this deploy swapped, at what it named
// before.
func (d *deploy) restoreFleet(out io.Writer) {
	run := d.fleet
	if run == nil {
		return
	}
	for _, c := range run.conns {
		prev, swapped := run.previous[c]
		if !swapped {
			continue
		}
		stop := c.Watchdog(swapTimeout)
		err := c.Restore(prev)
		stop()
		if err != nil {
			d.log.Error().Err(err).Str("target", c.Target().String()).Msg("swap a target back")
			say(out, "warning: %s could not be swapped back: %s", c.Target(), d.targetReason(context.Background(), c.Target(), err))
			continue
		}
		delete(run.previous, c)
		what := "releases/" + short(prev)
		if prev == "" {
			what = "nothing (current removed)"
		}
		indent(out, "%s: back on %s", c.Target(), what)
	}
}

// discardFleet removes, from every target, the release this deploy wrote there (never one
// that is live there).
func (d *deploy) discardFleet() {
	run := d.fleet
	if run == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for c, wrote := range run.prepared {
		if !wrote {
			continue
		}
		if err := c.Discard(ctx, d.entry.SHA); err != nil {
			d.log.Error().Err(err).Str("target", c.Target().String()).Msg("remove the release from a target")
		}
	}
}

// pruneFleet removes, from every target, the releases this host no longer keeps.
func (d *deploy) pruneFleet() {
	run := d.fleet
	if run == nil {
		return
	}
	rels, err := d.e.rel.Releases()
	if err != nil {
		d.log.Warn().Err(err).Msg("list releases to prune the targets")
		return
	}
	keep := make([]string, 0, len(rels))
	for _, r := range rels {
		keep = append(keep, r.SHA)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range run.conns {
		if err := c.Prune(ctx, keep); err != nil {
			d.log.Warn().Err(err).Str("target", c.Target().String()).Msg("prune a target")
		}
	}
}

// closeFleet ends the deploy's connections.
func (d *deploy) closeFleet() {
	if d.fleet == nil {
		return
	}
	for _, c := range d.fleet.conns {
		c.Close()
	}
}
