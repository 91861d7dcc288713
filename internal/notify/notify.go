// Package notify delivers deploy notifications (SPEC 7.3): webhooks that are signed,
// delivered at least once, and never delay or fail a deploy.
//
// A notification is written to an outbox under the data dir (one file per delivery, written
// atomically) before the deploy reports; a Deliverer posts what the outbox holds in the
// background, with a timeout and retries with backoff, and moves each delivery to the sent
// or failed list once it is done. A crash loses nothing: the outbox is read again at start.
// X-Slipway-Delivery stays the same across retries, so receivers can drop duplicates.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/slipway/slipway/internal/atomicfile"
)

// The events.
const (
	EventStarted    = "started"
	EventLive       = "live"
	EventFailed     = "failed"
	EventReverted   = "reverted"
	EventRolledBack = "rolled_back"
	EventCancelled  = "cancelled"
)

// Events is every event, in the order the docs list them.
var Events = []string{EventStarted, EventLive, EventFailed, EventReverted, EventRolledBack, EventCancelled}

// Target is one [[notify]] of the server configuration.
type Target struct {
	URL    string
	Events []string // the events it gets
	Repos  []string // the environments it hears of; empty: every one
	Secret []byte   // signs the body (X-Slipway-Signature); nil: unsigned
	Slack  bool     // format = "slack": {"text": ...}
}

// wants reports whether t gets event for repo.
func (t Target) wants(event, repo string) bool {
	return slices.Contains(t.Events, event) && (len(t.Repos) == 0 || slices.Contains(t.Repos, repo))
}

// Step is one step of a deploy, as the payload has it.
type Step struct {
	Name   string `json:"name"`
	TookMs int64  `json:"took_ms"`
	Exit   int    `json:"exit"`
}

// Deploy is what a notification says of a deploy: the payload's fields but the event and
// the delivery id.
type Deploy struct {
	DeployID       int64     `json:"deploy_id"`
	Kind           string    `json:"kind"`
	Repo           string    `json:"repo"`
	SHA            string    `json:"sha"`
	PreviousSHA    string    `json:"previous_sha"`
	Pusher         string    `json:"pusher"`
	KeyFingerprint string    `json:"key_fingerprint"`
	Message        string    `json:"message"`
	Outcome        string    `json:"outcome"`
	Reason         string    `json:"reason,omitempty"`
	Start          time.Time `json:"start"`
	End            time.Time `json:"end,omitzero"`
	DurationMs     int64     `json:"duration_ms"`
	Steps          []Step    `json:"steps"`
	Commits        []string  `json:"commits"` // subjects between the previous sha and sha, newest first, at most 50
}

// payload is the JSON body.
type payload struct {
	Event    string `json:"event"`
	Delivery string `json:"delivery"`
	Deploy
}

// delivery is one outbox file: a body for one target, and how its delivery goes.
type delivery struct {
	ID        string    `json:"id"`
	Event     string    `json:"event"`
	Repo      string    `json:"repo"`
	SHA       string    `json:"sha"`
	URL       string    `json:"url"`
	Body      []byte    `json:"body"`
	Created   time.Time `json:"created"`
	Attempts  int       `json:"attempts"`
	NextAt    time.Time `json:"next_at"`
	LastError string    `json:"last_error,omitempty"`
	Done      time.Time `json:"done,omitzero"`
}

// Outbox is the notifications' store under a data dir. Safe for concurrent use, and by
// several processes (each file is written whole, by rename).
type Outbox struct {
	dir  string
	log  zerolog.Logger
	wake chan struct{} // a delivery was added: the Deliverer looks now
	now  func() time.Time

	mu      sync.Mutex // guards targets
	targets []Target
}

// SetTargets replaces the targets (a reload of the configuration). Deliveries in the outbox
// go on to their URLs, signed with the secret configured for that URL now; one whose URL
// is no longer configured is given up.
func (o *Outbox) SetTargets(targets []Target) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.targets = targets
}

func (o *Outbox) target(url string) (Target, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, t := range o.targets {
		if t.URL == url {
			return t, true
		}
	}
	return Target{}, false
}

// Delivery bounds.
const (
	attemptTimeout = 10 * time.Second // one POST
	firstBackoff   = time.Second
	maxBackoff     = 10 * time.Minute
	maxAttempts    = 20 // about a day and a half of retries with the backoff above
	keepDone       = 100
	maxBody        = 1 << 20 // a payload over this is cut (the commits and steps go first)
)

// NewOutbox returns the outbox in dataDir/notify for targets. Its directories are made
// when a notification is first written: a process that only lists (the CLI of an operator
// who may not write data_dir) writes nothing.
func NewOutbox(dataDir string, targets []Target, log zerolog.Logger) *Outbox {
	return &Outbox{dir: filepath.Join(dataDir, "notify"), log: log, wake: make(chan struct{}, 1), now: time.Now, targets: targets}
}

