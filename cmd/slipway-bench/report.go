package main

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

// row is one line of the summary table.
type row struct {
	figure, size           string
	slip, ssh, file, ratio string
	target, met            string
}

type reportOut struct {
	table    string // what is printed
	markdown string // BENCHMARKS.md
}

func fmtMS(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v < 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.0f ms", v)
	}
}

func fmtNum(v float64, unit string) string {
	switch {
	case v == 0:
		return "—"
	case v >= 1000:
		return fmt.Sprintf("%s %s", thousands(int64(math.Round(v))), unit)
	case v >= 100:
		return fmt.Sprintf("%.0f %s", v, unit)
	default:
		return fmt.Sprintf("%.1f %s", v, unit)
	}
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func ratio(a, b float64) (string, float64) {
	if a == 0 || b == 0 {
		return "—", math.NaN()
	}
	r := a / b
	return fmt.Sprintf("%.2fx", r), r
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**NO**"
}

// slipwayVariants are the slipway rows of the figures that depend on release_files: the
// default (copy) and link.
var slipwayVariants = []struct{ srv, label string }{
	{srvSlipway, ""},
	{srvLink, ` [release_files = "link"]`},
}

// rows builds the summary table from the medians.
func (b *bench) rows() []row {
	var rows []row
	med := func(fig, sz, srv string) float64 { return median(b.get(fig, sz, srv)) }
	for _, fig := range []struct {
		key, name string
		target    func(sz string) (string, func(slip, r float64) bool)
	}{
		{"1", "1. first push to live", func(sz string) (string, func(float64, float64) bool) {
			if sz == "small" {
				return "—", nil
			}
			return "≤ 1.0x", func(_, r float64) bool { return r <= 1.0 }
		}},
		{"2", "2. incremental push (1 file) to live", func(string) (string, func(float64, float64) bool) {
			return "≤ 0.5x", func(_, r float64) bool { return r <= 0.5 }
		}},
		{"3server", "3. rollback to a kept release, server side", func(string) (string, func(float64, float64) bool) {
			return "< 100 ms", func(s, _ float64) bool { return s < 100 }
		}},
		{"3", "3. rollback to a kept release, end to end", nil},
	} {
		for _, v := range slipwayVariants {
			for _, sz := range b.opts.sizes {
				s, h, f := med(fig.key, sz.name, v.srv), med(fig.key, sz.name, srvSSH), med(fig.key, sz.name, srvFile)
				if s == 0 {
					continue
				}
				rs, r := ratio(s, h)
				rw := row{figure: fig.name + v.label, size: sz.name, slip: fmtMS(s), ssh: fmtMS(h), file: fmtMS(f), ratio: rs, target: "—", met: "—"}
				if fig.target != nil {
					t, ok := fig.target(sz.name)
					rw.target = t
					if ok != nil {
						rw.met = yesNo(ok(s, r))
					}
				}
				rows = append(rows, rw)
			}
		}
	}
	for _, name := range append(sizeNames(b.opts.sizes), "history") {
		s, h, f := med("4", name, srvSlipway), med("4", name, srvSSH), med("4", name, srvFile)
		if s == 0 {
			continue
		}
		rs, _ := ratio(s, h)
		what := fmt.Sprintf("%s MB pack", b.extra["pack|"+name])
		if name == "history" {
			what = fmt.Sprintf("%s MB pack of %d commits, mostly deltas", b.extra["pack|"+name], historyCommits+2)
		}
		rows = append(rows, row{figure: fmt.Sprintf("4. pack ingest, MB/s (%s; ssh: receive-pack via sshd; file://: local index-pack)", what),
			size: name, slip: fmtNum(s, "MB/s"), ssh: fmtNum(h, "MB/s"), file: fmtNum(f, "MB/s"), ratio: rs, target: "—", met: "—"})
	}
	for _, m := range []struct{ key, name string }{
		{"archive", `git archive \| tar -x`},
		{"worktree", "git worktree add (checkout)"},
		{"cp", "cp -a"},
	} {
		for _, sz := range b.opts.sizes {
			s, h := med("5", sz.name, "slipway"), med("5", sz.name, m.key)
			if s == 0 {
				continue
			}
			rs, _ := ratio(s, h)
			rows = append(rows, row{figure: "5. materialise a release, files/s (baseline: " + m.name + ")", size: sz.name,
				slip: fmtNum(s, "files/s"), ssh: fmtNum(h, "files/s"), file: "—", ratio: rs, target: "—", met: "—"})
		}
	}
	for _, sz := range b.opts.sizes {
		s, h, f := med("6", sz.name, srvSlipway), med("6", sz.name, srvSSH), med("6", sz.name, srvFile)
		if s == 0 {
			continue
		}
		rs, _ := ratio(s, h)
		rw := row{figure: "6. server peak RSS during the first push", size: sz.name, slip: fmtNum(s, "MB"), ssh: fmtNum(h, "MB"), file: fmtNum(f, "MB"),
			ratio: rs, target: "—", met: "—"}
		if sz.name == "large" {
			rw.target, rw.met = "< 150 MB", yesNo(s < 150)
		}
		rows = append(rows, rw)
	}
	for _, v := range slipwayVariants {
		for _, sz := range b.opts.sizes {
			s, h, f := med("7", sz.name, v.srv), med("7", sz.name, srvSSH), med("7", sz.name, srvFile)
			if len(b.get("7", sz.name, v.srv)) == 0 {
				continue
			}
			pct := func(srv string, v float64) string {
				return fmt.Sprintf("%.0f%% (%.1f of %.1f MB)", v, median(b.get("7added", sz.name, srv)), median(b.get("7full", sz.name, srv)))
			}
			rs, _ := ratio(s, h)
			rows = append(rows, row{figure: "7. disk added by an incremental release (hardlinks once), % of a full copy" + v.label, size: sz.name,
				slip: pct(v.srv, s), ssh: pct(srvSSH, h), file: pct(srvFile, f), ratio: rs, target: "< 10%", met: yesNo(s < 10)})
			if len(b.get("7fs", sz.name, v.srv)) > 0 {
				full := median(b.get("7full", sz.name, v.srv))
				fsPct := func(srv string) (float64, string) {
					mb := median(b.get("7fs", sz.name, srv))
					return 100 * mb / full, fmt.Sprintf("%.0f%% (%.1f MB)", 100*mb/full, mb)
				}
				sv, sc := fsPct(v.srv)
				hv, hc := fsPct(srvSSH)
				_, fc := fsPct(srvFile)
				rs, _ := ratio(sv, hv)
				rows = append(rows, row{figure: "7. free space the incremental push used (statfs; sees reflinks), % of a full copy" + v.label, size: sz.name,
					slip: sc, ssh: hc, file: fc, ratio: rs, target: "< 10%", met: yesNo(sv < 10)})
			}
		}
	}
	rows = append(rows, b.appRows()...)
	rows = append(rows, b.fleetRows()...)
	if b.fig8 != nil {
		s, h := b.fig8[srvSlipway], b.fig8[srvSSH]
		cell := func(l *loadResult) string {
			if l == nil {
				return "—"
			}
			return fmt.Sprintf("%d / %d (of %s requests)", l.non2xx, l.sockErrors, thousands(l.requests))
		}
		rows = append(rows, row{figure: fmt.Sprintf("8. zero downtime: non-2xx / socket errors during %d activations", b.opts.activations), size: "small",
			slip: cell(s), ssh: cell(h), file: "—", ratio: "—", target: "0 / 0", met: yesNo(s != nil && s.non2xx == 0 && s.sockErrors == 0)})
	}
	return rows
}

func tableOf(rows []row) string {
	var t strings.Builder
	t.WriteString("| figure | size | slipway | baseline (ssh) | baseline (file://) | ratio | target | met |\n")
	t.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&t, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", r.figure, r.size, r.slip, r.ssh, r.file, r.ratio, r.target, r.met)
	}
	return t.String()
}

