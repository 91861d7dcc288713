package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// These tests cover the harness's own logic; the benchmark itself runs with
// `go run ./cmd/slipway-bench` (make bench), never from go test.

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 15m test @ http://127.0.0.1:40000/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms    2.01ms  40.00ms   90.00%
    Req/Sec    10.00k     1.00k   12.00k    70.00%
  697223 requests in 36.52s, 200.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 17
Requests/sec:  19091.00
Transfer/sec:      5.48MB
`
	res, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if res.requests != 697223 || res.sockErrors != 10 || res.non2xx != 17 || res.seconds != 36.52 {
		t.Errorf("parseWrk = %+v", res)
	}
	clean, err := parseWrk("  100 requests in 1.50m, 1.00MB read\n")
	if err != nil || clean.sockErrors != 0 || clean.non2xx != 0 || clean.seconds != 90 {
		t.Errorf("parseWrk(no errors) = %+v, %v", clean, err)
	}
	if _, err := parseWrk("wrk: connection refused"); err == nil {
		t.Error("parseWrk accepted output without totals")
	}
}

func TestHookScriptParses(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatalf("the hook is a bash script: %v", err)
	}
	script := fmt.Sprintf(hookScript, "/srv/deploy", keepReleases, buildCommand)
	f := filepath.Join(t.TempDir(), "pre-receive")
	if err := os.WriteFile(f, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", f).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v: %s\n%s", err, out, script)
	}
}

func TestReleaseDiskCountsHardlinksOnce(t *testing.T) {
	dir := t.TempDir()
	oldDir, newDir := filepath.Join(dir, "old"), filepath.Join(dir, "new")
	for _, d := range []string{oldDir, newDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 64<<10)
	if err := os.WriteFile(filepath.Join(oldDir, "shared.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(oldDir, "shared.bin"), filepath.Join(newDir, "shared.bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(newDir, "own.txt"), []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	added, full, err := releaseDisk(newDir, oldDir)
	if err != nil {
		t.Fatal(err)
	}
	if full < 64<<10 {
		t.Errorf("full = %d, want at least the 64 KiB file", full)
	}
	if added >= 64<<10 {
		t.Errorf("added = %d: the hardlinked file was counted", added)
	}
	if added == 0 {
		t.Error("added = 0: the new file and directory were not counted")
	}
}
