package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// loadResult is what the load generator saw while current was being swapped.
type loadResult struct {
	tool        string // "wrk" or "go client"
	requests    int64
	non2xx      int64 // wrk's "Non-2xx or 3xx responses"
	sockErrors  int64 // wrk's "Socket errors" (connect + read + write + timeout)
	seconds     float64
	activations int
	loop        time.Duration // the activations' wall time
	pushMS      []float64     // each activation's push time (ms)
}

const nginxConfig = `%sworker_processes 2;
pid %s;
error_log %s warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  default_type text/html;
  client_body_temp_path %s;
  proxy_temp_path %s;
  fastcgi_temp_path %s;
  uwsgi_temp_path %s;
  scgi_temp_path %s;
%s}
`

// nginx serves <deploy>/current/public with the symlink resolved per request
// ($realpath_root), as the README tells operators to.
const nginxServer = `  server {
    listen 127.0.0.1:%d;
    root %s/current/public;
    disable_symlinks off;
    location / {
      index index.html;
      add_header X-Release-Root $realpath_root always;
    }
  }
`

// zeroDowntime is figure 8: nginx serves current/public while a loop makes -activations
// activations, alternating pushes of a new commit and rollbacks to the previous (kept)
// release, first against slipway and then against the OpenSSH baseline; a load generator
// counts the failed requests.
func (b *bench) zeroDowntime(ctx context.Context, w *workload, dir string) error {
	nginxBin, err := lookPath("nginx")
	if err != nil {
		b.note("Figure 8 skipped: nginx is not installed.")
		return nil
	}
	wrkBin, _ := lookPath("wrk")

	deploys := map[string]target{}
	slip := target{url: b.slip.url("bench/zd"), deploy: filepath.Join(dir, "slipway", "deploy", "zd"), repo: b.slip.repoDir("bench/zd")}
	deploys[srvSlipway] = slip
	ssh, err := b.target(ctx, srvSSH, dir, "zd")
	if err != nil {
		return err
	}
	deploys[srvSSH] = ssh
	order := []string{srvSlipway, srvSSH}
	for _, srv := range order {
		t := deploys[srv]
		if _, err := timedPush(ctx, b.env, w.repo, t.url, w.zd[0], false, filepath.Join(t.deploy, "current")); err != nil {
			return fmt.Errorf("%s: first push: %w", srv, err)
		}
	}

	ndir := filepath.Join(dir, "nginx")
	if err := os.MkdirAll(ndir, 0o755); err != nil {
		return err
	}
	ports := map[string]int{}
	var servers strings.Builder
	for _, srv := range order {
		if ports[srv], err = freePort(); err != nil {
			return err
		}
		fmt.Fprintf(&servers, nginxServer, ports[srv], deploys[srv].deploy)
	}
	userLine := ""
	if os.Geteuid() == 0 {
		userLine = "user root;\n"
	}
	conf := filepath.Join(ndir, "nginx.conf")
	cfg := fmt.Sprintf(nginxConfig, userLine, filepath.Join(ndir, "nginx.pid"), filepath.Join(ndir, "error.log"),
		filepath.Join(ndir, "client_body"), filepath.Join(ndir, "proxy"), filepath.Join(ndir, "fastcgi"),
		filepath.Join(ndir, "uwsgi"), filepath.Join(ndir, "scgi"), servers.String())
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(ndir, "nginx.out"))
	if err != nil {
		return err
	}
	defer logf.Close()
	// nginx and wrk run at low priority (nice 10, in a low autogroup): on 2 cores they would
	// otherwise take every cycle and starve the deploys (the figure counts failed requests,
	// not requests per second).
	cmd := command(context.WithoutCancel(ctx), nil, ndir, "nice", "-n", "10", nginxBin, "-p", ndir, "-e", filepath.Join(ndir, "error.log"), "-c", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	background(cmd)
	ng, err := b.procs.start("nginx", cmd)
	if err != nil {
		return err
	}
	lowerAutogroup(ng.cmd.Process.Pid)
	defer func() {
		ng.stop(syscall.SIGQUIT, 5*time.Second)
		b.procs.remove(ng)
	}()
	for _, srv := range order {
		if err := waitPort(ctx, ports[srv], ng, 15*time.Second); err != nil {
			out, _ := os.ReadFile(filepath.Join(ndir, "error.log"))
			return fmt.Errorf("nginx: %w: %s", err, tail(string(out), 1000))
		}
		if err := checkServed(ports[srv], "release zd000"); err != nil {
			return fmt.Errorf("nginx for %s: %w", srv, err)
		}
	}

	b.fig8 = map[string]*loadResult{}
	for _, srv := range order {
		t := deploys[srv]
		url := fmt.Sprintf("http://127.0.0.1:%d/", ports[srv])
		b.logf("zero downtime: %s: %d activations under load", srv, b.opts.activations)
		var res *loadResult
		loop := func() (int, time.Duration, []float64, error) { return b.activationLoop(ctx, w, t) }
		if wrkBin != "" {
			res, err = b.withWrk(ctx, wrkBin, url, ndir, loop)
		} else {
			res, err = withGoClient(ctx, url, loop)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", srv, err)
		}
		b.fig8[srv] = res
	}
	if wrkBin == "" {
		b.note("Figure 8 used the Go load client: wrk is not installed.")
	}
	return nil
}

