package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/hooks"
	"github.com/slipway/slipway/internal/notify"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `usage: slipway <command> [--config FILE] [flags]

  serve [--listen ADDR] [--log-format json|console]
                                  run the SSH git server until SIGINT/SIGTERM
  check                           validate the configuration; print every problem with file:line
  version                         print the version

operator ` + "%s" + `

Without --config, ./slipway.toml is used if it exists, else the embedded default. The
operator commands work the same over SSH: ssh -p PORT git@HOST status`

func usageText() string { return fmt.Sprintf(usage, hooks.Usage()) }

// errUsage is a command line that does not parse; what is wrong has been said.
var errUsage = errors.New("usage")

// exitStatus is an error already reported; main only turns it into the exit status.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run is slipway's command line. It returns what main turns into the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usageText())
		return errUsage
	}
	switch cmd, rest := args[0], args[1:]; {
	case cmd == "serve":
		return serve(ctx, rest, stdout, stderr)
	case cmd == "check":
		return check(rest, stdout, stderr)
	case cmd == "version" || cmd == "--version":
		fmt.Fprintf(stdout, "slipway %s\n", version)
		return nil
	case cmd == "help" || cmd == "-h" || cmd == "--help":
		fmt.Fprintln(stdout, usageText())
		return nil
	case hooks.IsCommand(cmd):
		return operate(ctx, args, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "slipway: unknown command %q (try slipway help)\n", cmd)
		return errUsage
	}
}

// exitCode reports err on stderr, one clear line per problem, and returns the exit status.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	var es exitStatus
	if errors.As(err, &es) {
		return int(es)
	}
	var pe configs.Problems
	if errors.As(err, &pe) {
		for _, p := range pe {
			fmt.Fprintln(stderr, p)
		}
		fmt.Fprintf(stderr, "slipway: %d problem(s) in the configuration\n", len(pe))
		return 1
	}
	fmt.Fprintf(stderr, "slipway: %v\n", err)
	return 1
}

// configFlag adds --config: the configuration file, "" for the default order (see
// configs.Find).
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "configuration file (default ./"+configs.DefaultFile+" if it exists, else the embedded default)")
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "slipway %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

func check(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", stderr)
	file := configFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := configs.Find(*file)
	if err != nil {
		return err
	}
	if cfg.File == "" {
		fmt.Fprintf(stdout, "no config file: the embedded default is used (%d authorized keys)\n", len(cfg.Keys))
		return nil
	}
	fmt.Fprintf(stdout, "%s: ok (%d environments, %d authorized keys)\n", cfg.File, len(cfg.Envs), len(cfg.Keys))
	for _, e := range cfg.Envs {
		if !slices.ContainsFunc(e.Vars, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
			fmt.Fprintf(stdout, "warning: %s: [env.vars] sets no PATH, so its commands get the server's; "+
				"under systemd that is %s, without /usr/local/go/bin, ~/.nvm or ~/.cargo/bin\n", e.Repo, systemdPath)
		}
	}
	return nil
}

// systemdPath is the PATH systemd gives a service that sets none.
const systemdPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// operate runs an operator command from the local CLI: the same code as over SSH, as the
// local operator, who may use every environment. It runs beside a serving slipway: it
// takes the same locks, and recovers nothing.
func operate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	file, rest, err := splitConfigFlag(args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "slipway %s: %v\n", args[0], err)
		return errUsage
	}
	cfg, err := configs.Find(file)
	if err != nil {
		return err
	}
	log := zerolog.New(stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	// The CLI's deploys (a rollback, a redeploy) queue their notifications in the same
	// outbox; the server delivers them.
	outbox := notify.NewOutbox(cfg.DataDir, notifyTargets(cfg), log.With().Str("component", "notify").Logger())
	p, err := hooks.New(hooks.Config{
		Server:  cfg,
		Builder: builder.New(builder.Config{}, log.With().Str("component", "builder").Logger()),
		Repos:   gitserver.Repositories{Dir: reposDir(cfg)},
		Notify:  outbox,
	}, log.With().Str("component", "hooks").Logger())
	if err != nil {
		return err
	}
	if code := p.RunCommand(ctx, hooks.Caller{}, append([]string{args[0]}, rest...), os.Stdin, stdout, stderr); code != 0 {
		return exitStatus(code)
	}
	return nil
}

// splitConfigFlag takes --config FILE (or --config=FILE) out of args, wherever it stands.
func splitConfigFlag(args []string) (file string, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--config" || a == "-config":
			if i+1 == len(args) {
				return "", nil, errors.New("--config needs a file")
			}
			file = args[i+1]
			i++
		case strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "-config="):
			file = a[strings.IndexByte(a, '=')+1:]
		default:
			rest = append(rest, a)
		}
	}
	return file, rest, nil
}
