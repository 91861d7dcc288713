package main

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rogpeppe/go-internal/testscript"

	dto "github.com/prometheus/client_model/go"
)

// metric ADDR NAME [LABEL=VALUE,...] [OP N]: scrape http://ADDR/metrics, parse it with
// Prometheus' own text parser, and find the one sample of NAME whose labels include those
// given (NAME_count and NAME_sum are a histogram's). With OP (==, >=, >) its value must
// compare so; without, it must exist. Negated: no such sample.
func cmdMetric(ts *testscript.TestScript, neg bool, args []string) {
	if msg := checkMetric(ts, neg, args); msg != "" {
		ts.Fatalf("%s", msg)
	}
}

// waitmetric ADDR NAME [LABEL=VALUE,...] [OP N]: wait until metric would pass: for what
// is counted in the background (a connection's end, a notification's delivery).
func cmdWaitMetric(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("waitmetric cannot be negated")
	}
	deadline := time.Now().Add(waitFor)
	for {
		msg := checkMetric(ts, false, args)
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitmetric: after %s: %s", waitFor, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkMetric is metric's check: "" if it passes, else why not.
func checkMetric(ts *testscript.TestScript, neg bool, args []string) string {
	if len(args) < 2 || len(args) > 5 {
		ts.Fatalf("usage: metric ADDR NAME [LABEL=VALUE,...] [OP N]")
	}
	addr, name := args[0], args[1]
	var labels, op, want string
	switch len(args) {
	case 3:
		labels = args[2]
	case 4:
		op, want = args[2], args[3]
	case 5:
		labels, op, want = args[2], args[3], args[4]
	}
	fams := scrape(ts, addr)
	value, found := sample(fams, name, labels)
	if neg {
		if found {
			return fmt.Sprintf("metric %s{%s} = %v; want none", name, labels, value)
		}
		return ""
	}
	if !found {
		return fmt.Sprintf("metric %s{%s}: no such sample", name, labels)
	}
	if op == "" {
		return ""
	}
	n, err := strconv.ParseFloat(want, 64)
	ts.Check(err)
	ok, known := map[string]bool{"==": value == n, ">=": value >= n, ">": value > n}[op]
	if !known {
		ts.Fatalf("metric: unknown comparison %q", op)
	}
	if !ok {
		return fmt.Sprintf("metric %s{%s} = %v; want %s %v", name, labels, value, op, n)
	}
	return ""
}

// scrape fetches and parses http://addr/metrics.
func scrape(ts *testscript.TestScript, addr string) map[string]*dto.MetricFamily {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	ts.Check(err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	ts.Check(err)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		ts.Fatalf("GET /metrics: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		ts.Fatalf("parse /metrics: %v\n%s", err, b)
	}
	return fams
}

// sample is the value of the one sample of name whose labels include want ("k=v,k=v").
func sample(fams map[string]*dto.MetricFamily, name, want string) (float64, bool) {
	family, part := name, ""
	for _, suffix := range []string{"_count", "_sum"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && fams[name] == nil && fams[base] != nil {
			family, part = base, suffix
		}
	}
	f := fams[family]
	if f == nil {
		return 0, false
	}
	var pairs []string
	if want != "" {
		pairs = strings.Split(want, ",")
	}
	for _, m := range f.GetMetric() {
		have := make([]string, 0, len(m.GetLabel()))
		for _, l := range m.GetLabel() {
			have = append(have, l.GetName()+"="+l.GetValue())
		}
		if !containsAll(have, pairs) {
			continue
		}
		switch {
		case part == "_count":
			return float64(m.GetHistogram().GetSampleCount()), true
		case part == "_sum":
			return m.GetHistogram().GetSampleSum(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		default:
			panic(fmt.Sprintf("metric %s: neither counter nor gauge", name))
		}
	}
	return 0, false
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}