// report renders the table and BENCHMARKS.md.
func (b *bench) report() reportOut {
	rows := b.rows()
	table := tableOf(rows)
	var md strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&md, format, args...) }
	m := b.machine

	w("# slipway benchmarks\n\n")
	w("Generated by `make bench` (the harness in `cmd/slipway-bench/`); do not edit by hand, run it again.\n\n")
	w("- Command: `%s`\n", m.command)
	w("- Date: %s\n", m.date)
	w("- slipway: %s (%s)\n", m.slipwayVersion, b.binSource)
	w("- Machine: %s; %s CPUs (%s); %s memory; kernel %s; work dir on %s (%s)\n", m.os, m.nproc, m.cpu, m.mem, m.kernel, m.fstype, m.workdir)
	w("- Versions: %s; %s; OpenSSH %s; %s; %s\n", m.goVersion, m.gitVersion, m.openssh, m.nginx, m.wrk)
	var runs []string
	for _, sz := range b.opts.sizes {
		runs = append(runs, fmt.Sprintf("%s %d", sz.name, b.opts.runsFor(sz)))
	}
	if len(b.appOrder) > 0 {
		runs = append(runs, fmt.Sprintf("real apps (figure 9) %d", b.opts.runs))
	}
	w("- Load average (1, 5, 15 min) at the start and end of each workload: %s. Timings are wall-clock; anything else running on the machine shows in them.\n", strings.Join(b.load, "; "))
	w("- Runs per figure (the table shows medians): %s. Total time: %s.\n\n", strings.Join(runs, ", "), time.Since(b.start).Round(time.Second))

	w("## Summary\n\n")
	w("%s\n", table)
	w("ratio = slipway / baseline (ssh), both measured in the same run. For times lower is better; for MB/s and files/s higher is better.\n\n")

	w("Workloads (generated by the harness from a fixed seed, identical on every run):\n\n")
	w("| size | files | content |\n|---|---|---|\n")
	for _, sz := range b.opts.sizes {
		n := b.extra["files|"+sz.name]
		var by float64
		fmt.Sscan(b.extra["bytes|"+sz.name], &by)
		desc := "text files (log-normal sizes, source-like text), an executable, two symlinks"
		if sz.binFiles > 0 {
			desc += fmt.Sprintf(", %d incompressible binary files of %d MB", sz.binFiles, sz.binSize>>20)
		}
		w("| %s | %s | %.1f MB: %s |\n", sz.name, n, by/1e6, desc)
	}
	w("\n")

	w("## What each figure measures\n\n")
	w("The baseline is stock `git` receiving over a private OpenSSH `sshd` (127.0.0.1, its own host key and config) into a bare repository whose `pre-receive` hook ")
	w("does `git archive <sha> | tar -x -C releases/<sha>` (both exit codes checked), links `shared/.env` and `shared/storage`, runs the same build (`%s`), ", buildCommand)
	w("and swaps `current` with `ln -s` + `mv -T`; a kept release is re-activated without a rebuild, and the 5 newest releases are kept. ")
	w("`file://` is the same hook with no SSH (a lower bound). slipway runs from its binary with a generated configuration: same build, same shared files, keep_releases = 5; ")
	w("its rows are the default (`release_files = \"copy\"`: each release has its own files, those unchanged copied from the live release with copy_file_range, which reflinks on XFS/btrfs) ")
	w("and, marked `[release_files = \"link\"]`, environments of the same process whose releases are read-only and hard-link the unchanged files of the live release. ")
	w("When the harness runs as root, slipway runs as `nobody` (uid %d), as it would in production: it refuses `link` to root, whose writes ignore read-only modes. ", nobody)
	w("Every push is `git push` with OpenSSH's client (default cipher), from a packed bare clone of the workload; `sync` runs before each timed step (not timed).\n\n")
	w("1. **First push to live**: from just before `git push` starts until `current` names the new release (polled with readlink every 1 ms). Both servers swap before they report, so push exit is later; it is in the raw data.\n")
	w("2. **Incremental push**: one text file changed, pushed to the environment of figure 1.\n")
	w("3. **Rollback** to the release of figure 1 (still kept) by `git push -f <sha>:main`. Server side: slipway's own `took` of the deploy (its JSON log, `deploy finished`); the hook's own runtime for the baselines. End to end: as figure 1.\n")
	w("4. **Pack ingest**: the same pack (what a first push sends, %s) sent by a minimal receive-pack client (Go, `%s` on both servers, so the transport costs little on either side) ", "`git pack-objects --revs --thin --delta-base-offset`", ingestCipher)
	w("from the first byte of the request until the server has stored and indexed it: slipway's `-----> deploying` line (its gitserver does not expose ingest as a function) or git's `unpack ok` report. `file://` column: `git index-pack --stdin` on the pack, locally. MB/s = pack size / time. The `history` row is the first push of an application with a past, generated once per run (%d files, then %d commits editing %d of them each, by git fast-import), so that most of its objects are deltas, which the workloads' one-commit packs lack.\n", historyFiles, historyCommits, historyEdits)
	w("5. **Materialise**: writing the tree of the first commit from a bare repository (a `git clone --bare --no-local`, i.e. the pack a push makes): slipway's `releaser.Materialize` called in-process, against `git archive | tar -x`, `git worktree add --detach`, and `cp -a` of a tree already written. Page cache warm, no fsync in any method.\n")
	w("6. **Peak memory** during the first push: slipway's VmHWM (a fresh process per workload); for the baselines, the peak of the summed RSS of the server's processes (ssh: every process under the private sshd; file://: git receive-pack and its children), sampled every 10 ms on the first run. Shared pages count once per process, so the baseline's sum overstates a little.\n")
	w("7. **Disk per incremental release**: the allocated blocks of the inodes of `releases/<new>` that `releases/<old>` does not share (a hardlinked file counts nothing), against the full size of the release.\n")
	w("8. **Zero downtime**: nginx (2 workers; nginx and wrk run at low priority, nice 10 in an autogroup of nice 19, so that on 2 cores the load does not starve the deploys; `root <deploy>/current/public`, `disable_symlinks off`, `$realpath_root` evaluated per request) serves `index.html` while `wrk -t2 -c32` runs and a loop makes %d activations alternating a push of a new commit and a rollback to the previous (kept) release; wrk's `Non-2xx or 3xx responses` and `Socket errors`.\n\n", b.opts.activations)

	w("## First push, phase by phase (client's view, medians)\n\n")
	w("`received` = until the server started its deploy (SSH, pack transfer and ingest); `checkout` = writing the release; `build+swap` = shared links, build, (slipway: syncfs and bookkeeping) and the swap; `server` = the server's own deploy time.\n\n")
	w("| size | server | received | checkout | build+swap | live | push exit | server |\n|---|---|---|---|---|---|---|---|\n")
	for _, sz := range b.opts.sizes {
		for _, srv := range []string{srvSlipway, srvLink, srvSSH, srvFile} {
			if len(b.get("1", sz.name, srv)) == 0 {
				continue
			}
			g := func(k string) string { return fmtMS(median(b.get(k, sz.name, srv))) }
			w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", sz.name, srv, g("1recv"), g("1checkout"), g("1build"), g("1"), g("1exit"), g("1server"))
		}
	}
	w("\n")

	w("## Memory\n\n")
	w("slipway's VmHWM (peak resident set) in a fresh process: right after it started, after the first push (figure 6), and after a pack ingest alone (the figure 4 push, rejected before checkout; another fresh process). Baselines: the sampled peak of their processes' summed RSS during the first push.\n\n")
	w("| size | slipway idle | slipway first push | slipway ingest only | baseline (ssh) first push | baseline (file://) first push |\n|---|---|---|---|---|---|\n")
	for _, sz := range b.opts.sizes {
		mb := func(k, srv string) string { return fmtNum(median(b.get(k, sz.name, srv)), "MB") }
		w("| %s | %s MB | %s | %s | %s | %s |\n", sz.name, b.extra["idle|"+sz.name], mb("6", srvSlipway), mb("6ingest", srvSlipway), mb("6", srvSSH), mb("6", srvFile))
	}
	w("\n")

	if len(b.transports) > 0 {
		w("## Transport\n\n")
		w("What `git push`'s OpenSSH client negotiates with each server (default settings), and the time of `ssh <server> true` (median of %d; slipway refuses the command once the session is open).\n\n", len(b.transports[srvSSH].connectMS))
		w("| server | key exchange | cipher | connection |\n|---|---|---|---|\n")
		for _, srv := range []string{srvSlipway, srvSSH} {
			t := b.transports[srv]
			w("| %s | %s | %s | %s |\n", srv, t.kex, t.cipher, fmtMS(median(t.connectMS)))
		}
		w("\n")
	}

	if b.fig8 != nil {
		w("## Zero downtime, details\n\n")
		w("| server | load tool | requests | req/s | non-2xx | socket errors | activations | loop time | median activation |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, srv := range []string{srvSlipway, srvSSH} {
			l := b.fig8[srv]
			if l == nil {
				continue
			}
			w("| %s | %s | %s | %.0f | %d | %d | %d | %s | %s |\n", srv, l.tool, thousands(l.requests), float64(l.requests)/l.seconds,
				l.non2xx, l.sockErrors, l.activations, l.loop.Round(time.Millisecond), fmtMS(median(l.pushMS)))
		}
		w("\n")
	}

	md.WriteString(b.appSection())
	md.WriteString(b.fleetSection())
	w("## Raw runs\n\n")
	w("Every value, in run order (ms unless named).\n\n")
	var keys []string
	for k := range b.samples {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	w("| figure | size | server | values |\n|---|---|---|---|\n")
	for _, k := range keys {
		parts := strings.SplitN(k, "|", 3)
		var vals []string
		for _, v := range b.samples[k] {
			vals = append(vals, fmt.Sprintf("%.1f", v))
		}
		w("| %s | %s | %s | %s |\n", rawName(parts[0]), parts[1], parts[2], strings.Join(vals, ", "))
	}
	w("\n")
	if len(b.notes) > 0 {
		w("## Notes\n\n")
		for _, n := range b.notes {
			w("- %s\n", n)
		}
		w("\n")
	}

	out := table
	if len(b.notes) > 0 {
		out += "\n" + strings.Join(b.notes, "\n") + "\n"
	}
	return reportOut{table: out, markdown: md.String()}
}

