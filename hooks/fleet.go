package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/slipway/slipway/internal/fleet"
	"github.com/slipway/slipway/releaser"
)

// Fleets (SPEC 10): an environment with targets builds and tests here, in its path, then
// ships the release to every target and swaps it live on all of them or on none. Prepare
// writes releases/<sha> on each target, in parallel; only if every target prepared does
// activate swap current on each, and if one swap fails, every target that swapped is swapped
// back. A failed deploy removes what it prepared on every target.

// fleetRun is one deploy's connections to its targets.
type fleetRun struct {
	conns    []*fleet.Conn
	live     map[*fleet.Conn]string // what each target has live, as this deploy left it
	prepared map[*fleet.Conn]bool   // releases/<sha> was written there by this deploy
	previous map[*fleet.Conn]string // what current named before this deploy swapped it
	// held are the targets whose live release this deploy rebuilds at its own path (a
	// redeploy of it), with its old build set aside (fleet.Conn.PrepareRebuild); true until
	// the old build is put back (Unhold) after a failure.
	held      map[*fleet.Conn]bool
	activated map[*fleet.Conn]bool // Activate was called there (perhaps without an answer)
	// replaced is the manifest of the build a redeploy replaces, put back if it fails: the
	// targets and this host have that build again.
	replaced *fleet.Manifest
}

