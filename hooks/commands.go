package hooks

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The operator commands. The local CLI (`slipway CMD --config FILE ...`) and SSH
// (`ssh git@HOST CMD ...`) run this same code with the same output; over SSH every command
// requires the key to be allowed on the environment it names, and status lists only those.
// Each command has its own flags: a flag it does not take is a usage error, and so is
// --json for a command that has no JSON to give.

// command is one operator command.
type command struct {
	name  string
	args  string // its arguments and flags as usage shows them: "REPO [SHA]"
	help  string
	repo  bool     // its first argument is an environment the caller must be allowed on
	subs  []string // words that may come first (env set REPO): the environment is then second
	nargs [2]int
	json  bool // takes --json
	flags func(fs *flag.FlagSet, inv *invocation)
	run   func(p *Pipeline, ctx context.Context, c Caller, inv *invocation) error
}

// invocation is one run of a command: its arguments, its flags' values, and the
// environment it names.
type invocation struct {
	args     []string // positional arguments, the REPO included
	asJSON   bool
	n        int    // history -n
	follow   bool   // logs -f
	message  string // lock -m
	confirm  string // destroy --confirm
	secret   bool   // env set --secret
	useStdin bool   // env set --stdin
	redeploy bool   // env set --redeploy
	mode     string // shared put --mode
	env      *environment
	stdin    io.Reader
	stdout   io.Writer
}

// arg returns the i-th positional argument, "" if there are fewer.
func (inv *invocation) arg(i int) string {
	if i < len(inv.args) {
		return inv.args[i]
	}
	return ""
}