// rawName explains a sample key.
func rawName(k string) string {
	names := map[string]string{
		"1": "1 first push: live", "1exit": "1 first push: push exit", "1server": "1 first push: server's own time",
		"1recv": "1 first push: received", "1checkout": "1 first push: checkout", "1build": "1 first push: build+swap",
		"2": "2 incremental: live", "2exit": "2 incremental: push exit", "2server": "2 incremental: server's own time",
		"2recv": "2 incremental: received", "2checkout": "2 incremental: checkout", "2build": "2 incremental: build+swap",
		"3": "3 rollback: live", "3exit": "3 rollback: push exit", "3server": "3 rollback: server's own time",
		"3recv": "3 rollback: received",
		"4":     "4 ingest: MB/s", "4ms": "4 ingest: time",
		"5": "5 materialise: files/s", "5ms": "5 materialise: time",
		"6": "6 peak RSS, MB (slipway: VmHWM; baselines: sampled sum)", "6s": "6 peak RSS, MB (sampled sum)", "6ingest": "6 slipway VmHWM after a pack ingest alone, MB",
		"9": "9 one-file change: live", "9first": "9 first push (cold caches): live", "9copy": "9 copy_dirs copy (step output)", "9spare": "9 copy_dirs copied ahead: ready after the push",
		"9disk": "9 disk added by the last release, MB",
		"10":    "10 fleet one-file change: live on every target", "10first": "10 fleet first push: live on every target",
		"7": "7 disk: % of full", "7added": "7 disk: MB added", "7full": "7 disk: MB full", "7fs": "7 free space used: MB",
	}
	if n, ok := names[k]; ok {
		return n
	}
	return k
}

// commandLine is how the harness was invoked, for the report.
func commandLine() string {
	args := append([]string{"go run ./cmd/slipway-bench"}, os.Args[1:]...)
	return strings.Join(args, " ")
}

func sizeNames(sizes []size) []string {
	var names []string
	for _, s := range sizes {
		names = append(names, s.name)
	}
	return names
}