// prepareFleet connects to every target and writes the release there: what differs from
// the release each has live is sent, the rest copied there. Any failure fails the deploy,
// naming the hosts, and removes what was written. built: this deploy built the release,
// so its manifest is made anew.
func (d *deploy) prepareFleet(ctx context.Context, out io.Writer, built bool) error {
	f := d.e.cfg.Fleet
	if !f.Remote() {
		return nil
	}
	sha := d.entry.SHA
	start := time.Now()
	known, err := d.e.rel.Targets()
	if err != nil {
		d.log.Error().Err(err).Msg("read the targets' record")
		return shown("read which targets are paused", err)
	}
	var active []fleet.Target
	for _, t := range f.Targets {
		if p := known[t.String()].Paused; p != nil {
			say(out, "%s is paused by %s since %s: %s (skipped)", t, p.By, stamp(p.Since), p.Message)
			continue
		}
		active = append(active, t)
	}
	if len(active) == 0 {
		if !f.Local {
			return fmt.Errorf("every target of %s is paused: resume one (target resume %s HOST)", d.e.cfg.Repo, d.e.cfg.Repo)
		}
		return nil
	}
	say(out, "prepare %s on %s (%d at a time)", short(sha), targets(len(active)), min(f.Parallel, len(active)))
	run := &fleetRun{prepared: map[*fleet.Conn]bool{}, previous: map[*fleet.Conn]string{}, live: map[*fleet.Conn]string{},
		held: map[*fleet.Conn]bool{}, activated: map[*fleet.Conn]bool{}}
	d.fleet = run
	// A redeploy's targets that have sha live get only what differs from its old build,
	// whose manifest the new one replaces.
	if d.entry.Kind == kindRedeploy {
		if run.replaced, err = d.loadManifest(sha); err != nil {
			d.log.Warn().Err(err).Msg("manifest of the build replaced: sending everything")
			run.replaced = nil
		}
	}
	manifest, err := d.manifest(sha, built)
	if err != nil {
		d.log.Error().Err(err).Msg("manifest of the release")
		return shown("read the release to ship it", err)
	}
	env := append(d.slipwayVars(sha, d.entry.PreviousSHA, false, false), d.variables()...)
	lw := &lockedWriter{w: out}
	var mu sync.Mutex
	var failed []string
	fail := func(f string) {
		mu.Lock()
		failed = append(failed, f)
		mu.Unlock()
	}
	sem := make(chan struct{}, f.Parallel)
	var wg sync.WaitGroup
	for _, t := range active {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			tstart := time.Now()
			c, sent, how, err := d.prepareTarget(ctx, t, manifest, run.replaced)
			if c != nil {
				mu.Lock()
				run.conns = append(run.conns, c)
				run.prepared[c] = how != keptThere
				run.held[c] = how == rebuiltThere
				mu.Unlock()
			}
			if err != nil {
				d.log.Warn().Err(err).Str("target", t.String()).Msg("prepare target")
				fail(fmt.Sprintf("%s: %s", t, d.targetReason(ctx, t, err)))
				indent(lw, "%s: failed: %s", t, d.targetReason(ctx, t, err))
				return
			}
			switch {
			case sent.Kept:
				indent(lw, "%s: kept from before (%s)", t, since(tstart))
			case sent.Fallback != "":
				d.log.Warn().Str("target", t.String()).Str("why", sent.Fallback).Msg("unchanged files not copied on the target: sent them all")
				indent(lw, "%s: %s sent, all of it: the unchanged files could not be copied there (%s)", t, humanBytes(sent.Bytes), since(tstart))
			case sent.Copied+sent.Changed > 0:
				verb := "copied"
				if d.e.cfg.LinkFiles {
					verb = "linked"
				}
				again := ""
				if sent.Changed > 0 {
					again = fmt.Sprintf(", %d sent again: changed there since", sent.Changed)
				}
				indent(lw, "%s: %s sent, %d unchanged files %s there%s (%s)", t, humanBytes(sent.Bytes), sent.Copied, verb, again, since(tstart))
			default:
				indent(lw, "%s: %s sent (%s)", t, humanBytes(sent.Bytes), since(tstart))
			}
			if how == rebuiltThere {
				indent(lw, "%s: its live release is set aside while the new build waits beside it", t)
			}
			// Once for each copy of the release: a copy the target kept from before ran it then.
			if how != keptThere {
				if failure := d.targetCommands(ctx, lw, c, string(BeforeActivateEach), f.BeforeEach, sha, env); failure != "" {
					fail(failure)
				}
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
		return fmt.Errorf("prepare failed on %d of %s, so none was swapped: %s", len(failed), targets(len(active)), strings.Join(failed, "; "))
	}
	return nil
}

// How prepareTarget left a target.
type preparedHow int

const (
	keptThere    preparedHow = iota // the target kept the release from before: nothing written
	writtenThere                    // releases/<sha> written there
	rebuiltThere                    // a redeploy of the release it has live: rebuilt beside it
)

// prepareTarget connects to t and writes the release there. old is the manifest of the
// build a redeploy replaces (nil if none or not a redeploy).
func (d *deploy) prepareTarget(ctx context.Context, t fleet.Target, m, old *fleet.Manifest) (c *fleet.Conn, sent fleet.Sent, how preparedHow, err error) {
	c, err = d.e.dialer.Dial(ctx, t, d.e.cfg.Path)
	if err != nil {
		return nil, sent, keptThere, err
	}
	// A target that stops answering fails like a command that runs too long.
	stop := c.Watchdog(d.e.cfg.CommandTimeout)
	defer stop()
	sha := d.entry.SHA
	live, err := c.Live()
	if err != nil {
		return c, sent, keptThere, err
	}
	plan := fleet.Plan{SharedFiles: d.recipe.SharedFiles, SharedDirs: d.recipe.SharedDirs, Manifest: m, Link: d.e.cfg.LinkFiles}
	if d.entry.Kind == kindRedeploy { // it was rebuilt: the target's old build goes
		if live == sha {
			plan.Base = old
			sent, err = c.PrepareRebuild(ctx, sha, d.e.rel.Dir(sha), plan)
			return c, sent, rebuiltThere, err
		}
		if err := c.Discard(ctx, sha); err != nil {
			return c, sent, keptThere, err
		}
	}
	if live != "" && live != sha {
		// What the target has live is what this host sent it, as its manifest says; the
		// target checks each file it copies from it.
		if base, err := d.loadManifest(live); err != nil {
			d.log.Warn().Err(err).Str("target", t.String()).Msg("manifest of the target's live release: sending everything")
		} else {
			plan.Base, plan.BaseSHA = base, live
		}
	}
	sent, err = c.Prepare(ctx, sha, d.e.rel.Dir(sha), plan) // a release the target keeps: sent.Kept
	if sent.Kept {
		return c, sent, keptThere, err
	}
	return c, sent, writtenThere, err
}

// manifest is the manifest of release sha, made (and kept) if built or if there is none.
func (d *deploy) manifest(sha string, built bool) (*fleet.Manifest, error) {
	file, err := d.e.rel.ManifestPath(sha)
	if err != nil {
		return nil, err
	}
	if !built {
		if m, err := fleet.LoadManifest(file); err != nil || m != nil {
			return m, err
		}
	}
	m, err := fleet.BuildManifest(d.e.rel.Dir(sha))
	if err != nil {
		return nil, err
	}
	return m, m.Save(file)
}

// loadManifest is the kept manifest of release sha; nil if there is none.
func (d *deploy) loadManifest(sha string) (*fleet.Manifest, error) {
	file, err := d.e.rel.ManifestPath(sha)
	if err != nil {
		return nil, err
	}
	return fleet.LoadManifest(file)
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

// activateFleet swaps current on every target, all at once, so that the fleet is split
// between releases for one round of SFTP requests, not one per target. If one fails, those
// swapped are swapped back, and the deploy fails naming the hosts.
func (d *deploy) activateFleet(out io.Writer) error {
	run := d.fleet
	if run == nil {
		return nil
	}
	start := time.Now()
	var mu sync.Mutex
	failed := onEveryTarget(run.conns, func(c *fleet.Conn) string {
		stop := c.Watchdog(swapTimeout)
		prev, known, err := c.Activate(d.entry.SHA)
		stop()
		mu.Lock()
		defer mu.Unlock()
		run.activated[c] = true
		if known {
			// Swapped back on failure, even if the swap seemed to fail: its answer may be
			// what was lost, not the rename.
			run.previous[c] = prev
		}
		if err != nil {
			d.log.Error().Err(err).Str("target", c.Target().String()).Msg("activate target")
			return fmt.Sprintf("%s: %s", c.Target(), d.targetReason(context.Background(), c.Target(), err))
		}
		run.live[c] = d.entry.SHA
		return ""
	})
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
		var err error
		if run.held[c] { // the old build of the same release goes back to its path
			ctx, cancel := context.WithTimeout(context.Background(), swapTimeout)
			err = c.Unhold(ctx, d.entry.SHA, true)
			cancel()
			if err == nil {
				run.held[c] = false
			}
		} else {
			err = c.Restore(prev)
		}
		stop()
		if err != nil {
			d.log.Error().Err(err).Str("target", c.Target().String()).Msg("swap a target back")
			say(out, "warning: %s could not be swapped back: %s", c.Target(), d.targetReason(context.Background(), c.Target(), err))
			continue
		}
		delete(run.previous, c)
		run.live[c] = prev
		what := "releases/" + short(prev)
		switch {
		case prev == "":
			what = "nothing (current removed)"
		case prev == d.entry.SHA:
			what += ", the build live before"
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
	if run.replaced != nil && d.entry.SHA == d.entry.PreviousSHA { // the build live before is back
		if file, err := d.e.rel.ManifestPath(d.entry.SHA); err != nil || run.replaced.Save(file) != nil {
			d.log.Warn().Msg("the manifest of the build live before could not be put back: the next deploy may send more than it must")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for c, wrote := range run.prepared {
		var err error
		switch {
		case run.held[c]: // its old build goes back where it was
			err = c.Unhold(ctx, d.entry.SHA, run.activated[c])
		case wrote:
			err = c.Discard(ctx, d.entry.SHA)
		}
		if err != nil {
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
	if err := d.e.rel.PruneManifests(keep); err != nil {
		d.log.Warn().Err(err).Msg("prune the manifests")
	}
}

// closeFleet records what each target has live now, and ends the deploy's connections.
func (d *deploy) closeFleet() {
	if d.fleet == nil {
		return
	}
	live := map[string]string{}
	for c, sha := range d.fleet.live {
		live[c.Target().String()] = sha
	}
	if err := d.e.rel.RecordTargetsLive(live); err != nil {
		d.log.Error().Err(err).Msg("record the targets' live releases")
	}
	for _, c := range d.fleet.conns {
		c.Close()
	}
}

// fleetCommands runs cmds (after_activate) on every target at once, in release sha there,
// with the environment a command here gets (SLIPWAY_*, [env.vars], secrets), less what is
// this host's own (PATH, HOME, caches): the target's login environment gives those. Each
// line a target prints begins with its name; a target stops at its first failing command.
func (d *deploy) fleetCommands(out io.Writer, phase string, cmds []string, sha, prev string, rollback, revert bool) error {
	run := d.fleet
	if run == nil || len(cmds) == 0 {
		return nil
	}
	say(out, "%s on %s: %s", phase, targets(len(run.conns)), strings.Join(cmds, "; "))
	env := append(d.slipwayVars(sha, prev, rollback, revert), d.variables()...)
	lw := &lockedWriter{w: out}
	failed := onEveryTarget(run.conns, func(c *fleet.Conn) string {
		return d.targetCommands(context.Background(), lw, c, phase, cmds, sha, env)
	})
	if len(failed) > 0 {
		return fmt.Errorf("%s failed on %s", phase, strings.Join(failed, "; "))
	}
	return nil
}

// targetCommands runs cmds on c's target in release sha there, in order, each bounded by
// command_timeout and by ctx, and stops at the first failure, which it returns as
// "HOST: PHASE i/n: reason" ("" if every command passed). Each line the target prints
// begins with its name.
func (d *deploy) targetCommands(ctx context.Context, out io.Writer, c *fleet.Conn, phase string, cmds []string, sha string, env []string) string {
	who := c.Target().String()
	for i, cmd := range cmds {
		name := fmt.Sprintf("%s %d/%d", phase, i+1, len(cmds))
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, d.e.cfg.CommandTimeout)
		w := &prefixWriter{w: out, prefix: who + ": "}
		err := c.Exec(cctx, c.Release(sha), env, cmd, w)
		w.Flush()
		cancel()
		d.record(who+" "+name, start, err)
		if err != nil {
			reason := d.targetReason(ctx, c.Target(), err)
			indent(out, "%s: %s failed (%s, %s)", who, name, reason, since(start))
			return fmt.Sprintf("%s: %s: %s", who, name, reason)
		}
		indent(out, "%s: %s ok (%s)", who, name, since(start))
	}
	return ""
}

// fleetHealth runs the health check on every target at once: a URL is fetched from the
// target itself (through its sshd, so 127.0.0.1 is the target's own), a command runs
// there in the new release.
func (d *deploy) fleetHealth(out io.Writer) error {
	run, hc := d.fleet, d.e.cfg.HealthCheck
	if run == nil || hc == nil {
		return nil
	}
	say(out, "health check on %s: %s (every %s, for up to %s)", targets(len(run.conns)), healthWhat(hc), hc.Interval, hc.Timeout)
	env := append(d.slipwayVars(d.entry.SHA, d.entry.PreviousSHA, false, false), d.variables()...)
	lw := &lockedWriter{w: out}
	failed := onEveryTarget(run.conns, func(c *fleet.Conn) string {
		client := &http.Client{Transport: &http.Transport{DialContext: c.DialContext, DisableKeepAlives: true}}
		err := d.healthLoop(lw, c.Target().String()+": ", func(ctx context.Context) error {
			if hc.Command != "" {
				if err := c.Exec(ctx, c.Release(d.entry.SHA), env, hc.Command, io.Discard); err != nil {
					return errors.New(d.targetReason(context.Background(), c.Target(), err))
				}
				return nil
			}
			return healthHTTP(ctx, client, hc)
		})
		if err != nil {
			return err.Error() // healthLoop's words: the host, what failed, no paths
		}
		return ""
	})
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "; "))
	}
	return nil
}

// onEveryTarget runs fn for every target at once and returns the failures it reported
// (fn returns "" for none), sorted.
func onEveryTarget(conns []*fleet.Conn, fn func(*fleet.Conn) string) []string {
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if f := fn(c); f != "" {
				mu.Lock()
				failed = append(failed, f)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(failed)
	return failed
}

// lockedWriter serializes writes from a fleet's targets.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// prefixWriter writes each whole line with prefix before it; a line longer than 4 KiB is
// cut there. Flush writes what is left of a last line.
type prefixWriter struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.buf = append(p.buf, b...)
			if len(p.buf) >= 4<<10 {
				p.Flush()
			}
			break
		}
		p.buf = append(p.buf, b[:i]...)
		p.Flush()
		b = b[i+1:]
	}
	return n, nil
}

func (p *prefixWriter) Flush() {
	if len(p.buf) == 0 {
		return
	}
	line := append([]byte(p.prefix), p.buf...)
	p.w.Write(append(line, '\n'))
	p.buf = p.buf[:0]
}

// targetCmd is target pause and target resume.
func (p *Pipeline) targetCmd(c Caller, inv *invocation) error {
	e := inv.env
	if e.rel == nil {
		return unavailable(e.cfg.Repo, e.broken)
	}
	sub := inv.arg(0)
	msg := inv.message
	if sub == "pause" && len(inv.args) > 3 && msg != "" {
		msg = strings.Join(append([]string{msg}, inv.args[3:]...), " ") // -m a b, unquoted over SSH
	} else if len(inv.args) != 3 || (sub == "resume" && msg != "") {
		return usageErrorf("target pause REPO HOST -m MESSAGE | target resume REPO HOST")
	}
	t, err := findTarget(e, inv.arg(2))
	if err != nil {
		return err
	}
	switch sub {
	case "pause":
		if strings.TrimSpace(msg) == "" {
			return errors.New("target pause needs -m MESSAGE: say why, pushers will read it")
		}
		if err := e.rel.PauseTarget(t.String(), c.label(), msg); err != nil {
			return fmt.Errorf("pause %s: %w", t, err)
		}
		fmt.Fprintf(inv.stdout, "%s of %s is paused: deploys skip it until target resume\n", t, e.cfg.Repo)
	case "resume":
		if err := e.rel.ResumeTarget(t.String()); errors.Is(err, releaser.ErrNotPaused) {
			return fmt.Errorf("%s of %s is not paused", t, e.cfg.Repo)
		} else if err != nil {
			return fmt.Errorf("resume %s: %w", t, err)
		}
		fmt.Fprintf(inv.stdout, "%s of %s is resumed: the next deploy goes to it too\n", t, e.cfg.Repo)
	}
	return nil
}

// findTarget is the target of e that name names: as configured ("deploy@web2:2200"), or
// by user@host or host alone where that is unambiguous.
func findTarget(e *environment, name string) (fleet.Target, error) {
	var found []fleet.Target
	for _, t := range e.cfg.Fleet.Targets {
		switch name {
		case t.String():
			return t, nil
		case t.User + "@" + t.Host, t.Host:
			found = append(found, t)
		}
	}
	if len(found) == 1 {
		return found[0], nil
	}
	var names []string
	for _, t := range e.cfg.Fleet.Targets {
		names = append(names, t.String())
	}
	if len(names) == 0 {
		return fleet.Target{}, fmt.Errorf("%s has no targets", e.cfg.Repo)
	}
	if len(found) > 1 {
		return fleet.Target{}, fmt.Errorf("%q names more than one target of %s: %s", name, e.cfg.Repo, strings.Join(names, ", "))
	}
	return fleet.Target{}, fmt.Errorf("%s has no target %q; its targets: %s", e.cfg.Repo, name, strings.Join(names, ", "))
}