// zdLimit bounds one server's activation loop.
const zdLimit = 8 * time.Minute

// activationLoop alternates pushes of the next commit and rollbacks to the previous one.
func (b *bench) activationLoop(ctx context.Context, w *workload, t target) (int, time.Duration, []float64, error) {
	current := filepath.Join(t.deploy, "current")
	var ms []float64
	start := time.Now()
	for i := 0; i < b.opts.activations; i++ {
		if time.Since(start) > zdLimit {
			b.note("Figure 8: %s made %d of %d activations within %s and stopped there.", t.url, i, b.opts.activations, zdLimit)
			return i, time.Since(start), ms, nil
		}
		sha, force := w.zd[i/2+1], false
		if i%2 == 1 {
			sha, force = w.zd[(i-1)/2], true
		}
		res, err := timedPush(ctx, b.env, w.repo, t.url, sha, force, current)
		if err != nil {
			return i, time.Since(start), ms, fmt.Errorf("activation %d: %w", i+1, err)
		}
		ms = append(ms, float64(res.Live)/float64(time.Millisecond))
	}
	return b.opts.activations, time.Since(start), ms, nil
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(m?s|m|h)`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// withWrk runs wrk against url for as long as loop runs (wrk stops at SIGINT and prints
// its totals), and parses its counts.
func (b *bench) withWrk(ctx context.Context, wrkBin, url, dir string, loop func() (int, time.Duration, []float64, error)) (*loadResult, error) {
	outPath := filepath.Join(dir, "wrk.out")
	outf, err := os.Create(outPath)
	if err != nil {
		return nil, err
	}
	defer outf.Close()
	cmd := command(context.WithoutCancel(ctx), nil, dir, "nice", "-n", "10", wrkBin, "-t2", "-c32", "-d900s", "--timeout", "5s", url)
	cmd.Stdout, cmd.Stderr = outf, outf
	background(cmd)
	wp, err := b.procs.start("wrk", cmd)
	if err != nil {
		return nil, err
	}
	lowerAutogroup(wp.cmd.Process.Pid)
	defer b.procs.remove(wp)
	time.Sleep(500 * time.Millisecond)
	n, took, ms, lerr := loop()
	time.Sleep(500 * time.Millisecond)
	wp.stop(syscall.SIGINT, 10*time.Second)
	if lerr != nil {
		return nil, lerr
	}
	out, _ := os.ReadFile(outPath)
	res, err := parseWrk(string(out))
	if err != nil {
		return nil, err
	}
	res.activations, res.loop, res.pushMS = n, took, ms
	return res, nil
}

// parseWrk reads wrk's totals: requests and duration, socket errors (all four kinds) and
// responses that were not 2xx or 3xx. wrk prints the last two lines only when not zero.
func parseWrk(out string) (*loadResult, error) {
	res := &loadResult{tool: "wrk"}
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("cannot parse wrk's output: %s", tail(out, 1000))
	}
	res.requests, _ = strconv.ParseInt(m[1], 10, 64)
	res.seconds = wrkDuration(m[2], m[3])
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			v, _ := strconv.ParseInt(s, 10, 64)
			res.sockErrors += v
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		res.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return res, nil
}

func wrkDuration(v, unit string) float64 {
	f, _ := strconv.ParseFloat(v, 64)
	switch unit {
	case "ms":
		return f / 1000
	case "m":
		return f * 60
	case "h":
		return f * 3600
	}
	return f
}

// withGoClient is the fallback load generator when wrk is missing: 32 keep-alive clients,
// counting responses that are not 2xx/3xx and transport errors, like wrk.
func withGoClient(ctx context.Context, url string, loop func() (int, time.Duration, []float64, error)) (*loadResult, error) {
	var reqs, bad, errs atomic.Int64
	lctx, cancel := context.WithCancel(ctx)
	tr := &http.Transport{MaxIdleConnsPerHost: 32}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				req, _ := http.NewRequestWithContext(lctx, http.MethodGet, url, nil)
				resp, err := client.Do(req)
				if lctx.Err() != nil {
					return
				}
				reqs.Add(1)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 400 {
					bad.Add(1)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	n, took, ms, lerr := loop()
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	tr.CloseIdleConnections()
	if lerr != nil {
		return nil, lerr
	}
	return &loadResult{tool: "go client", requests: reqs.Load(), non2xx: bad.Load(), sockErrors: errs.Load(),
		seconds: time.Since(start).Seconds(), activations: n, loop: took, pushMS: ms}, nil
}

// checkServed fetches / once and checks the page.
func checkServed(port int, want string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET / = %d %q, want 200 with %q", resp.StatusCode, tail(string(body), 200), want)
	}
	return nil
}
