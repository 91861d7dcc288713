package notify

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// receiver is a webhook receiver on loopback that answers with the codes in order (200 once
// they run out) and keeps every request.
type receiver struct {
	mu    sync.Mutex
	codes []int
	got   []*http.Request
	body  [][]byte
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, req)
	r.body = append(r.body, b)
	code := http.StatusOK
	if len(r.codes) > 0 {
		code, r.codes = r.codes[0], r.codes[1:]
	}
	w.WriteHeader(code)
}

func newOutbox(t *testing.T, dir string, targets []Target) *Outbox {
	t.Helper()
	return NewOutbox(dir, targets, zerolog.New(zerolog.NewTestWriter(t)))
}

var deploy = Deploy{DeployID: 7, Kind: "push", Repo: "myapp/production", SHA: "1111111111111111111111111111111111111111",
	Pusher: "alice", Outcome: "live", Commits: []string{"fix the thing"}, Steps: []Step{{Name: "build 1/1", TookMs: 12}}}

// A delivery that fails is retried after its backoff with the same delivery id and
// signature, and once it succeeds it is listed as sent.
func TestDeliverRetriesSigned(t *testing.T) {
	t.Parallel()
	rcv := &receiver{codes: []int{http.StatusServiceUnavailable}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	secret := []byte("k3y")
	o := newOutbox(t, t.TempDir(), []Target{{URL: srv.URL, Events: []string{EventLive}, Secret: secret}})
	clock := time.Now()
	o.now = func() time.Time { return clock }
	if err := o.Enqueue(EventLive, deploy); err != nil {
		t.Fatal(err)
	}
	dv := NewDeliverer(o)
	next := dv.Pass(t.Context())
	if want := clock.Add(firstBackoff); !next.Equal(want.UTC()) && !next.Equal(want) {
		t.Fatalf("next attempt at %v, want %v", next, want)
	}
	if l := o.List(); len(l) != 1 || l[0].State != "pending" || l[0].Attempts != 1 || l[0].LastError != "HTTP 503" {
		t.Fatalf("after a 503: %+v", l)
	}
	if next := dv.Pass(t.Context()); !next.IsZero() && len(rcv.got) != 1 {
		t.Fatalf("a pass before the backoff posted again")
	}
	clock = clock.Add(firstBackoff)
	if next := dv.Pass(t.Context()); !next.IsZero() {
		t.Fatalf("next = %v after the delivery", next)
	}
	if l := o.List(); len(l) != 1 || l[0].State != "sent" || l[0].Attempts != 2 {
		t.Fatalf("after the retry: %+v", l)
	}
	if len(rcv.got) != 2 {
		t.Fatalf("%d requests, want 2", len(rcv.got))
	}
	for i, req := range rcv.got {
		if got, want := req.Header.Get("X-Slipway-Signature"), Sign(secret, rcv.body[i]); got != want {
			t.Errorf("request %d: signature %q, want %q", i, got, want)
		}
		if req.Header.Get("X-Slipway-Event") != EventLive || req.Header.Get("Content-Type") != "application/json" {
			t.Errorf("request %d: headers %v", i, req.Header)
		}
	}
	if a, b := rcv.got[0].Header.Get("X-Slipway-Delivery"), rcv.got[1].Header.Get("X-Slipway-Delivery"); a == "" || a != b {
		t.Errorf("delivery ids %q and %q: want one id for both attempts", a, b)
	}
	var p map[string]any
	if err := json.Unmarshal(rcv.body[1], &p); err != nil {
		t.Fatal(err)
	}
	if p["event"] != EventLive || p["delivery"] != rcv.got[1].Header.Get("X-Slipway-Delivery") || p["deploy_id"] != 7.0 ||
		p["repo"] != deploy.Repo || p["sha"] != deploy.SHA || p["pusher"] != "alice" {
		t.Errorf("payload %v", p)
	}
}

// The outbox is files: a new process (a restart) delivers what an earlier one queued.
func TestOutboxSurvivesRestart(t *testing.T) {
	t.Parallel()
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	dir := t.TempDir()
	targets := []Target{{URL: srv.URL, Events: []string{EventFailed}}}
	if err := newOutbox(t, dir, targets).Enqueue(EventFailed, deploy); err != nil {
		t.Fatal(err)
	}
	again := newOutbox(t, dir, targets)
	NewDeliverer(again).Pass(context.Background())
	if len(rcv.got) != 1 || again.List()[0].State != "sent" {
		t.Fatalf("after a restart: %d requests, %+v", len(rcv.got), again.List())
	}
	if rcv.got[0].Header.Get("X-Slipway-Signature") != "" {
		t.Error("signed without a secret")
	}
}

// Only the targets that want the event, for that repo, get it; a delivery whose URL left the
// configuration is given up, not sent unsigned.
func TestTargets(t *testing.T) {
	t.Parallel()
	o := newOutbox(t, t.TempDir(), []Target{
		{URL: "http://127.0.0.1:1/a", Events: []string{EventLive}},
		{URL: "http://127.0.0.1:1/b", Events: []string{EventFailed}},
		{URL: "http://127.0.0.1:1/c", Events: []string{EventLive}, Repos: []string{"other/app"}},
		{URL: "http://127.0.0.1:1/d", Events: []string{EventLive}, Repos: []string{"myapp/production"}, Slack: true},
	})
	if err := o.Enqueue(EventLive, deploy); err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, s := range o.List() {
		urls = append(urls, s.URL)
	}
	slices.Sort(urls)
	if want := []string{"http://127.0.0.1:1/a", "http://127.0.0.1:1/d"}; !slices.Equal(urls, want) {
		t.Fatalf("queued for %q, want %q", urls, want)
	}
	o.SetTargets(nil)
	NewDeliverer(o).Pass(context.Background())
	for _, s := range o.List() {
		if s.State != "failed" || s.LastError != "its URL is no longer configured" {
			t.Errorf("%+v", s)
		}
	}
}

func TestSlackText(t *testing.T) {
	t.Parallel()
	b, err := encode(Target{Slack: true}, payload{Event: EventFailed, Deploy: Deploy{Repo: "a/b", Kind: "push", SHA: deploy.SHA, Pusher: "bob", Reason: "test 1/1: exit status 1", DurationMs: 1500}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"text":"a/b failed: push of 1111111 by bob: test 1/1: exit status 1 (1.5s)"}`; string(b) != want {
		t.Errorf("slack body %s, want %s", b, want)
	}
}
