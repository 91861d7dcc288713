package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/slipway/slipway/internal/fleet/fleettest"
)

// Figure 10 ships a release to a fleet of 1, 3 and 8 targets: real sshd, each on its own
// loopback address and in its own mount namespace, seeing its own deploy root at the path
// they share. slipway prepares every target at once, then swaps all; the baseline is
// Capistrano's way by hand: a pre-receive hook whose loop streams git archive | ssh host
// tar -x into each host in turn, then swaps current on each (ln -s + mv -T). Time = from
// just before git push until the last target's current names the release.

// fleetSizes are the fleets figure 10 measures.
var fleetSizes = []int{1, 3, 8}

// fleetHook is the baseline's pre-receive hook: %q the deploy path on the targets, %s the
// ssh options, %s the targets ("ip port" lines: nothing a shell quote would need).
const fleetHook = `#!/bin/bash
# pre-receive: ship to every host in turn, then swap each (the baseline of figure 10)
set -u
D=%q
SSH="ssh %s"
HOSTS='%s'
t0=$(date +%%s%%N)
while read -r old new ref; do
  echo "-----> deploying $new"
  while read -r ip port; do
    git archive --format=tar "$new" | $SSH -p "$port" "root@$ip" "set -e; rm -rf $D/releases/.tmp-$new; mkdir -p $D/releases/.tmp-$new; tar -x -C $D/releases/.tmp-$new; mv $D/releases/.tmp-$new $D/releases/$new" \
      || { echo "prepare failed on $ip"; exit 1; }
  done <<< "$HOSTS"
  while read -r ip port; do
    $SSH -n -p "$port" "root@$ip" "ln -sfn releases/$new $D/.current.tmp && mv -T $D/.current.tmp $D/current" || { echo "swap failed on $ip"; exit 1; }
  done <<< "$HOSTS"
  echo "-----> live: current -> releases/$new"
done
echo "-----> hook took $(( ($(date +%%s%%N) - t0) / 1000 )) us"
`

// fleets is figure 10.
func (b *bench) fleets(ctx context.Context) error {
	if os.Geteuid() != 0 {
		b.note("Figure 10 (fleets) skipped: its targets (sshd in their own mount namespaces) need root.")
		return nil
	}
	if _, err := lookPath("unshare"); err != nil {
		b.note("Figure 10 (fleets) skipped: no unshare (util-linux).")
		return nil
	}
	dir := filepath.Join(b.tmp, "fleet")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !b.opts.keep {
		defer os.RemoveAll(dir)
	}
	sz, _ := sizeByName("small")
	b.logf("fleets: generating the workload")
	w, err := generate(ctx, b.env, dir, sz)
	if err != nil {
		return err
	}
	runs := min(b.opts.runs, zdCommits)
	for _, n := range fleetSizes {
		if err := b.fleet(ctx, w, filepath.Join(dir, fmt.Sprintf("n%d", n)), n, runs); err != nil {
			return fmt.Errorf("%d targets: %w", n, err)
		}
	}
	b.extra["fleetfiles"] = fmt.Sprint(w.files)
	b.extra["fleetbytes"] = fmt.Sprintf("%.1f", float64(w.bytes)/1e6)
	return nil
}

