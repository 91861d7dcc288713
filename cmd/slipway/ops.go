package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/releaser"
)

// The operator commands. The local CLI (`slipway CMD --config FILE ...`) and SSH
// (`ssh git@HOST CMD ...`) run this same code with the same output; over SSH every command
// requires the key to be allowed on the environment it names, and status lists only those.
const opsUsage = `commands:
  status [--json]                 every environment: live release, since when, by whom, state
  releases REPO [--json]          the kept releases, newest first, the live one marked
  history REPO [-n N] [--json]    deploys, newest first: who, what, outcome, how long
  logs REPO [ID|SHA] [-f]         the log of a deploy (default: the newest); -f follows it
  rollback REPO [SHA]             make the previous (or the named) kept release live; no rebuild
  redeploy REPO [SHA]             build and test the live (or the named) commit again
  lock REPO -m MESSAGE            freeze: pushes and redeploys are refused with MESSAGE
  unlock REPO                     end a freeze
  help                            this list`

// opsCommands are the names run routes to the operator commands.
var opsCommands = []string{"status", "releases", "history", "logs", "rollback", "redeploy", "lock", "unlock", "help"}

// caller is who runs an operator command: a key's name over SSH, "" for the local operator.
type caller struct {
	name, fingerprint string
}

func (c caller) label() string {
	if c.name == "" {
		return localOperator()
	}
	return c.name
}

// localOperator names the local CLI user in the journal and in freezes.
func localOperator() string {
	if u := os.Getenv("USER"); u != "" {
		return u + " (cli)"
	}
	return "operator (cli)"
}

// RunCommand runs an operator command that came over SSH.
func (p *pipeline) RunCommand(ctx context.Context, who gitserver.Identity, args []string, stdout, stderr io.Writer) int {
	err := p.operate(ctx, caller{name: who.Name, fingerprint: who.KeyFingerprint}, args, stdout)
	return reportOps(err, stderr)
}

// reportOps writes err as one line and returns the exit status.
func reportOps(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "slipway: %v\n", err)
	return 1
}

// operate runs one operator command for c.
func (p *pipeline) operate(ctx context.Context, c caller, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stdout, opsUsage)
		return nil
	}
	name, args := args[0], args[1:]
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stdout)
	asJSON := fs.Bool("json", false, "print JSON")
	n := fs.Int("n", 20, "how many deploys")
	follow := fs.Bool("f", false, "follow a running deploy")
	message := fs.String("m", "", "why the environment is frozen")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	want := func(min, max int, usage string) error {
		if len(pos) < min || len(pos) > max {
			return fmt.Errorf("usage: %s", usage)
		}
		return nil
	}
	switch name {
	case "help":
		fmt.Fprintln(stdout, opsUsage)
		return nil
	case "status":
		if err := want(0, 0, "status [--json]"); err != nil {
			return err
		}
		return p.status(c, *asJSON, stdout)
	}
	usage := map[string]string{
		"releases": "releases REPO [--json]", "history": "history REPO [-n N] [--json]",
		"logs": "logs REPO [ID|SHA] [-f]", "rollback": "rollback REPO [SHA]", "redeploy": "redeploy REPO [SHA]",
		"lock": "lock REPO -m MESSAGE", "unlock": "unlock REPO",
	}[name]
	if usage == "" {
		return fmt.Errorf("unknown command %q (try help)", name)
	}
	max := 2
	if name == "releases" || name == "history" || name == "lock" || name == "unlock" {
		max = 1
	}
	if err := want(1, max, usage); err != nil {
		return err
	}
	e, err := p.access(pos[0], c.name, false)
	if err != nil {
		return err
	}
	arg := ""
	if len(pos) == 2 {
		arg = pos[1]
	}
	switch name {
	case "releases":
		return releasesCmd(e, *asJSON, stdout)
	case "history":
		return historyCmd(e, *n, *asJSON, stdout)
	case "logs":
		return logsCmd(ctx, e, arg, *follow, stdout)
	case "rollback":
		return p.rollback(ctx, e, c, arg, stdout)
	case "redeploy":
		return p.redeploy(ctx, e, c, arg, stdout)
	case "lock":
		if strings.TrimSpace(*message) == "" {
			return errors.New("lock needs -m MESSAGE: say why, pushers will read it")
		}
		if err := e.rel.Freeze(c.label(), *message); err != nil {
			return fmt.Errorf("freeze %s: %w", e.cfg.repo, err)
		}
		fmt.Fprintf(stdout, "%s is frozen: pushes are refused with %q\n", e.cfg.repo, *message)
		return nil
	default: // unlock
		if err := e.rel.Unfreeze(); errors.Is(err, releaser.ErrNotFrozen) {
			return fmt.Errorf("%s is not frozen", e.cfg.repo)
		} else if err != nil {
			return fmt.Errorf("unfreeze %s: %w", e.cfg.repo, err)
		}
		fmt.Fprintf(stdout, "%s is no longer frozen\n", e.cfg.repo)
		return nil
	}
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