// commands is every operator command, in the order help lists them.
var commands = []command{
	{name: "status", args: "[--json]", help: "every environment: live release, since when, by whom, state",
		json: true, run: func(p *Pipeline, _ context.Context, c Caller, inv *invocation) error {
			return p.status(c, inv.asJSON, inv.stdout)
		}},
	{name: "releases", args: "REPO [--json]", help: "the kept releases, newest first, the live one marked",
		repo: true, nargs: [2]int{1, 1}, json: true, run: func(_ *Pipeline, _ context.Context, _ Caller, inv *invocation) error {
			return releasesCmd(inv.env, inv.asJSON, inv.stdout)
		}},
	{name: "history", args: "REPO [-n N] [--json]", help: "deploys, newest first: who, what, outcome, how long",
		repo: true, nargs: [2]int{1, 1}, json: true,
		flags: func(fs *flag.FlagSet, inv *invocation) { fs.IntVar(&inv.n, "n", 20, "how many deploys") },
		run: func(_ *Pipeline, _ context.Context, _ Caller, inv *invocation) error {
			return historyCmd(inv.env, inv.n, inv.asJSON, inv.stdout)
		}},
	{name: "logs", args: "REPO [ID|SHA] [-f]", help: "the log of a deploy (default: the newest); -f follows it",
		repo: true, nargs: [2]int{1, 2},
		flags: func(fs *flag.FlagSet, inv *invocation) {
			fs.BoolVar(&inv.follow, "f", false, "follow a running deploy")
		},
		run: func(_ *Pipeline, ctx context.Context, _ Caller, inv *invocation) error {
			return logsCmd(ctx, inv.env, inv.arg(1), inv.follow, inv.stdout)
		}},
	{name: "rollback", args: "REPO [SHA]", help: "make the previous (or the named) kept release live; no rebuild",
		repo: true, nargs: [2]int{1, 2}, run: func(p *Pipeline, ctx context.Context, c Caller, inv *invocation) error {
			return p.rollback(ctx, inv.env, c, inv.arg(1), inv.stdout)
		}},
	{name: "redeploy", args: "REPO [SHA]", help: "build and test the live (or the named) commit again",
		repo: true, nargs: [2]int{1, 2}, run: func(p *Pipeline, ctx context.Context, c Caller, inv *invocation) error {
			return p.redeploy(ctx, inv.env, c, inv.arg(1), inv.stdout)
		}},
	// lock's message may come as one argument or, as a shell's `-m "a b"` reaches SSH
	// (`ssh git@HOST lock REPO -m "a b"` sends the words unquoted), as the words after -m.
	{name: "lock", args: "REPO -m MESSAGE", help: "freeze: pushes and redeploys are refused with MESSAGE",
		repo: true, nargs: [2]int{1, -1},
		flags: func(fs *flag.FlagSet, inv *invocation) {
			fs.StringVar(&inv.message, "m", "", "why the environment is frozen")
		},
		run: func(p *Pipeline, _ context.Context, c Caller, inv *invocation) error {
			msg := inv.message
			if len(inv.args) > 1 {
				if msg == "" {
					return usageErrorf("lock REPO -m MESSAGE: the message comes after -m")
				}
				msg = strings.Join(append([]string{msg}, inv.args[1:]...), " ")
			}
			return p.lockCmd(inv.env, c, msg, inv.stdout)
		}},
	{name: "unlock", args: "REPO", help: "end a freeze",
		repo: true, nargs: [2]int{1, 1}, run: func(p *Pipeline, _ context.Context, c Caller, inv *invocation) error {
			return p.unlockCmd(inv.env, c, inv.stdout)
		}},
	{name: "target", args: "pause REPO HOST -m MESSAGE | resume REPO HOST",
		help: "pause one target of a fleet (deploys skip it, and say so) or resume it",
		repo: true, subs: []string{"pause", "resume"}, nargs: [2]int{3, -1},
		flags: func(fs *flag.FlagSet, inv *invocation) {
			fs.StringVar(&inv.message, "m", "", "why the target is paused")
		},
		run: func(p *Pipeline, _ context.Context, c Caller, inv *invocation) error {
			return p.targetCmd(c, inv)
		}},
	{name: "destroy", args: "REPO --confirm REPO", help: "remove an environment the embedded default created, with its repository and deploy root",
		repo: true, nargs: [2]int{1, 1},
		flags: func(fs *flag.FlagSet, inv *invocation) {
			fs.StringVar(&inv.confirm, "confirm", "", "the environment's name again")
		},
		run: func(p *Pipeline, ctx context.Context, c Caller, inv *invocation) error {
			return p.destroyCmd(ctx, inv.env, c, inv.confirm, inv.stdout)
		}},
	{name: "notifications", args: "[--json]", help: "recent notifications: pending, sent and failed, with their last error",
		json: true, run: func(p *Pipeline, _ context.Context, c Caller, inv *invocation) error {
			return p.notificationsCmd(c, inv.asJSON, inv.stdout)
		}},
	{name: "env", args: "REPO [--json] | env set REPO KEY=VALUE... [--secret] [--redeploy] | env set REPO KEY --stdin | env unset REPO KEY...",
		help: "the variables of an environment's commands: list (secrets as ***), set, unset; they take effect at the next deploy",
		repo: true, subs: []string{"set", "unset"}, nargs: [2]int{1, -1}, json: true,
		flags: func(fs *flag.FlagSet, inv *invocation) {
			fs.BoolVar(&inv.secret, "secret", false, "mask the values wherever output is shown")
			fs.BoolVar(&inv.useStdin, "stdin", false, "read the one value from stdin")
			fs.BoolVar(&inv.redeploy, "redeploy", false, "redeploy the live commit right after")
		},
		run: func(p *Pipeline, ctx context.Context, c Caller, inv *invocation) error {
			return p.envCmd(ctx, c, inv)
		}},
	{name: "shared", args: "ls REPO [--json] | get REPO PATH | put REPO PATH [--mode 0600] | rm REPO PATH",
		help: "the environment's shared files: list, print, write from stdin (atomically), remove",
		repo: true, subs: []string{"ls", "get", "put", "rm"}, nargs: [2]int{2, 3}, json: true,
		flags: func(fs *flag.FlagSet, inv *invocation) {
			fs.StringVar(&inv.mode, "mode", "", "put: the file's mode, in octal (default 0600)")
		},
		run: func(p *Pipeline, ctx context.Context, c Caller, inv *invocation) error {
			return p.sharedCmd(ctx, c, inv)
		}},
	{name: "web-login", help: "print a one-time URL (2 minutes, single use) that logs this key in to the dashboard (SSH only)",
		run: func(p *Pipeline, _ context.Context, c Caller, inv *invocation) error {
			return p.webLoginCmd(c, inv.stdout)
		}},
	{name: "help", help: "this list"}, // run by runCommand: it lists commands
}

