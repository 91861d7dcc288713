package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/slipway/slipway/internal/notify"
	"github.com/slipway/slipway/releaser"
)

// EnvStatus is one environment as status shows it (status --json).
type EnvStatus struct {
	Repo       string           `json:"repo"`
	Branch     string           `json:"branch"`
	Live       string           `json:"live"`
	Subject    string           `json:"subject,omitempty"` // the first line of the live commit's message (--json only)
	LiveSince  time.Time        `json:"live_since,omitzero"`
	DeployedBy string           `json:"deployed_by,omitempty"`
	State      string           `json:"state"` // idle, deploying, frozen
	Holder     string           `json:"holder,omitempty"`
	HeldSince  time.Time        `json:"held_since,omitzero"`
	Frozen     *releaser.Freeze `json:"frozen,omitempty"`
	Problem    string           `json:"problem,omitempty"` // why an unavailable environment is
	Sandbox    string           `json:"sandbox"`           // how its builds are confined (the same for every environment)
	Targets    []TargetStatus   `json:"targets,omitempty"` // a fleet's, in the configuration's order
}

// TargetStatus is one target of a fleet as status shows it: what the last deploy left live
// there, and whether an operator paused it.
type TargetStatus struct {
	Target  string          `json:"target"`
	Live    string          `json:"live"`
	LiveAt  time.Time       `json:"live_at,omitzero"`
	Differs bool            `json:"differs"` // its live release is not the environment's
	Paused  *releaser.Pause `json:"paused,omitempty"`
}

// Status is every environment c may use, as status shows them, by name, but without the
// live commits' subjects (which cost a read of each repository).
func (p *Pipeline) Status(c Caller) ([]EnvStatus, error) {
	return p.statuses(c, false)
}

func (p *Pipeline) statuses(c Caller, subjects bool) ([]EnvStatus, error) {
	envs, err := p.list(c.Name)
	if err != nil {
		return nil, err
	}
	list := []EnvStatus{}
	sandbox := p.sandboxLine()
	for _, e := range envs {
		s := e.status()
		s.Sandbox = sandbox
		if subjects && s.Live != "" {
			s.Subject = p.subject(e, s.Live)
		}
		list = append(list, s)
	}
	return list, nil
}

// subject is the first line of commit sha's message in e's repository, at most 200 bytes;
// "" if it cannot be read.
func (p *Pipeline) subject(e *environment, sha string) string {
	st, err := p.objects(e)
	if err != nil {
		return ""
	}
	defer st.Close() // read only: closing it loses nothing
	c, err := object.GetCommit(st, plumbing.NewHash(sha))
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(c.Message), "\n")
	if len(line) > 200 {
		line = line[:200]
	}
	return strings.ToValidUTF8(strings.TrimSpace(line), "")
}

