package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/slipway/slipway/builder"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/internal/atomicfile"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// addrFile is written in data_dir once the server listens: its address, for scripts and
// tests that start it on port 0.
const addrFile = "ssh.addr"

const usage = `usage: slipway <command> [--config FILE] [flags]

  serve [--listen ADDR] [--log-format json|console]
                                  run the SSH git server until SIGINT/SIGTERM
  check                           validate the configuration; print every problem with file:line
  version                         print the version

operator ` + opsUsage + `

Without --config, ./slipway.toml is used if it exists, else the embedded default. The
operator commands work the same over SSH: ssh -p PORT git@HOST status`

// errUsage is a command line that does not parse; the flag package has said why.
var errUsage = errors.New("usage")

// run is slipway's command line. It returns what main turns into the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return serve(ctx, rest, stdout, stderr)
	case "check":
		return check(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "slipway %s\n", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	default:
		if contains(opsCommands, cmd) {
			return operate(ctx, args, stdout, stderr)
		}
		fmt.Fprintf(stderr, "slipway: unknown command %q\n%s\n", cmd, usage)
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
	var pe problemsError
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

// configFlag adds --config and returns a loader honouring the default order.
func configFlag(fs *flag.FlagSet) func() (*config, error) {
	file := fs.String("config", "", "configuration file (default ./"+defaultConfigFile+" if it exists, else the embedded default)")
	return func() (*config, error) { return findConfig(*file) }
}

// findConfig loads file; without one, ./slipway.toml if it exists, else the embedded default.
func findConfig(file string) (*config, error) {
	if file != "" {
		return loadConfig(file)
	}
	if _, err := os.Stat(defaultConfigFile); err == nil {
		return loadConfig(defaultConfigFile)
	}
	return defaultConfig()
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
	load := configFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	if cfg.file == "" {
		fmt.Fprintf(stdout, "no config file: the embedded default is used (%d authorized keys)\n", len(cfg.keys))
		return nil
	}
	fmt.Fprintf(stdout, "%s: ok (%d environments, %d authorized keys)\n", cfg.file, len(cfg.envs), len(cfg.keys))
	return nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	load := configFlag(fs)
	listen := fs.String("listen", "", "address to listen on, overriding the configuration (port 0 picks one)")
	logFormat := fs.String("log-format", "json", "operator log format: json or console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var logOut io.Writer = stderr
	switch *logFormat {
	case "json":
	case "console":
		logOut = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.RFC3339}
	default:
		return fmt.Errorf("--log-format must be json or console, not %q", *logFormat)
	}
	log := zerolog.New(logOut).With().Timestamp().Logger()

	cfg, err := load()
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.listen = *listen
	}
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data_dir: %w", err)
	}

	b := builder.New(builder.Config{}, log.With().Str("component", "builder").Logger())
	p, err := newPipeline(cfg, b, log.With().Str("component", "pipeline").Logger(), true)
	if err != nil {
		return err
	}
	srv, err := gitserver.New(gitserver.Config{
		HostKeyPath: cfg.hostKey,
		Keys:        cfg.keys,
		ReposDir:    p.reposDir(),
		Commands:    p,
	}, p, log.With().Str("component", "gitserver").Logger())
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addr := l.Addr().String()
	if err := atomicfile.WriteFile(filepath.Join(cfg.dataDir, addrFile), []byte(addr+"\n"), 0o644); err != nil {
		l.Close()
		return fmt.Errorf("write address file: %w", err)
	}
	log.Info().Str("addr", addr).Str("host_key", srv.HostKeyFingerprint()).
		Int("environments", len(cfg.envs)).Int("keys", len(cfg.keys)).Msg("listening")
	greet(stdout, cfg, addr)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info().Dur("timeout", cfg.shutdownTimeout).Msg("shutting down: waiting for running deploys")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("running deploys were cancelled")
	}
	<-served
	log.Info().Msg("stopped")
	return nil
}

// greet prints the two lines a newcomer needs to push.
func greet(w io.Writer, cfg *config, addr string) {
	repo, branch := "myapp/production", defaultBranch
	if len(cfg.envs) > 0 {
		repo, branch = cfg.envs[0].repo, cfg.envs[0].branch
	}
	remote := repo[strings.LastIndexByte(repo, '/')+1:]
	fmt.Fprintf(w, "slipway %s listening on %s\n", version, addr)
	for _, n := range cfg.notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if cfg.auto {
		fmt.Fprintf(w, "no config file: pushes create environments under %s/APP/ENV\n", cfg.deployRoot)
	}
	fmt.Fprintf(w, "  git remote add %s ssh://git@%s/%s\n", remote, addr, repo)
	fmt.Fprintf(w, "  git push %s %s\n", remote, branch)
}

// operate runs an operator command from the local CLI: the same code as over SSH, as the
// local operator, who may use every environment. It runs beside a serving slipway: it
// takes the same locks, and recovers nothing.
func operate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	file, rest, err := splitConfigFlag(args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "slipway %s: %v\n", args[0], err)
		return errUsage
	}
	cfg, err := findConfig(file)
	if err != nil {
		return err
	}
	log := zerolog.New(stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	b := builder.New(builder.Config{}, log.With().Str("component", "builder").Logger())
	p, err := newPipeline(cfg, b, log.With().Str("component", "pipeline").Logger(), false)
	if err != nil {
		return err
	}
	if code := reportOps(p.operate(ctx, caller{}, append([]string{args[0]}, rest...), stdout), stderr); code != 0 {
		return exitStatus(code)
	}
	return nil
}

// exitStatus is an error already reported; main only turns it into the exit status.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

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
