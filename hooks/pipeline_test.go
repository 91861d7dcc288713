package hooks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/slipway/slipway/configs"
	"github.com/slipway/slipway/releaser"
)

const repo = "myapp/production"

// TestDeployOrder runs a push through every phase and checks their order: the commands in
// the order the recipe lists them, the swap after the tests and before after_activate,
// each step in the pusher's output with a header, and the journal.
func TestDeployOrder(t *testing.T) {
	dir := t.TempDir()
	trace := traceFile(t, dir)
	e := env(dir, repo)
	e.Vars = []string{"TRACE=" + trace}
	e.Writable = []string{filepath.Dir(trace)} // builds are confined: the trace is outside
	e.Recipe = configs.Recipe{
		Build:         []string{"echo build1 >> $TRACE", "echo build2 >> $TRACE"},
		Test:          []string{`echo "test current=$(readlink $SLIPWAY_DEPLOY_PATH/current)" >> $TRACE`},
		AfterActivate: []string{`echo "after current=$(readlink $SLIPWAY_DEPLOY_PATH/current)" >> $TRACE`},
	}
	f := newFixture(t, e)
	sha := commit(t, f.repos.store(t, repo), map[string]string{"index.html": "hello\n"})

	out, err := f.push(t.Context(), repo, sha)
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(trace)
	want := "build1\nbuild2\ntest current=\nafter current=releases/" + sha + "\n"
	if string(got) != want {
		t.Errorf("commands ran as\n%s\nwant\n%s", got, want)
	}
	assertInOrder(t, out, "-----> deploying "+sha[:7], "-----> checkout", "-----> build 1/2:", "build 1/2 ok",
		"-----> build 2/2:", "-----> test 1/1:", "-----> live: current -> releases/"+sha, "-----> after_activate 1/1:",
		"-----> "+sha[:7]+" is live")

	hist, err := f.rel(repo).History(1)
	if err != nil || len(hist) != 1 {
		t.Fatalf("history = %v, %v", hist, err)
	}
	h := hist[0]
	if h.Outcome != releaser.OutcomeLive || h.Kind != kindPush || h.SHA != sha || h.Pusher != "alice" {
		t.Errorf("journal entry %+v", h)
	}
	var steps []string
	for _, s := range h.Steps {
		steps = append(steps, s.Name)
	}
	if strings.Join(steps, ",") != "checkout,build 1/2,build 2/2,test 1/1,activate,after_activate 1/1" {
		t.Errorf("journal steps %q", steps)
	}
}

// TestDeployFailureLeavesNothing checks what each failure before the swap leaves behind: no
// release, current and shared/ as they were, and a journal entry saying why.
func TestDeployFailureLeavesNothing(t *testing.T) {
	for _, tt := range []struct {
		name      string
		recipe    configs.Recipe
		wantErr   string
		wantSteps string
	}{
		{"build fails", configs.Recipe{Build: []string{"echo partial > $SLIPWAY_RELEASE_DIR/built; exit 2"}},
			"build 1/1: exit status 2", "checkout,build 1/1"},
		{"test fails", configs.Recipe{Build: []string{"true"}, Test: []string{"true", "exit 3"}},
			"test 2/2: exit status 3", "checkout,build 1/1,test 1/2,test 2/2"},
		{"command not found", configs.Recipe{Build: []string{"no-such-command-anywhere"}},
			"build 1/1: exit status 127 (command not found)", "checkout,build 1/1"},
		{"shared file missing", configs.Recipe{SharedFiles: []string{".env"}},
			"shared file", "checkout,link shared"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			f := newFixture(t, env(dir, repo))
			st := f.repos.store(t, repo)
			first := commit(t, st, map[string]string{"index.html": "one\n"})
			if out, err := f.push(t.Context(), repo, first); err != nil {
				t.Fatalf("first deploy: %v\n%s", err, out)
			}
			e := f.p.envs[repo]
			e.cfg.Recipe = tt.recipe
			second := commit(t, st, map[string]string{"index.html": "two\n"})
			out, err := f.push(t.Context(), repo, second)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("deploy error = %v, want %q\n%s", err, tt.wantErr, out)
			}
			if _, err := os.Lstat(filepath.Join(e.cfg.Path, "releases", second)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the failed release is still there (%v)", err)
			}
			if live := f.live(repo); live != first {
				t.Errorf("current = %s, want the first release %s", live, first)
			}
			if entries, _ := os.ReadDir(filepath.Join(e.cfg.Path, "shared")); len(entries) != 0 {
				t.Errorf("shared/ holds %d entries after a failed deploy", len(entries))
			}
			hist, _ := f.rel(repo).History(1)
			h := hist[0]
			var steps []string
			for _, s := range h.Steps {
				steps = append(steps, s.Name)
			}
			if h.Outcome != releaser.OutcomeFailed || !strings.Contains(h.Reason, tt.wantErr) || strings.Join(steps, ",") != tt.wantSteps {
				t.Errorf("journal: outcome %s, reason %q, steps %q; want failed, %q, %s", h.Outcome, h.Reason, steps, tt.wantErr, tt.wantSteps)
			}
		})
	}
}