// Usage lists the operator commands.
func Usage() string {
	var b strings.Builder
	b.WriteString("commands:")
	for _, cmd := range commands {
		fmt.Fprintf(&b, "\n  %-32s%s", strings.TrimSpace(cmd.name+" "+cmd.args), cmd.help)
	}
	return b.String()
}

// IsCommand reports whether name is an operator command.
func IsCommand(name string) bool {
	_, ok := lookup(name)
	return ok
}

func lookup(name string) (command, bool) {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd, true
		}
	}
	return command{}, false
}

// usageError is a command line that does not fit its command: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: "usage: " + fmt.Sprintf(format, args...)}
}

// RunCommand runs the operator command args[0] for c and returns its exit status: 0, 1 if
// it failed, 2 if the command line was wrong. It reads stdin only if asked to (env set
// --stdin); its output goes to stdout; errors and usage, one line each, to stderr.
func (p *Pipeline) RunCommand(ctx context.Context, c Caller, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := p.runCommand(ctx, c, args, stdin, stdout, stderr)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errFlagsReported):
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "slipway: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "slipway: %v\n", err)
	return 1
}

// errFlagsReported is a flag error the flag package has already written to stderr.
var errFlagsReported = errors.New("bad flags")

func (p *Pipeline) runCommand(ctx context.Context, c Caller, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{msg: "no command\n" + Usage()}
	}
	cmd, ok := lookup(args[0])
	if !ok {
		return &usageError{msg: fmt.Sprintf("unknown command %q (try help)", args[0])}
	}
	inv := &invocation{stdin: stdin, stdout: stdout}
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(stderr, "usage: %s %s\n", cmd.name, cmd.args) }
	if cmd.json {
		fs.BoolVar(&inv.asJSON, "json", false, "print JSON")
	}
	if cmd.flags != nil {
		cmd.flags(fs, inv)
	}
	pos, err := parseInterspersed(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return errFlagsReported
	}
	least, most := cmd.nargs[0], cmd.nargs[1]
	if len(pos) < least || (most >= 0 && len(pos) > most) {
		return usageErrorf("%s %s", cmd.name, cmd.args)
	}
	inv.args = pos
	if cmd.name == "help" {
		fmt.Fprintln(stdout, Usage())
		return nil
	}
	if cmd.repo {
		at := 0
		if slices.Contains(cmd.subs, pos[0]) {
			at = 1
		}
		if at >= len(pos) {
			return usageErrorf("%s %s", cmd.name, cmd.args)
		}
		if inv.env, _, err = p.access(pos[at], c.Name, false); err != nil {
			return err
		}
	}
	return cmd.run(p, ctx, c, inv)
}

// parseInterspersed parses flags that may stand before, between or after the positional
// arguments, which it returns.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// webLoginCmd prints a dashboard login URL for c's key. The URL is the running server's to
// make, for a key: the local operator, who has none, is told to use SSH.
func (p *Pipeline) webLoginCmd(c Caller, stdout io.Writer) error {
	switch {
	case c.KeyFingerprint == "":
		return errors.New("web-login works over SSH only (ssh -p PORT git@HOST web-login): the URL is the running server's to make")
	case p.webLogin == nil:
		return errors.New("the dashboard is off on this server (web_listen is not set)")
	}
	url, err := p.webLogin(c)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "Open this URL within 2 minutes to log in as %s (it works once):\n%s\n", c.Name, url)
	return err
}
