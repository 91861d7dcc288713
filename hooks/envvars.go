package hooks

// Variables set without a shell (SPEC 8): `env set REPO KEY=VALUE`, over SSH or the CLI. They
// are kept per environment under data_dir (env/APP/ENV.json, 0600, replaced atomically under
// an flock), reach every command of the next deploys beside [env.vars] and [env.secrets],
// and, with env_file, are written into each release, so that a rollback brings back the
// configuration its release was built and tested with. Every change is a journal entry
// (who, which names; never a value).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/internal/atomicfile"
)

// envVar is one variable set with `env set`.
type envVar struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Secret bool   `json:"secret,omitempty"`
}

type envDoc struct {
	Vars []envVar `json:"vars"`
}

// Bounds of what `env set` keeps.
const (
	maxEnvValue = 64 << 10
	maxEnvVars  = 1000
)

var envNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// envVarsFile is where e's variables are kept.
func (p *Pipeline) envVarsFile(e *environment) string {
	return filepath.Join(p.server().DataDir, "env", filepath.FromSlash(e.cfg.Repo)+".json")
}

// loadEnvVars reads the variables in file; none if it does not exist.
func loadEnvVars(file string) ([]envVar, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the variables: %w", err)
	}
	var doc envDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("read the variables %s: %w", file, err)
	}
	return doc.Vars, nil
}

