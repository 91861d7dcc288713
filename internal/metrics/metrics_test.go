package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestStepLabel(t *testing.T) {
	for in, want := range map[string]string{
		"checkout":                            "checkout",
		"build 1/2":                           "build 1/2",
		"deploy@web1:2200 after_activate 1/1": "after_activate 1/1",
		"root@127.0.0.2:41234 before_activate_each 2/2": "before_activate_each 2/2",
		"prepare targets": "prepare targets",
	} {
		if got := stepLabel(in); got != want {
			t.Errorf("stepLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

// A nil *Metrics records nothing and does not panic: code reports to it unconditionally.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.DeployFinished("a/b", "push", "live", time.Second, []Step{{Name: "checkout", Took: time.Millisecond}})
	m.Connection("authenticated")
	m.Session("receive-pack", "deployed")
	m.Delivery("live", "delivered")
}

// The scrape shows what was recorded, the environments' state as states gives it at that
// moment, and a release's age only where there is one.
func TestScrape(t *testing.T) {
	since := time.Now().Add(-90 * time.Second)
	m := New(func() []EnvState {
		return []EnvState{{Repo: "a/live", LiveSince: since, Frozen: true}, {Repo: "a/empty", Deploying: true}}
	})
	m.DeployFinished("a/live", "push", "live", 1500*time.Millisecond, []Step{{Name: "deploy@web1 after_activate 1/1", Took: time.Second}})
	m.Session("receive-pack", "busy")
	m.Session("receive-pack", "deployed")
	m.Session("upload-pack", "fetched")
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	for _, want := range []string{
		`slipway_deploys_total{kind="push",outcome="live",repo="a/live"} 1`,
		`slipway_deploy_duration_seconds_sum{outcome="live",repo="a/live"} 1.5`,
		`slipway_step_duration_seconds_count{repo="a/live",step="after_activate 1/1"} 1`,
		`slipway_pushes_refused_total{reason="busy"} 1`,
		`slipway_environment_frozen{repo="a/live"} 1`,
		`slipway_environment_deploying{repo="a/empty"} 1`,
		`slipway_environment_deploying{repo="a/live"} 0`,
		`slipway_live_release_age_seconds{repo="a/live"} 9`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	for _, not := range []string{`reason="deployed"`, `reason="fetched"`, `slipway_live_release_age_seconds{repo="a/empty"}`} {
		if strings.Contains(body, not) {
			t.Errorf("scrape has %s", not)
		}
	}
}
