// Command slipway-bench is slipway's benchmark harness (`make bench`): it compares slipway, side by
// side and in the same run, with the way push-to-deploy is done by hand (stock git receiving
// over OpenSSH, a pre-receive hook that runs git archive | tar -x into releases/<sha>, links
// the shared files, builds, and swaps current with ln -s + mv -T), and with the same hook
// over file:// (no SSH: a lower bound).
//
// It generates its own deterministic workloads (small, medium, large), starts every server
// itself on 127.0.0.1 only (slipway, a private sshd, nginx for the zero-downtime figure),
// deploys real Node and Go apps whose dependencies come from the public registries (figure
// 9; skipped, with a note, where a registry cannot be reached),
// prints a table of medians with the ratio slipway/baseline measured in the same run, writes
// it to BENCHMARKS.md with the machine and versions, and removes everything it made and ends
// every process it started, also on failure or a signal.
//
//	go run ./cmd/slipway-bench                      # full run (about 10-15 minutes on 2 cores)
//	go run ./cmd/slipway-bench -smoke               # small only, 1 run, no nginx/wrk: < 60 s
//	go run ./cmd/slipway-bench -sizes medium -runs 3 -out /tmp/b.md
//	go run ./cmd/slipway-bench -sizes '' -fleets=false -out /tmp/apps.md   # figure 9 alone: real apps
//	go run ./cmd/slipway-bench -sizes '' -apps '' -out /tmp/fleets.md   # figure 10 alone
//
// It is not part of `make test`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	sizes       []size
	runs        int
	largeRuns   int
	smoke       bool
	out         string
	slipway     string
	keep        bool
	workdir     string
	timeout     time.Duration
	activations int
	install     bool
	zeroDown    bool
	apps        []string // figure 9: "node", "go"
	fleets      bool     // figure 10
}

func main() { os.Exit(mainCode()) }

func mainCode() int {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()

	b := &bench{opts: opts, start: time.Now(), samples: map[string][]float64{}, extra: map[string]string{}, appServers: map[string][]string{}}
	err = b.run(ctx)
	b.cleanup()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "bench: stopped: %v (%v)\n", ctx.Err(), err)
		} else {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		return 1
	}
	return 0
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	sizesFlag := fs.String("sizes", "small,medium,large", "workloads to run, comma-separated: small (300 files, 3 MB), medium (5,000 files, 60 MB), large (20,000 files, 200 MB)")
	runs := fs.Int("runs", 5, "runs per figure; the table shows the median")
	largeRuns := fs.Int("large-runs", 3, "runs per figure for the large workload (0: same as -runs), to keep a full run near 15 minutes on 2 cores")
	smoke := fs.Bool("smoke", false, "small workload, 1 run, no nginx/wrk (figure 8 skipped): what CI may run, < 60 s")
	out := fs.String("out", "BENCHMARKS.md", "write the report here (with -smoke: only if given explicitly); empty: print only")
	slipway := fs.String("slipway", "", "prebuilt slipway binary (default: build ./cmd/slipway into a temp dir)")
	keep := fs.Bool("keep", false, "keep the temporary directory (printed at the end)")
	workdir := fs.String("workdir", "", "parent of the temporary directory (default $TMPDIR or /tmp); its filesystem is what figures 5 and 7 measure")
	timeout := fs.Duration("timeout", 45*time.Minute, "stop everything after this long")
	activations := fs.Int("activations", 200, "activations (pushes and rollbacks alternating) of the zero-downtime figure; at most 200")
	appsFlag := fs.String("apps", "node,node-api,go", "real applications of figure 9, comma-separated: node and node-api (Express, npm registry), go (module proxy); empty: none")
	fleets := fs.Bool("fleets", true, "figure 10: ship to fleets of 1, 3 and 8 targets (real sshd in mount namespaces; needs root)")
	install := fs.Bool("install", true, "apt-get install what is missing (openssh-server, nginx, wrk) when running as root")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: go run ./cmd/slipway-bench [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := &options{runs: *runs, largeRuns: *largeRuns, smoke: *smoke, out: *out, slipway: *slipway,
		keep: *keep, workdir: *workdir, timeout: *timeout, activations: *activations, install: *install, zeroDown: true, fleets: *fleets}
	outSet := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "out" {
			outSet = true
		}
	})
	if o.smoke {
		*sizesFlag = "small"
		o.runs, o.largeRuns, o.zeroDown = 1, 1, false
		*appsFlag = ""
		o.fleets = false
		if !outSet {
			o.out = ""
		}
		if o.timeout == 45*time.Minute {
			o.timeout = 10 * time.Minute
		}
	}
	for _, n := range strings.Split(*sizesFlag, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		s, ok := sizeByName(n)
		if !ok {
			return nil, fmt.Errorf("-sizes: unknown workload %q (small, medium, large)", n)
		}
		o.sizes = append(o.sizes, s)
	}
	for _, n := range strings.Split(*appsFlag, ",") {
		switch n = strings.TrimSpace(n); n {
		case "":
		case "node", "node-api", "go":
			if !slices.Contains(o.apps, n) {
				o.apps = append(o.apps, n)
			}
		default:
			return nil, fmt.Errorf("-apps: unknown app %q (node, node-api, go)", n)
		}
	}
	if len(o.sizes) == 0 && len(o.apps) == 0 && !o.fleets {
		return nil, errors.New("-sizes: no workload (and -apps: none, -fleets=false)")
	}
	if o.runs < 1 {
		return nil, errors.New("-runs must be at least 1")
	}
	if o.largeRuns <= 0 || o.largeRuns > o.runs {
		o.largeRuns = o.runs
	}
	if o.activations < 2 || o.activations > 2*zdCommits {
		return nil, fmt.Errorf("-activations must be between 2 and %d", 2*zdCommits)
	}
	if o.slipway != "" {
		abs, err := filepath.Abs(o.slipway)
		if err != nil {
			return nil, err
		}
		o.slipway = abs
	}
	return o, nil
}

// runsFor is how many runs a workload gets.
func (o *options) runsFor(s size) int {
	if s.name == "large" {
		return o.largeRuns
	}
	return o.runs
}
