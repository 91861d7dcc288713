package hooks

import (
	"io"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/slipway/slipway/internal/notify"
	"github.com/slipway/slipway/releaser"
)

// Notifier takes a deploy's notifications (SPEC 7.3); its Enqueue writes them durably and
// returns at once: a notification never delays or fails a deploy. notify.Outbox is one.
type Notifier interface {
	Enqueue(event string, d notify.Deploy) error
	List() []notify.Status
}

// maxCommits bounds the subjects a notification lists.
const maxCommits = 50

// notify enqueues event for d, its secrets masked; a failure is the operator log's only.
func (d *deploy) notify(event string, mask func(string) string) {
	n := d.p.cfg.Notify
	if n == nil {
		return
	}
	e := d.entry
	nd := notify.Deploy{
		DeployID: e.ID, Kind: e.Kind, Repo: e.Repo, SHA: e.SHA, PreviousSHA: e.PreviousSHA,
		Pusher: e.Pusher, KeyFingerprint: e.KeyFingerprint, Message: mask(d.pushMessage(e.SHA)),
		Outcome: e.Outcome, Reason: mask(e.Reason), Start: e.Start, End: e.End,
		Steps: []notify.Step{}, Commits: d.commits(mask),
	}
	if !e.End.IsZero() {
		nd.DurationMs = e.End.Sub(e.Start).Milliseconds()
	}
	for _, s := range d.steps {
		nd.Steps = append(nd.Steps, notify.Step{Name: s.Name, TookMs: s.Took.Milliseconds(), Exit: s.Exit})
	}
	if err := n.Enqueue(event, nd); err != nil {
		d.log.Error().Err(err).Str("event", event).Msg("notification not queued")
	}
}

// event is the notification event of a finished deploy's outcome.
func (d *deploy) event(outcome string) string {
	switch outcome {
	case releaser.OutcomeLive:
		if d.entry.Kind == kindRollback {
			return notify.EventRolledBack
		}
		return notify.EventLive
	case releaser.OutcomeReverted:
		return notify.EventReverted
	case releaser.OutcomeCancelled:
		return notify.EventCancelled
	}
	return notify.EventFailed // failed, and live (unhealthy)
}

// commits are the subjects of the commits from the live release's up to the deployed one,
// newest first, along first parents, at most maxCommits.
func (d *deploy) commits(mask func(string) string) []string {
	subjects := []string{}
	if d.objects == nil {
		return subjects
	}
	h := plumbing.NewHash(d.entry.SHA)
	for len(subjects) < maxCommits && h.String() != d.entry.PreviousSHA {
		c, err := object.GetCommit(d.objects, h)
		if err != nil {
			break
		}
		subject, _, _ := strings.Cut(strings.TrimSpace(c.Message), "\n")
		subjects = append(subjects, mask(subject))
		if c.NumParents() == 0 {
			break
		}
		h = c.ParentHashes[0]
	}
	return subjects
}

// noMask leaves a string as it is.
func noMask(s string) string { return s }

// maskOf returns the function that masks d's secrets in a string, for what leaves the tee.
func maskOf(out io.Writer) func(string) string {
	if t, ok := out.(*tee); ok && t.mask != nil {
		return t.mask.Replace
	}
	return noMask
}