// updateEnvVars changes the variables in file with fn, under an flock of file.lock.
func updateEnvVars(file string, fn func([]envVar) ([]envVar, error)) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("save the variables: %w", err)
	}
	lock, err := os.OpenFile(file+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock the variables: %w", err)
	}
	defer lock.Close() // closing releases the flock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock the variables: %w", err)
	}
	vars, err := loadEnvVars(file)
	if err != nil {
		return err
	}
	if vars, err = fn(vars); err != nil {
		return err
	}
	slices.SortFunc(vars, func(a, b envVar) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(envDoc{Vars: vars}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(file, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save the variables: %w", err)
	}
	return nil
}

// storedVars returns the variables set with `env set` that reach e's commands: those the
// server's [env.vars] and [env.secrets] do not set (the operator's file wins), as "K=V",
// and the values of the secret ones. A file that cannot be read is logged: its variables
// are then missing, and the deploy says so in its log.
func (p *Pipeline) storedVars(e *environment) (env []string, secrets []string, err error) {
	vars, err := loadEnvVars(p.envVarsFile(e))
	if err != nil {
		return nil, nil, err
	}
	own := append(slices.Clone(e.cfg.Vars), e.cfg.Secrets...)
	for _, v := range vars {
		if setsVar(own, v.Name) {
			continue
		}
		env = append(env, v.Name+"="+v.Value)
		if v.Secret {
			secrets = append(secrets, v.Value)
		}
	}
	return env, secrets, nil
}

// envCmd is `env`: list, set or unset the variables of inv.env.
func (p *Pipeline) envCmd(ctx context.Context, c Caller, inv *invocation) error {
	e := inv.env
	switch inv.arg(0) {
	case "set":
		if inv.asJSON {
			return usageErrorf("env set REPO KEY=VALUE... [--secret] [--redeploy]: --json lists, it does not set")
		}
		return p.envSet(ctx, c, inv)
	case "unset":
		if inv.asJSON || inv.secret || inv.useStdin {
			return usageErrorf("env unset REPO KEY... [--redeploy]")
		}
		return p.envUnset(ctx, c, inv)
	}
	if len(inv.args) != 1 || inv.secret || inv.useStdin || inv.redeploy {
		return usageErrorf("env REPO [--json]")
	}
	vars, err := loadEnvVars(p.envVarsFile(e))
	if err != nil {
		return err
	}
	type shown struct {
		Name   string `json:"name"`
		Value  string `json:"value"`
		Secret bool   `json:"secret"`
		Source string `json:"source"` // "env set", or "server config" ([env.vars], [env.secrets])
	}
	var list []shown
	for _, kv := range e.cfg.Vars {
		name, value, _ := strings.Cut(kv, "=")
		list = append(list, shown{Name: name, Value: value, Source: "server config"})
	}
	for _, kv := range e.cfg.Secrets {
		name, _, _ := strings.Cut(kv, "=")
		list = append(list, shown{Name: name, Value: masked, Secret: true, Source: "server config"})
	}
	for _, v := range vars {
		if slices.ContainsFunc(list, func(s shown) bool { return s.Name == v.Name }) {
			continue // the server's wins
		}
		s := shown{Name: v.Name, Value: v.Value, Secret: v.Secret, Source: "env set"}
		if v.Secret {
			s.Value = masked
		}
		list = append(list, s)
	}
	slices.SortFunc(list, func(a, b shown) int { return strings.Compare(a.Name, b.Name) })
	if inv.asJSON {
		if list == nil {
			list = []shown{}
		}
		return writeJSON(inv.stdout, list)
	}
	tw := tabwriter.NewWriter(inv.stdout, 0, 0, 2, ' ', 0)
	for _, s := range list {
		note := ""
		if s.Source == "server config" {
			note = "\t(server config)"
		}
		fmt.Fprintf(tw, "%s=%s%s\n", s.Name, s.Value, note)
	}
	return tw.Flush()
}

// envSet is `env set REPO KEY=VALUE... [--secret] [--redeploy]` and
// `env set REPO KEY --stdin [--secret] [--redeploy]`.
func (p *Pipeline) envSet(ctx context.Context, c Caller, inv *invocation) error {
	e := inv.env
	pairs := inv.args[2:]
	if len(pairs) == 0 || (inv.useStdin && len(pairs) != 1) {
		return usageErrorf("env set REPO KEY=VALUE... [--secret] [--redeploy], or env set REPO KEY --stdin [--secret]")
	}
	var set []envVar
	for _, kv := range pairs {
		name, value, ok := strings.Cut(kv, "=")
		switch {
		case inv.useStdin && ok:
			return usageErrorf("env set REPO KEY --stdin: the value comes from stdin, not after =")
		case inv.useStdin:
			v, err := readValue(inv.stdin)
			if err != nil {
				return err
			}
			value = v
		case !ok:
			return usageErrorf("env set REPO KEY=VALUE...: %q has no =VALUE (or use --stdin)", kv)
		}
		if err := p.checkEnvVar(e, name, value, inv.secret); err != nil {
			return err
		}
		set = append(set, envVar{Name: name, Value: value, Secret: inv.secret})
	}
	err := updateEnvVars(p.envVarsFile(e), func(vars []envVar) ([]envVar, error) {
		for _, v := range set {
			vars = slices.DeleteFunc(vars, func(o envVar) bool { return o.Name == v.Name })
			vars = append(vars, v)
		}
		if len(vars) > maxEnvVars {
			return nil, fmt.Errorf("%s would have more than %d variables", e.cfg.Repo, maxEnvVars)
		}
		return vars, nil
	})
	if err != nil {
		return err
	}
	names := make([]string, len(set))
	for i, v := range set {
		names[i] = v.Name
	}
	what := "env set " + strings.Join(names, ", ")
	if inv.secret {
		what += " (secret)"
	}
	return p.envChanged(ctx, c, inv, what)
}

// envUnset is `env unset REPO KEY... [--redeploy]`.
func (p *Pipeline) envUnset(ctx context.Context, c Caller, inv *invocation) error {
	e := inv.env
	names := inv.args[2:]
	if len(names) == 0 {
		return usageErrorf("env unset REPO KEY... [--redeploy]")
	}
	var missing []string
	err := updateEnvVars(p.envVarsFile(e), func(vars []envVar) ([]envVar, error) {
		for _, n := range names {
			if !slices.ContainsFunc(vars, func(v envVar) bool { return v.Name == n }) {
				missing = append(missing, n)
			}
			vars = slices.DeleteFunc(vars, func(v envVar) bool { return v.Name == n })
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("%s: not set with env set: %s", e.cfg.Repo, strings.Join(missing, ", "))
		}
		return vars, nil
	})
	if err != nil {
		return err
	}
	return p.envChanged(ctx, c, inv, "env unset "+strings.Join(names, ", "))
}

// envChanged journals a change (what: the names, never a value), says when it takes effect,
// and with --redeploy redeploys at once.
func (p *Pipeline) envChanged(ctx context.Context, c Caller, inv *invocation, what string) error {
	e := inv.env
	p.noteChange(e, c, what)
	if !inv.redeploy {
		fmt.Fprintf(inv.stdout, "%s: %s; it takes effect at the next deploy (or: redeploy %s)\n", e.cfg.Repo, what, e.cfg.Repo)
		return nil
	}
	fmt.Fprintf(inv.stdout, "%s: %s; redeploying\n", e.cfg.Repo, what)
	return p.redeploy(ctx, e, c, "", inv.stdout)
}

// checkEnvVar refuses a variable that env set may not set.
func (p *Pipeline) checkEnvVar(e *environment, name, value string, secret bool) error {
	switch {
	case !envNameRe.MatchString(name):
		return fmt.Errorf("%q is not a variable name ([A-Za-z_][A-Za-z0-9_]*)", name)
	case strings.HasPrefix(name, "SLIPWAY_"):
		return fmt.Errorf("%s: SLIPWAY_* variables are set by slipway", name)
	case setsVar(e.cfg.Vars, name) || setsVar(e.cfg.Secrets, name):
		return fmt.Errorf("%s is set by the server's configuration ([env.vars] or [env.secrets] of %s), which wins: change it there", name, e.cfg.Repo)
	case len(value) > maxEnvValue:
		return fmt.Errorf("%s: a value of more than %d bytes", name, maxEnvValue)
	case strings.ContainsRune(value, 0):
		return fmt.Errorf("%s: a value cannot hold a NUL byte", name)
	case secret && len(value) < configs.MinSecret:
		return fmt.Errorf("%s: a secret must be at least %d characters long, to be masked", name, configs.MinSecret)
	}
	return nil
}

// readValue reads a value from stdin (env set --stdin): all of it, less one final newline.
func readValue(r io.Reader) (string, error) {
	if r == nil {
		return "", errors.New("no stdin to read the value from")
	}
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), maxEnvValue+2))
	if err != nil {
		return "", fmt.Errorf("read the value from stdin: %w", err)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if len(v) > maxEnvValue {
		return "", fmt.Errorf("a value of more than %d bytes", maxEnvValue)
	}
	return v, nil
}