// fleet measures one fleet of n targets: the first push, then runs one-file changes.
func (b *bench) fleet(ctx context.Context, w *workload, dir string, n, runs int) error {
	slipDir := filepath.Join(dir, "slipway")
	deploy := filepath.Join(slipDir, "deploy") // the same path here and on every target
	keys := filepath.Join(slipDir, "keys")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		return err
	}
	identity := filepath.Join(keys, "id")
	pub, err := fleettest.WriteKey(identity)
	if err != nil {
		return err
	}
	authorized := filepath.Join(keys, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		return err
	}
	var hosts []*fleettest.Host
	defer func() {
		for _, h := range hosts {
			h.Stop()
		}
	}()
	var known, targets, hostLines []string
	for i := range n {
		name := fmt.Sprintf("t%d", i+1)
		h, err := fleettest.StartHost(name, fmt.Sprintf("127.0.0.%d", 20+i), filepath.Join(dir, "sshd", name),
			filepath.Join(dir, "hosts", name), deploy, authorized, fleettest.HostOptions{})
		if err != nil {
			return err
		}
		hosts = append(hosts, h)
		known = append(known, h.KnownHostsLine())
		targets = append(targets, fmt.Sprintf("%q", "root@"+h.Addr()))
		hostLines = append(hostLines, fmt.Sprintf("%s %d", h.IP, h.Port))
	}
	knownHosts := filepath.Join(keys, "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(strings.Join(known, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	// slipway deploys into deploy/slip, the hook into deploy/hand, on the same hosts.
	env := slipwayEnv{repo: "bench/fleet", path: filepath.Join(deploy, "slip"), config: fmt.Sprintf(
		"targets = [%s]\ntarget_identity = %q\ntarget_known_hosts = %q\n", strings.Join(targets, ", "), identity, knownHosts)}
	slip, err := startSlipway(ctx, &b.procs, b.bin, slipDir, b.authKeys, []slipwayEnv{env})
	if err != nil {
		return err
	}
	defer slip.stop(&b.procs)

	hand := filepath.Join(deploy, "hand")
	repo := filepath.Join(dir, "hand.git")
	if _, err := run(ctx, b.env, "/", time.Minute, "git", "init", "-q", "--bare", "-b", "main", repo); err != nil {
		return err
	}
	sshOpts := fmt.Sprintf("-F /dev/null -i %s -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s -o LogLevel=ERROR", identity, knownHosts)
	hook := fmt.Sprintf(fleetHook, hand, sshOpts, strings.Join(hostLines, "\n"))
	if err := os.WriteFile(filepath.Join(repo, "hooks", "pre-receive"), []byte(hook), 0o755); err != nil {
		return err
	}
	last := hosts[len(hosts)-1].Root // what the last target sees as deploy
	servers := []struct {
		name, url, current string
	}{
		{srvSlipway, slip.url("bench/fleet"), filepath.Join(last, "slip", "current")},
		{srvSSH, b.sshd.url(repo), filepath.Join(last, "hand", "current")},
	}
	size := fmt.Sprint(n)
	for _, s := range servers {
		b.logf("fleets: %d targets: %s: first push", n, s.name)
		res, err := timedPush(ctx, b.env, w.repo, s.url, w.zd[0], false, s.current)
		if err != nil {
			return fmt.Errorf("%s, first push: %w", s.name, err)
		}
		b.add("10first", size, s.name, ms(res.Live))
	}
	for r := 1; r <= runs; r++ {
		for i := range servers {
			s := servers[(i+r)%len(servers)] // they take turns going first
			b.logf("fleets: %d targets: run %d/%d: %s: one-file change", n, r, runs, s.name)
			syncAll()
			res, err := timedPush(ctx, b.env, w.repo, s.url, w.zd[r], false, s.current)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", s.name, r, err)
			}
			b.add("10", size, s.name, ms(res.Live))
		}
	}
	// Every target got the release, on both sides.
	for _, h := range hosts {
		for _, side := range []string{"slip", "hand"} {
			if l, err := os.Readlink(filepath.Join(h.Root, side, "current")); err != nil || l != "releases/"+w.zd[runs] {
				return fmt.Errorf("%s: %s/current -> %q (%v), want releases/%s", h.Name, side, l, err, w.zd[runs][:12])
			}
		}
	}
	return nil
}

// fleetRows are figure 10's rows of the summary table.
func (b *bench) fleetRows() []row {
	var rows []row
	for _, f := range []struct{ key, what string }{
		{"10first", "10. fleet: first push to live on every target"},
		{"10", "10. fleet: one-file change to live on every target"},
	} {
		for _, n := range fleetSizes {
			size := fmt.Sprint(n)
			s, h := median(b.get(f.key, size, srvSlipway)), median(b.get(f.key, size, srvSSH))
			if s == 0 {
				continue
			}
			rs, _ := ratio(s, h)
			rows = append(rows, row{figure: f.what + " (baseline: an SSH loop of git archive | tar per host)",
				size: size + " targets", slip: fmtMS(s), ssh: fmtMS(h), file: "—", ratio: rs, target: "—", met: "—"})
		}
	}
	return rows
}

// fleetSection is figure 10's part of BENCHMARKS.md: how each side grows with the fleet.
func (b *bench) fleetSection() string {
	one := median(b.get("10", "1", srvSlipway))
	if one == 0 {
		return ""
	}
	var w strings.Builder
	w.WriteString("## Fleets (figure 10)\n\n")
	fmt.Fprintf(&w, "The small workload (%s files, %s MB), shipped to 1, 3 and 8 targets: real OpenSSH sshd, each on its own loopback address and in its own mount namespace, seeing its own deploy root at the path they share. ", b.extra["fleetfiles"], b.extra["fleetbytes"])
	w.WriteString("slipway prepares every target at once (only what differs from each target's live release is sent), then swaps all. ")
	w.WriteString("The baseline is Capistrano's way by hand: a pre-receive hook (stock git over OpenSSH) whose loop streams `git archive | ssh host tar -x` into each host in turn, then swaps `current` on each with `ln -s` + `mv -T`. ")
	w.WriteString("Time = from just before `git push` until the last target's `current` names the release; medians. Growth = time for N targets / time for 1.\n\n")
	w.WriteString("| targets | slipway, first push | loop, first push | slipway, one-file change | growth | loop, one-file change | growth |\n|---|---|---|---|---|---|---|\n")
	oneH := median(b.get("10", "1", srvSSH))
	for _, n := range fleetSizes {
		size := fmt.Sprint(n)
		s, h := median(b.get("10", size, srvSlipway)), median(b.get("10", size, srvSSH))
		fmt.Fprintf(&w, "| %d | %s | %s | %s | %.2fx | %s | %.2fx |\n", n, fmtMS(median(b.get("10first", size, srvSlipway))),
			fmtMS(median(b.get("10first", size, srvSSH))), fmtMS(s), s/one, fmtMS(h), h/oneH)
	}
	w.WriteString("\n")
	return w.String()
}