func (p *Pipeline) status(c Caller, asJSON bool, stdout io.Writer) error {
	list, err := p.statuses(c, asJSON)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENVIRONMENT\tLIVE\tSINCE\tBY\tSTATE")
	for _, s := range list {
		state := s.State
		switch {
		case s.Problem != "":
			state = s.Problem
		case s.Frozen != nil:
			state = fmt.Sprintf("frozen by %s since %s: %s", s.Frozen.By, stamp(s.Frozen.Since), s.Frozen.Message)
		case s.Holder != "":
			state = fmt.Sprintf("deploying (%s, since %s)", s.Holder, stamp(s.HeldSince))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Repo, orDash(short(s.Live)), orDash(stamp(s.LiveSince)), orDash(s.DeployedBy), state)
		for _, t := range s.Targets {
			state := "ok"
			switch {
			case t.Paused != nil:
				state = fmt.Sprintf("paused by %s since %s: %s", t.Paused.By, stamp(t.Paused.Since), t.Paused.Message)
			case t.Differs:
				state = "DIFFERS from the environment's live release"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t\t%s\n", t.Target, orDash(short(t.Live)), orDash(stamp(t.LiveAt)), state)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\nlimits: %s\n", p.sandboxLine(), p.cfg.Builder.Sandbox().LimitsString())
	return err
}

func (e *environment) status() EnvStatus {
	s := EnvStatus{Repo: e.cfg.Repo, Branch: e.cfg.Branch, State: "idle"}
	if e.broken != nil {
		s.State, s.Problem = "unavailable", unavailable(e.cfg.Repo, e.broken).Error()
		return s
	}
	var err error
	if s.Live, err = e.rel.Current(); err != nil {
		s.State, s.Problem = "unavailable", unavailable(e.cfg.Repo, err).Error()
		return s
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
	if f := e.cfg.Fleet; f.Remote() {
		known, err := e.rel.Targets()
		if err != nil {
			known = nil // shown as unknown: "-"
		}
		for _, t := range f.Targets {
			st := known[t.String()]
			s.Targets = append(s.Targets, TargetStatus{Target: t.String(), Live: st.Live, LiveAt: st.LiveAt,
				Differs: st.Live != s.Live, Paused: st.Paused})
		}
	}
	return s
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
		wentLive := en.Outcome == releaser.OutcomeLive || en.Outcome == releaser.OutcomeUnhealthy ||
			en.Outcome == releaser.OutcomeSuperseded || en.Outcome == releaser.OutcomeRolledBack
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
	// LiveOn are the fleet's targets that have it live, as the last deploy to each left them.
	LiveOn []string `json:"live_on,omitempty"`
}

func releasesCmd(e *environment, asJSON bool, stdout io.Writer) error {
	rels, err := e.rel.Releases()
	if err != nil {
		return fmt.Errorf("%s: list releases: %w", e.cfg.Repo, err)
	}
	byLive, err := liveEntries(e)
	if err != nil {
		return fmt.Errorf("%s: read history: %w", e.cfg.Repo, err)
	}
	var known map[string]releaser.TargetState
	if e.cfg.Fleet.Remote() {
		if known, err = e.rel.Targets(); err != nil {
			return fmt.Errorf("%s: read the targets' record: %w", e.cfg.Repo, err)
		}
	}
	list := []releaseInfo{}
	for _, r := range rels {
		ri := releaseInfo{SHA: r.SHA, Live: r.Live, Completed: r.Completed, LastLive: r.LastActivated}
		if en, ok := byLive[r.SHA]; ok {
			ri.DeployedBy, ri.Deploy = en.Pusher, en.ID
		}
		for _, t := range e.cfg.Fleet.Targets {
			if known[t.String()].Live == r.SHA {
				ri.LiveOn = append(ri.LiveOn, t.String())
			}
		}
		list = append(list, ri)
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fleet := e.cfg.Fleet.Remote()
	if fleet {
		fmt.Fprintln(tw, "\tRELEASE\tLAST LIVE\tBY\tDEPLOY\tLIVE ON")
	} else {
		fmt.Fprintln(tw, "\tRELEASE\tLAST LIVE\tBY\tDEPLOY")
	}
	for _, r := range list {
		mark := ""
		if r.Live {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", mark, r.SHA, orDash(stamp(r.LastLive)), orDash(r.DeployedBy), orDash(idString(r.Deploy)))
		if fleet {
			fmt.Fprintf(tw, "\t%s", orDash(strings.Join(r.LiveOn, ", ")))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func historyCmd(e *environment, n int, asJSON bool, stdout io.Writer) error {
	hist, err := e.rel.History(n)
	if err != nil {
		return fmt.Errorf("%s: read history: %w", e.cfg.Repo, err)
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
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.ID, stamp(h.Start), orDash(short(h.SHA)), h.Kind, h.Pusher, h.Outcome, took, note)
	}
	return tw.Flush()
}

// logsCmd prints a deploy's log; with follow, until the deploy has finished.
func logsCmd(ctx context.Context, e *environment, which string, follow bool, stdout io.Writer) error {
	var en releaser.Entry
	if which == "" {
		hist, err := e.rel.History(0)
		if err != nil {
			return fmt.Errorf("%s: read history: %w", e.cfg.Repo, err)
		}
		i := slices.IndexFunc(hist, func(h releaser.Entry) bool { return h.Kind != releaser.KindConfig })
		if i < 0 {
			return fmt.Errorf("%s has no deploys yet", e.cfg.Repo)
		}
		en = hist[i]
	} else {
		var err error
		if en, err = e.rel.Entry(which); errors.Is(err, releaser.ErrNotFound) {
			return fmt.Errorf("%s: no deploy %s", e.cfg.Repo, which)
		} else if err != nil {
			return fmt.Errorf("%s: %w", e.cfg.Repo, err)
		}
	}
	if en.Kind == releaser.KindConfig {
		return fmt.Errorf("#%d is a change of the configuration (%s), not a deploy: it has no log", en.ID, en.Message)
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
	defer f.Close() // read only: closing loses nothing
	for {
		if _, err := io.Copy(stdout, f); err != nil {
			return fmt.Errorf("read the log of deploy #%d: %w", en.ID, err)
		}
		if !follow {
			return nil
		}
		cur, err := e.rel.Entry(strconv.FormatInt(en.ID, 10))
		if err != nil {
			return fmt.Errorf("%s: %w", e.cfg.Repo, err)
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

// notificationsCmd lists the notifications of the environments c may use, newest first.
func (p *Pipeline) notificationsCmd(c Caller, asJSON bool, stdout io.Writer) error {
	list := []notify.Status{}
	if p.cfg.Notify != nil {
		envs, err := p.list(c.Name)
		if err != nil {
			return err
		}
		for _, st := range p.cfg.Notify.List() {
			if slices.ContainsFunc(envs, func(e *environment) bool { return e.cfg.Repo == st.Repo }) {
				list = append(list, st)
			}
		}
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CREATED\tEVENT\tENVIRONMENT\tSHA\tSTATE\tATTEMPTS\tURL\tLAST ERROR")
	for _, st := range list {
		state := st.State
		if st.State == "pending" && !st.NextAt.IsZero() && st.Attempts > 0 {
			state = "pending, next " + stamp(st.NextAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", stamp(st.Created), st.Event, st.Repo, short(st.SHA), state, st.Attempts, st.URL, orDash(st.LastError))
	}
	return tw.Flush()
}