// writeEnvFile writes the environment's variables into the release as env_file (0600),
// replacing what the tree has there: the release carries the configuration it is built,
// tested and run with, and a rollback brings it back. One KEY=VALUE line per variable,
// sorted, in the quoting dotenv readers share (single quotes, or double quotes with
// escapes where the value holds a quote or a newline).
func (d *deploy) writeEnvFile(out io.Writer) error {
	name := d.e.cfg.EnvFile
	if name == "" {
		return nil
	}
	vars := d.variables()
	slices.Sort(vars)
	var b strings.Builder
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		b.WriteString(k + "=" + dotenvQuote(v) + "\n")
	}
	root, err := os.OpenRoot(d.e.rel.Dir(d.entry.SHA))
	if err != nil {
		return d.envFileError(err)
	}
	defer root.Close() // a directory: closing it loses nothing
	if dir := filepath.Dir(name); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return d.envFileError(err)
		}
	}
	if err := root.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return d.envFileError(err)
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return d.envFileError(err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close() // the write's error is the one to report
		return d.envFileError(err)
	}
	if err := f.Close(); err != nil {
		return d.envFileError(err)
	}
	say(out, "env file: %s (%d variables)", name, len(vars))
	return nil
}

func (d *deploy) envFileError(err error) error {
	d.log.Error().Err(err).Str("env_file", d.e.cfg.EnvFile).Msg("write the env file")
	return fmt.Errorf("env file %s: could not be written: see the server log", d.e.cfg.EnvFile)
}

// dotenvQuote quotes a value for a .env file.
func dotenvQuote(v string) string {
	if !strings.ContainsAny(v, "'\n\r") {
		return "'" + v + "'"
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`, "$", `\$`)
	return `"` + r.Replace(v) + `"`
}
