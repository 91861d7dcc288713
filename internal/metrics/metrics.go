// Package metrics is slipway's Prometheus metrics (SPEC 12: metrics_listen): what the git
// server, the deploy pipeline and the notifier report as it happens (deploys, steps, refused
// pushes, SSH connections, notification deliveries), and what each environment's state is
// when /metrics is scraped (how long its release has been live, whether it is deploying or
// frozen). It has its own registry, never the global one, and names every metric slipway_*.
package metrics

import (
	"net/http"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// EnvState is one environment as a scrape sees it.
type EnvState struct {
	Repo      string
	LiveSince time.Time // when its live release went live; zero if none
	Deploying bool      // its deploy lock is held
	Frozen    bool
}

// Metrics holds slipway's metrics. Its methods are safe for concurrent use, and a nil
// *Metrics records nothing, so that code may report to it unconditionally.
type Metrics struct {
	reg            *prometheus.Registry
	deploys        *prometheus.CounterVec
	deployDuration *prometheus.HistogramVec
	stepDuration   *prometheus.HistogramVec
	pushesRefused  *prometheus.CounterVec
	connections    *prometheus.CounterVec
	sessions       *prometheus.CounterVec
	deliveries     *prometheus.CounterVec
}

// New makes the metrics; states, called at each scrape, gives the environments' state.
func New(states func() []EnvState) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		deploys: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipway_deploys_total",
			Help: "Deploys (pushes, rollbacks, redeploys) that ended, by environment, kind and outcome (live, failed, cancelled, reverted, unhealthy).",
		}, []string{"repo", "kind", "outcome"}),
		deployDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "slipway_deploy_duration_seconds",
			Help:    "How long deploys took, from the journal entry to the outcome, by environment and outcome.",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800},
		}, []string{"repo", "outcome"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "slipway_step_duration_seconds",
			Help:    "How long each deploy step took (checkout, build 1/2, test 1/1, activate, ...), by environment and step; a fleet's per-target steps without the host.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800},
		}, []string{"repo", "step"}),
		pushesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipway_pushes_refused_total",
			Help: "Pushes that did not deploy, by reason: refused (no such environment, not allowed, bad ref), busy, stale, rejected (the deploy failed), disconnected, ...",
		}, []string{"reason"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipway_ssh_connections_total",
			Help: "SSH connections by state: authenticated, or why they were refused before that.",
		}, []string{"state"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipway_ssh_sessions_total",
			Help: "SSH sessions that ended, by service (receive-pack, upload-pack, command) and outcome.",
		}, []string{"service", "outcome"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "slipway_notification_deliveries_total",
			Help: "Notification delivery attempts by event and result: delivered, retry (will be tried again), given_up.",
		}, []string{"event", "result"}),
	}
	m.reg.MustRegister(m.deploys, m.deployDuration, m.stepDuration, m.pushesRefused, m.connections, m.sessions, m.deliveries,
		&stateCollector{states: states},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in Prometheus' text format (or OpenMetrics, if asked).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second})
}

// Step is one step of a finished deploy.
type Step struct {
	Name string
	Took time.Duration
}

// DeployFinished records a deploy that ended.
func (m *Metrics) DeployFinished(repo, kind, outcome string, took time.Duration, steps []Step) {
	if m == nil {
		return
	}
	m.deploys.WithLabelValues(repo, kind, outcome).Inc()
	m.deployDuration.WithLabelValues(repo, outcome).Observe(took.Seconds())
	for _, s := range steps {
		m.stepDuration.WithLabelValues(repo, stepLabel(s.Name)).Observe(s.Took.Seconds())
	}
}

// hostPrefix is the target a fleet's per-target step names begin with
// ("deploy@web1:2200 after_activate 1/1").
var hostPrefix = regexp.MustCompile(`^[^ @]+@[^ ]+ `)

// stepLabel is a step's name without the target a fleet's step begins with: one series
// per step, not one per step and host.
func stepLabel(name string) string { return hostPrefix.ReplaceAllString(name, "") }

// Connection records an SSH connection's state: "authenticated", or why it was refused.
func (m *Metrics) Connection(state string) {
	if m == nil {
		return
	}
	m.connections.WithLabelValues(state).Inc()
}

// Session records an SSH session that ended: its service ("" if refused before one) and
// outcome. A receive-pack that did not deploy (and was not up to date) is a refused push.
func (m *Metrics) Session(service, outcome string) {
	if m == nil {
		return
	}
	if service == "" {
		service = "none"
	}
	m.sessions.WithLabelValues(service, outcome).Inc()
	if service == "receive-pack" && outcome != "deployed" && outcome != "up-to-date" {
		m.pushesRefused.WithLabelValues(outcome).Inc()
	}
}

// Delivery records a notification delivery attempt: "delivered", "retry" or "given_up".
func (m *Metrics) Delivery(event, result string) {
	if m == nil {
		return
	}
	m.deliveries.WithLabelValues(event, result).Inc()
}

// stateCollector asks for the environments' state at each scrape.
type stateCollector struct {
	states func() []EnvState
}

var (
	liveAge = prometheus.NewDesc("slipway_live_release_age_seconds",
		"Time since the environment's live release went live; absent while it has none.", []string{"repo"}, nil)
	deploying = prometheus.NewDesc("slipway_environment_deploying",
		"1 while a deploy, rollback or redeploy holds the environment's lock.", []string{"repo"}, nil)
	frozen = prometheus.NewDesc("slipway_environment_frozen",
		"1 while the environment is frozen (lock -m MESSAGE): pushes and redeploys are refused.", []string{"repo"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- liveAge
	ch <- deploying
	ch <- frozen
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.states == nil {
		return
	}
	now := time.Now()
	for _, s := range c.states() {
		if !s.LiveSince.IsZero() {
			ch <- prometheus.MustNewConstMetric(liveAge, prometheus.GaugeValue, now.Sub(s.LiveSince).Seconds(), s.Repo)
		}
		ch <- prometheus.MustNewConstMetric(deploying, prometheus.GaugeValue, bool01(s.Deploying), s.Repo)
		ch <- prometheus.MustNewConstMetric(frozen, prometheus.GaugeValue, bool01(s.Frozen), s.Repo)
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