// TestDeployCancelled: a requester that goes away during the build cancels the deploy:
// its processes end, the release goes, the journal says cancelled.
func TestDeployCancelled(t *testing.T) {
	dir := t.TempDir()
	e := env(dir, repo)
	e.Recipe = configs.Recipe{Build: []string{"echo started; sleep 60"}}
	f := newFixture(t, e)
	sha := commit(t, f.repos.store(t, repo), map[string]string{"index.html": "hello\n"})

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, release, err := f.p.Reserve(ctx, repo, "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	st, _ := f.repos.Objects(repo)
	defer st.Close()
	w := &watcher{want: "started", seen: cancel}
	err = f.p.Deploy(ctx, Push{Repo: repo, Branch: "main", NewSHA: sha, Pusher: "alice", Objects: st}, w)
	if !errors.Is(err, errCancelled) {
		t.Fatalf("deploy error = %v, want errCancelled", err)
	}
	if _, err := os.Lstat(filepath.Join(e.Path, "releases", sha)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cancelled release is still there (%v)", err)
	}
	if live := f.live(repo); live != "" {
		t.Errorf("current = %q after a cancelled first deploy", live)
	}
	hist, _ := f.rel(repo).History(1)
	if hist[0].Outcome != releaser.OutcomeCancelled {
		t.Errorf("journal outcome %s, want cancelled", hist[0].Outcome)
	}
}

// TestCancelledCause: a deploy cancelled with a cause (the server shutting down) says it.
func TestCancelledCause(t *testing.T) {
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(errors.New("the server is shutting down"))
	if got := cancelled(ctx).Error(); got != "cancelled: the server is shutting down" {
		t.Errorf("cancelled = %q", got)
	}
	ctx, cancel2 := context.WithCancel(t.Context())
	cancel2()
	if got := cancelled(ctx); !errors.Is(got, errCancelled) {
		t.Errorf("cancelled = %v, want errCancelled", got)
	}
}

// TestPushKeptReleaseNoRebuild: pushing a commit whose release is kept activates it
// without running a build.
func TestPushKeptReleaseNoRebuild(t *testing.T) {
	dir := t.TempDir()
	trace := traceFile(t, dir)
	e := env(dir, repo)
	e.Vars = []string{"TRACE=" + trace}
	e.Writable = []string{filepath.Dir(trace)} // builds are confined: the trace is outside
	e.Recipe = configs.Recipe{Build: []string{"echo build $SLIPWAY_SHA >> $TRACE"}}
	f := newFixture(t, e)
	st := f.repos.store(t, repo)
	one := commit(t, st, map[string]string{"f": "1"})
	two := commit(t, st, map[string]string{"f": "2"})
	for _, sha := range []string{one, two} {
		if out, err := f.push(t.Context(), repo, sha); err != nil {
			t.Fatalf("deploy %s: %v\n%s", sha, err, out)
		}
	}
	out, err := f.push(t.Context(), repo, one)
	if err != nil {
		t.Fatalf("push of the kept release: %v\n%s", err, out)
	}
	if !strings.Contains(out, "is kept: activating it without a rebuild") || f.live(repo) != one {
		t.Errorf("kept release not reactivated: live %s\n%s", f.live(repo), out)
	}
	got, _ := os.ReadFile(trace)
	if strings.Count(string(got), "build ") != 2 {
		t.Errorf("builds ran:\n%s\nwant two (none for the kept release)", got)
	}
}

// TestPushedRecipeProblems: every problem of a pushed slipway.toml reaches the pusher, and
// the rejection says how many there are.
func TestPushedRecipeProblems(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, env(dir, repo))
	sha := commit(t, f.repos.store(t, repo), map[string]string{"slipway.toml": "buidl = [\"make\"]\ntest = \"x\"\n"})
	out, err := f.push(t.Context(), repo, sha)
	want := `slipway.toml:1: unknown key "buidl" (2 problems in all, listed above)`
	if err == nil || err.Error() != want {
		t.Fatalf("deploy error = %v, want %q", err, want)
	}
	assertInOrder(t, out, `slipway.toml:1: unknown key "buidl"`, "slipway.toml:2: test must be a list of strings")
	if f.live(repo) != "" {
		t.Error("a release went live")
	}
}