func (o *Outbox) pendingDir() string { return filepath.Join(o.dir, "outbox") }
func (o *Outbox) sentDir() string    { return filepath.Join(o.dir, "sent") }
func (o *Outbox) failedDir() string  { return filepath.Join(o.dir, "failed") }

// Enqueue writes one delivery of event for d to the outbox for each target that wants it,
// durably, and wakes the Deliverer. Its error is for the operator log only: a notification
// never fails a deploy.
func (o *Outbox) Enqueue(event string, d Deploy) error {
	var errs []error
	o.mu.Lock()
	targets := o.targets
	o.mu.Unlock()
	for _, t := range targets {
		if !t.wants(event, d.Repo) {
			continue
		}
		id := hex.EncodeToString(randomBytes(16))
		body, err := encode(t, payload{Event: event, Delivery: id, Deploy: d})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		dl := delivery{ID: id, Event: event, Repo: d.Repo, SHA: d.SHA, URL: t.URL, Body: body, Created: o.now().UTC(), NextAt: o.now().UTC()}
		if err := o.write(o.pendingDir(), dl); err != nil {
			errs = append(errs, err)
		}
	}
	select {
	case o.wake <- struct{}{}:
	default: // a wake-up is pending already
	}
	return errors.Join(errs...)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return b
}

// encode makes the body for t: the JSON payload, or Slack's {"text": ...}.
func encode(t Target, p payload) ([]byte, error) {
	if len(p.Commits) > 50 {
		p.Commits = p.Commits[:50]
	}
	if t.Slack {
		return json.Marshal(map[string]string{"text": slackText(p)})
	}
	b, err := json.Marshal(p)
	if err == nil && len(b) > maxBody {
		p.Commits, p.Steps = nil, nil
		b, err = json.Marshal(p)
	}
	return b, err
}

// slackText is one line for a Slack incoming webhook.
func slackText(p payload) string {
	sha := p.SHA
	if len(sha) > 7 {
		sha = sha[:7]
	}
	s := fmt.Sprintf("%s %s: %s of %s by %s", p.Repo, p.Event, p.Kind, sha, p.Pusher)
	if p.Reason != "" {
		s += ": " + p.Reason
	}
	if p.DurationMs > 0 {
		s += fmt.Sprintf(" (%.1fs)", float64(p.DurationMs)/1000)
	}
	return s
}

func (o *Outbox) write(dir string, d delivery) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("notification outbox: %w", err)
	}
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("notification %s: %w", d.ID, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, d.ID+".json"), b, 0o600); err != nil {
		return fmt.Errorf("notification %s: %w", d.ID, err)
	}
	return nil
}

// read reads the deliveries of dir; files that do not parse are logged and skipped.
func (o *Outbox) read(dir string) []delivery {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // nothing was ever written there
	}
	if err != nil {
		o.log.Warn().Err(err).Msg("read the notification outbox")
		return nil
	}
	var ds []delivery
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue // a temporary file of a write in progress
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // delivered and moved meanwhile
		}
		var d delivery
		if err := json.Unmarshal(b, &d); err != nil || d.ID+".json" != e.Name() {
			o.log.Warn().Err(err).Str("file", e.Name()).Msg("a damaged notification is skipped")
			continue
		}
		ds = append(ds, d)
	}
	return ds
}

// Deliverer posts the outbox's deliveries until its context ends.
type Deliverer struct {
	o      *Outbox
	client *http.Client
	mu     sync.Mutex // one delivery pass at a time
	// Observe, if set, is told of each attempt's result: "delivered", "retry" (it will be
	// tried again) or "given_up". It must return at once.
	Observe func(event, result string)
}

func (dv *Deliverer) observe(event, result string) {
	if dv.Observe != nil {
		dv.Observe(event, result)
	}
}

// NewDeliverer returns the Deliverer of o.
func NewDeliverer(o *Outbox) *Deliverer {
	return &Deliverer{o: o, client: &http.Client{Timeout: attemptTimeout}}
}

// idlePoll is how often the Deliverer looks at an outbox it was not woken for: the CLI,
// another process, adds deliveries too.
const idlePoll = 30 * time.Second