// envStatus is one line of status.
type envStatus struct {
	Repo       string           `json:"repo"`
	Branch     string           `json:"branch"`
	Live       string           `json:"live"`
	LiveSince  time.Time        `json:"live_since,omitzero"`
	DeployedBy string           `json:"deployed_by,omitempty"`
	State      string           `json:"state"` // idle, deploying, frozen
	Holder     string           `json:"holder,omitempty"`
	HeldSince  time.Time        `json:"held_since,omitzero"`
	Frozen     *releaser.Freeze `json:"frozen,omitempty"`
}

func (p *pipeline) status(c caller, asJSON bool, stdout io.Writer) error {
	p.mu.Lock()
	var envs []*environment
	for _, r := range p.repos() {
		if e := p.envs[r]; e.allowed(c.name) {
			envs = append(envs, e)
		}
	}
	p.mu.Unlock()
	list := []envStatus{}
	for _, e := range envs {
		s, err := e.status()
		if err != nil {
			return err
		}
		list = append(list, s)
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENVIRONMENT\tLIVE\tSINCE\tBY\tSTATE")
	for _, s := range list {
		state := s.State
		switch {
		case s.Frozen != nil:
			state = fmt.Sprintf("frozen by %s since %s: %s", s.Frozen.By, stamp(s.Frozen.Since), s.Frozen.Message)
		case s.Holder != "":
			state = fmt.Sprintf("deploying (%s, since %s)", s.Holder, stamp(s.HeldSince))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Repo, orDash(short(s.Live)), orDash(stamp(s.LiveSince)), orDash(s.DeployedBy), state)
	}
	return tw.Flush()
}

func (e *environment) status() (envStatus, error) {
	s := envStatus{Repo: e.cfg.repo, Branch: e.cfg.branch, State: "idle"}
	var err error
	if s.Live, err = e.rel.Current(); err != nil {
		return s, fmt.Errorf("%s: read current: %w", e.cfg.repo, err)
	}
	if s.Live != "" {
		if byLive, err := liveEntries(e); err == nil {
			if en, ok := byLive[s.Live]; ok {
				s.LiveSince, s.DeployedBy = en.End, en.Pusher
			}
		}
	}
	if h, err := e.rel.Holder(); err == nil && h != nil {
		s.State, s.Holder, s.HeldSince = "deploying", h.Holder, h.Since
	}
	if f, err := e.rel.Frozen(); err == nil && f != nil {
		s.State, s.Frozen = "frozen", f
	}
	return s, nil
}

// liveEntries maps each sha that went live to the journal entry that made it live most
// recently. It reads the journal once, however many releases the caller looks up.
func liveEntries(e *environment) (map[string]releaser.Entry, error) {
	hist, err := e.rel.History(0)
	if err != nil {
		return nil, err
	}
	byLive := map[string]releaser.Entry{}
	for _, en := range hist { // newest first: the first entry seen for a sha wins
		wentLive := en.Outcome == releaser.OutcomeLive || en.Outcome == releaser.OutcomeSuperseded || en.Outcome == releaser.OutcomeRolledBack
		if _, seen := byLive[en.SHA]; wentLive && !seen {
			byLive[en.SHA] = en
		}
	}
	return byLive, nil
}

// releaseInfo is one line of releases.
type releaseInfo struct {
	SHA        string    `json:"sha"`
	Live       bool      `json:"live"`
	Completed  time.Time `json:"completed"`
	LastLive   time.Time `json:"last_live,omitzero"`
	DeployedBy string    `json:"deployed_by,omitempty"`
	Deploy     int64     `json:"deploy,omitempty"`
}

func releasesCmd(e *environment, asJSON bool, stdout io.Writer) error {
	rels, err := e.rel.Releases()
	if err != nil {
		return fmt.Errorf("%s: list releases: %w", e.cfg.repo, err)
	}
	byLive, err := liveEntries(e)
	if err != nil {
		return fmt.Errorf("%s: read history: %w", e.cfg.repo, err)
	}
	list := []releaseInfo{}
	for _, r := range rels {
		ri := releaseInfo{SHA: r.SHA, Live: r.Live, Completed: r.Completed, LastLive: r.LastActivated}
		if en, ok := byLive[r.SHA]; ok {
			ri.DeployedBy, ri.Deploy = en.Pusher, en.ID
		}
		list = append(list, ri)
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\tRELEASE\tLAST LIVE\tBY\tDEPLOY")
	for _, r := range list {
		mark := ""
		if r.Live {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", mark, r.SHA, orDash(stamp(r.LastLive)), orDash(r.DeployedBy), orDash(idString(r.Deploy)))
	}
	return tw.Flush()
}

func historyCmd(e *environment, n int, asJSON bool, stdout io.Writer) error {
	hist, err := e.rel.History(n)
	if err != nil {
		return fmt.Errorf("%s: read history: %w", e.cfg.repo, err)
	}
	if hist == nil {
		hist = []releaser.Entry{}
	}
	if asJSON {
		return writeJSON(stdout, hist)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTARTED\tSHA\tKIND\tBY\tOUTCOME\tTOOK\tNOTE")
	for _, h := range hist {
		took := "-"
		if !h.End.IsZero() {
			took = h.End.Sub(h.Start).Round(time.Millisecond).String()
		}
		note := h.Message
		if h.Reason != "" {
			note = h.Reason
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.ID, stamp(h.Start), short(h.SHA), h.Kind, h.Pusher, h.Outcome, took, note)
	}
	return tw.Flush()
}

// logsCmd prints a deploy's log; with follow, until the deploy has finished.
func logsCmd(ctx context.Context, e *environment, which string, follow bool, stdout io.Writer) error {
	var en releaser.Entry
	if which == "" {
		hist, err := e.rel.History(1)
		if err != nil {
			return fmt.Errorf("%s: read history: %w", e.cfg.repo, err)
		}
		if len(hist) == 0 {
			return fmt.Errorf("%s has no deploys yet", e.cfg.repo)
		}
		en = hist[0]
	} else {
		var err error
		if en, err = e.rel.Entry(which); errors.Is(err, releaser.ErrNotFound) {
			return fmt.Errorf("%s: no deploy %s", e.cfg.repo, which)
		} else if err != nil {
			return fmt.Errorf("%s: %w", e.cfg.repo, err)
		}
	}
	if en.Log == "" {
		return fmt.Errorf("the log of deploy #%d was pruned", en.ID)
	}
	f, err := os.Open(en.Log)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the log of deploy #%d was pruned", en.ID)
	} else if err != nil {
		return fmt.Errorf("open the log of deploy #%d: %w", en.ID, err)
	}
	defer f.Close()
	for {
		if _, err := io.Copy(stdout, f); err != nil {
			return fmt.Errorf("read the log of deploy #%d: %w", en.ID, err)
		}
		if !follow {
			return nil
		}
		cur, err := e.rel.Entry(strconv.FormatInt(en.ID, 10))
		if err != nil {
			return fmt.Errorf("%s: %w", e.cfg.repo, err)
		}
		if cur.Outcome != releaser.OutcomeRunning {
			_, err := io.Copy(stdout, f) // what was written between the last copy and the end
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond): // a log file offers no event to wait on
		}
	}
}

// rollback makes the previous (or the named) kept release live again, with no rebuild.
func (p *pipeline) rollback(ctx context.Context, e *environment, c caller, sha string, stdout io.Writer) error {
	unlock, err := p.lock(ctx, e, c.label(), 0)
	if err != nil {
		return err
	}
	defer unlock()
	if sha == "" {
		if sha, err = e.rel.Previous(); errors.Is(err, releaser.ErrNotFound) {
			return fmt.Errorf("%s has no previous release to roll back to", e.cfg.repo)
		} else if err != nil {
			return fmt.Errorf("%s: find the previous release: %w", e.cfg.repo, err)
		}
	} else if sha, err = resolveSHA(e, sha); err != nil {
		return err
	}
	if live, _ := e.rel.Current(); live == sha {
		return fmt.Errorf("%s is already live", short(sha))
	}
	if !e.rel.IsComplete(sha) {
		return notKept(e, sha)
	}
	objects, err := p.objects(e)
	if err != nil {
		return err
	}
	defer objects.Close()
	d := &deploy{p: p, e: e, objects: objects, entry: releaser.Entry{Kind: kindRollback, SHA: sha, Pusher: c.label(), KeyFingerprint: c.fingerprint}}
	return d.run(context.WithoutCancel(ctx), stdout) // a rollback is short and must not stop halfway
}

// redeploy builds and tests the live (or the named) commit again and makes it live.
func (p *pipeline) redeploy(ctx context.Context, e *environment, c caller, sha string, stdout io.Writer) error {
	if err := frozen(e); err != nil {
		return err
	}
	if err := linkAsRoot(e.cfg); err != nil {
		return err
	}
	unlock, err := p.lock(ctx, e, c.label(), 0)
	if err != nil {
		return err
	}
	defer unlock()
	if sha == "" {
		if sha, err = e.rel.Current(); err != nil {
			return fmt.Errorf("%s: read current: %w", e.cfg.repo, err)
		}
		if sha == "" {
			return fmt.Errorf("%s has no live release to redeploy: push one", e.cfg.repo)
		}
	} else if sha, err = resolveSHA(e, sha); err != nil {
		return err
	}
	objects, err := p.objects(e)
	if err != nil {
		return err
	}
	defer objects.Close()
	if _, err := object.GetCommit(objects, plumbing.NewHash(sha)); err != nil {
		return fmt.Errorf("commit %s is not in %s's repository", short(sha), e.cfg.repo)
	}
	d := &deploy{p: p, e: e, objects: objects, entry: releaser.Entry{Kind: kindRedeploy, SHA: sha, Pusher: c.label(), KeyFingerprint: c.fingerprint}}
	return d.run(ctx, stdout)
}

// resolveSHA expands a sha or a unique prefix of one to a full sha, from the kept releases
// and the journal.
func resolveSHA(e *environment, s string) (string, error) {
	if len(s) < 7 || strings.Trim(s, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%q is not a commit id (7 to 40 lowercase hex digits)", s)
	}
	if len(s) == 40 {
		return s, nil
	}
	found := map[string]bool{}
	rels, err := e.rel.Releases()
	if err != nil {
		return "", fmt.Errorf("%s: list releases: %w", e.cfg.repo, err)
	}
	for _, r := range rels {
		if strings.HasPrefix(r.SHA, s) {
			found[r.SHA] = true
		}
	}
	if len(found) == 0 {
		if en, err := e.rel.Entry(s); err == nil {
			found[en.SHA] = true
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%s: no release or deploy matches %s", e.cfg.repo, s)
	case 1:
		for sha := range found {
			return sha, nil
		}
	}
	return "", fmt.Errorf("%s: %s is ambiguous: give more digits", e.cfg.repo, s)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func idString(id int64) string {
	if id == 0 {
		return ""
	}
	return "#" + strconv.FormatInt(id, 10)
}