// assertInOrder checks that each of want appears in out, after the one before it.
func assertInOrder(t *testing.T, out string, want ...string) {
	t.Helper()
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q after the previous step:\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
}

// watcher is a requester's connection: it calls seen once the output holds want.
type watcher struct {
	mu   sync.Mutex
	buf  strings.Builder
	want string
	seen func()
	done bool
}

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if !w.done && strings.Contains(w.buf.String(), w.want) {
		w.done = true
		w.seen()
	}
	return len(p), nil
}

// TestCorruptStateStaysInItsEnvironment: a damaged state file in one environment does not
// stop the server or the others; that one is refused with what is wrong and how to mend it,
// and serves again once it is mended.
func TestCorruptStateStaysInItsEnvironment(t *testing.T) {
	dir := t.TempDir()
	const other = "myapp/staging"
	f := newFixture(t, env(dir, repo), env(dir, other))
	for _, r := range []string{repo, other} {
		sha := commit(t, f.repos.store(t, r), map[string]string{"f": r})
		if out, err := f.push(t.Context(), r, sha); err != nil {
			t.Fatalf("deploy %s: %v\n%s", r, err, out)
		}
	}
	records := filepath.Join(dir, "deploy", "myapp", "production", ".slipway", "releases.json")
	good, err := os.ReadFile(records)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(records, good[:len(good)/2], 0o644); err != nil {
		t.Fatal(err)
	}

	f.open() // a restart: it must not fail
	const damaged = ".slipway/releases.json is damaged"
	stdout, _, code := f.command(Caller{}, "status")
	if code != 0 || !strings.Contains(stdout, "myapp/production is unavailable: "+damaged) || !strings.Contains(stdout, other) {
		t.Errorf("status (exit %d):\n%s", code, stdout)
	}
	if strings.Contains(stdout, dir) {
		t.Errorf("status shows a server path:\n%s", stdout)
	}
	if _, _, err := f.p.Reserve(t.Context(), repo, "alice", 0); err == nil || !strings.Contains(err.Error(), damaged) {
		t.Errorf("push to the damaged environment: %v", err)
	}
	sha := commit(t, f.repos.store(t, other), map[string]string{"f": "2"})
	if out, err := f.push(t.Context(), other, sha); err != nil {
		t.Errorf("the other environment does not deploy: %v\n%s", err, out)
	}

	if err := os.WriteFile(records, good, 0o644); err != nil { // the operator restores it
		t.Fatal(err)
	}
	sha = commit(t, f.repos.store(t, repo), map[string]string{"f": "3"})
	if out, err := f.push(t.Context(), repo, sha); err != nil {
		t.Errorf("the mended environment does not deploy: %v\n%s", err, out)
	}
}

// traceFile returns the path of a trace file the commands append to, in a directory of its
// own under dir that the test makes.
func traceFile(t *testing.T, dir string) string {
	t.Helper()
	d := filepath.Join(dir, "traces")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(d, "trace")
}
