package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/hooks"
	"github.com/slipway/slipway/internal/atomicfile"
	"github.com/slipway/slipway/internal/metrics"
	"github.com/slipway/slipway/internal/web"
	"github.com/slipway/slipway/releaser"
)

// httpServer is one of slipway's HTTP listeners (the dashboard, the metrics), with the
// bounds every one of them has: a client must send its headers within 10 s, and an idle
// connection is closed after 2 minutes.
type httpServer struct {
	name string
	addr string // what it listens on
	srv  *http.Server
	done chan struct{}
}

// startHTTP listens on addr, writes the address it got into dataDir/addrName (for scripts
// and tests on port 0), and serves h until stop.
func startHTTP(name, addr string, h http.Handler, dataDir, addrName string, log zerolog.Logger) (*httpServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	got := l.Addr().String()
	if err := atomicfile.WriteFile(filepath.Join(dataDir, addrName), []byte(got+"\n"), 0o644); err != nil {
		l.Close() // the address file error is the one to report
		return nil, fmt.Errorf("%s: write address file: %w", name, err)
	}
	s := &httpServer{name: name, addr: got, done: make(chan struct{}), srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Str("listener", name).Msg("http server stopped")
		}
	}()
	log.Info().Str("addr", got).Str("listener", name).Msg("listening")
	return s, nil
}

// stop closes the listener and every connection (a dashboard's live logs never end by
// themselves), and waits for the server to return.
func (s *httpServer) stop() {
	if s == nil {
		return
	}
	s.srv.Close()
	<-s.done
}

// startMetrics serves /metrics on cfg's metrics_listen, if set.
func startMetrics(addr, dataDir string, m *metrics.Metrics, log zerolog.Logger) (*httpServer, error) {
	if addr == "" {
		return nil, nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	return startHTTP("metrics", addr, mux, dataDir, "metrics.addr", log)
}

// envStates are the pipeline's environments as the metrics take them.
func envStates(p *hooks.Pipeline) []metrics.EnvState {
	list, err := p.Status(hooks.Caller{})
	if err != nil {
		return nil
	}
	out := make([]metrics.EnvState, 0, len(list))
	for _, s := range list {
		out = append(out, metrics.EnvState{Repo: s.Repo, LiveSince: s.LiveSince, Deploying: s.Holder != "", Frozen: s.Frozen != nil})
	}
	return out
}

// deployMetrics tells the metrics of every deploy that ends.
type deployMetrics struct{ m *metrics.Metrics }

func (d deployMetrics) DeployFinished(e releaser.Entry) {
	steps := make([]metrics.Step, 0, len(e.Steps))
	for _, s := range e.Steps {
		steps = append(steps, metrics.Step{Name: s.Name, Took: s.Took})
	}
	d.m.DeployFinished(e.Repo, e.Kind, e.Outcome, e.End.Sub(e.Start), steps)
}

// dashboard is the dashboard and its listener.
type dashboard struct {
	http *httpServer
	web  *web.Server
	once sync.Once
}

// startWeb serves the dashboard on web_listen, if set (nil if not), and gives the
// pipeline's web-login its login URLs.
func startWeb(cfg *configs.Server, p *hooks.Pipeline, srv *gitserver.Server, log zerolog.Logger) (*dashboard, error) {
	if cfg.Web.Listen == "" {
		return nil, nil
	}
	wcfg := web.Config{URL: cfg.Web.URL, SessionTTL: cfg.Web.SessionTTL, SecureCookies: cfg.Web.SecureCookies}
	w := web.New(context.Background(), wcfg, webBackend{p: p, srv: srv}, log)
	h, err := startHTTP("web", cfg.Web.Listen, w.Handler(), cfg.DataDir, "web.addr", log)
	if err != nil {
		return nil, err
	}
	if wcfg.URL == "" {
		w.SetURL("http://" + h.addr)
	}
	p.SetWebLogin(func(c hooks.Caller) (string, error) { return w.Login(web.Identity(c)) })
	return &dashboard{http: h, web: w}, nil
}

// shutdown stops serving pages (and live logs), then lets the rollbacks and redeploys
// started from them finish until ctx ends, as the git server does with pushes.
func (d *dashboard) shutdown(ctx context.Context) {
	if d == nil {
		return
	}
	d.once.Do(func() {
		d.http.stop()
		d.web.Shutdown(ctx)
	})
}

// webBackend is the pipeline and the keys as the dashboard takes them.
type webBackend struct {
	p   *hooks.Pipeline
	srv *gitserver.Server
}

func (b webBackend) RunCommand(ctx context.Context, who web.Identity, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return b.p.RunCommand(ctx, hooks.Caller(who), args, stdin, stdout, stderr)
}

func (b webBackend) Identify(fp string) (web.Identity, bool) {
	id, ok := b.srv.Identify(fp)
	return web.Identity(id), ok
}