// Run delivers until ctx ends: what is due now, then at the next retry or wake-up.
func (dv *Deliverer) Run(ctx context.Context) {
	for {
		next := dv.Pass(ctx)
		wait := idlePoll
		if !next.IsZero() {
			wait = min(max(time.Until(next), 0), idlePoll)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-dv.o.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// Pass posts every delivery that is due, and returns when the next one is (zero: none).
func (dv *Deliverer) Pass(ctx context.Context) time.Time {
	dv.mu.Lock()
	defer dv.mu.Unlock()
	var next time.Time
	for _, d := range dv.o.read(dv.o.pendingDir()) {
		if ctx.Err() != nil {
			return next
		}
		if d.NextAt.After(dv.o.now()) {
			if next.IsZero() || d.NextAt.Before(next) {
				next = d.NextAt
			}
			continue
		}
		if n := dv.deliver(ctx, d); !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next
}

// deliver makes one attempt, and records its result: sent, or failed for good, or pending
// with the time of the next attempt, which it returns.
func (dv *Deliverer) deliver(ctx context.Context, d delivery) time.Time {
	o := dv.o
	t, configured := o.target(d.URL)
	if !configured {
		d.LastError, d.Done = "its URL is no longer configured", o.now().UTC()
		o.finish(d, o.failedDir())
		o.log.Warn().Str("delivery", d.ID).Str("url", d.URL).Msg("notification given up: its URL is no longer configured")
		dv.observe(d.Event, "given_up")
		return time.Time{}
	}
	err := dv.post(ctx, d, t.Secret)
	d.Attempts++
	log := o.log.With().Str("delivery", d.ID).Str("event", d.Event).Str("repo", d.Repo).Str("url", d.URL).Int("attempts", d.Attempts).Logger()
	if err == nil {
		d.LastError, d.Done = "", o.now().UTC()
		o.finish(d, o.sentDir())
		log.Info().Msg("notification delivered")
		dv.observe(d.Event, "delivered")
		return time.Time{}
	}
	d.LastError = err.Error()
	if d.Attempts >= maxAttempts {
		d.Done = o.now().UTC()
		o.finish(d, o.failedDir())
		log.Error().Err(err).Msg("notification given up")
		dv.observe(d.Event, "given_up")
		return time.Time{}
	}
	backoff := min(firstBackoff<<(d.Attempts-1), maxBackoff)
	d.NextAt = o.now().Add(backoff).UTC()
	if werr := o.write(o.pendingDir(), d); werr != nil {
		log.Error().Err(werr).Msg("record a notification attempt")
	}
	log.Warn().Err(err).Dur("retry_in", backoff).Msg("notification not delivered")
	dv.observe(d.Event, "retry")
	return d.NextAt
}

// post makes one POST of d.
func (dv *Deliverer) post(ctx context.Context, d delivery, secret []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(d.Body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "slipway-notify")
	req.Header.Set("X-Slipway-Event", d.Event)
	req.Header.Set("X-Slipway-Delivery", d.ID)
	if len(secret) > 0 {
		req.Header.Set("X-Slipway-Signature", Sign(secret, d.Body))
	}
	resp, err := dv.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()                                       // drained below: closing it loses nothing
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// Sign is the X-Slipway-Signature of body: "sha256=" and the hex HMAC-SHA256 of body under
// secret, the scheme GitHub's webhooks use.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// finish moves a done delivery to dir (sent or failed), and trims that list to keepDone.
func (o *Outbox) finish(d delivery, dir string) {
	if err := o.write(dir, d); err != nil {
		o.log.Error().Err(err).Msg("record a done notification")
		return
	}
	if err := os.Remove(filepath.Join(o.pendingDir(), d.ID+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		o.log.Error().Err(err).Msg("remove a done notification from the outbox")
	}
	// Trimmed by the files' times, without reading them: this runs after every delivery.
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) <= keepDone {
		return
	}
	type done struct {
		name string
		at   time.Time
	}
	var list []done
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".json") {
			list = append(list, done{e.Name(), fi.ModTime()})
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].at.Before(list[j].at) })
	for _, old := range list[:max(len(list)-keepDone, 0)] {
		_ = os.Remove(filepath.Join(dir, old.name)) // gone already is as good
	}
}

// Status is one delivery, as `notifications` lists it.
type Status struct {
	ID        string    `json:"id"`
	Event     string    `json:"event"`
	Repo      string    `json:"repo"`
	SHA       string    `json:"sha"`
	URL       string    `json:"url"`
	State     string    `json:"state"` // pending, sent, failed
	Attempts  int       `json:"attempts"`
	Created   time.Time `json:"created"`
	Done      time.Time `json:"done,omitzero"`
	NextAt    time.Time `json:"next_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// List returns the deliveries pending and the recent done ones, newest first.
func (o *Outbox) List() []Status {
	var out []Status
	for _, s := range []struct{ dir, state string }{{o.pendingDir(), "pending"}, {o.sentDir(), "sent"}, {o.failedDir(), "failed"}} {
		for _, d := range o.read(s.dir) {
			st := Status{ID: d.ID, Event: d.Event, Repo: d.Repo, SHA: d.SHA, URL: d.URL, State: s.state,
				Attempts: d.Attempts, Created: d.Created, Done: d.Done, LastError: d.LastError}
			if s.state == "pending" {
				st.NextAt = d.NextAt
			}
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}
