package builder

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const testGrace = 200 * time.Millisecond

var testEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/nonexistent", "LANG=C.UTF-8"}

func newTestBuilder(t *testing.T, cfg Config) *Builder {
	t.Helper()
	if cfg.KillGrace == 0 {
		cfg.KillGrace = testGrace
	}
	return New(cfg, zerolog.New(zerolog.NewTestWriter(t)))
}

// recorder is an io.Writer that keeps each Write as one line. onLine, if set, is called
// with each line as it arrives.
type recorder struct {
	mu     sync.Mutex // guards lines
	lines  []string
	onLine func(string)
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.lines = append(r.lines, string(p))
	r.mu.Unlock()
	if r.onLine != nil {
		r.onLine(string(p))
	}
	return len(p), nil
}

func (r *recorder) Lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lines)
}

// values returns the values of the lines "key=value" in lines.
func values(lines []string, key string) []string {
	var vs []string
	for _, l := range lines {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(l, "\n"), key+"="); ok {
			vs = append(vs, v)
		}
	}
	return vs
}

// carrying returns the pids of the processes whose environment holds the entry kv, read
// from /proc independently of the package's own scanner.
func carrying(t *testing.T, kv string) []int {
	t.Helper()
	return procsWhere(t, func(pid int) bool { return hasEnv(pid, kv) })
}

// procsWhere returns the pids of the server's /proc (every namespace's processes show
// there) for which match is true.
func procsWhere(t *testing.T, match func(pid int) bool) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && match(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// hasEnv reports whether process pid exists and its environment holds the entry kv.
func hasEnv(pid int, kv string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	return err == nil && slices.Contains(strings.Split(string(b), "\x00"), kv)
}

func TestRunOutput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		run  string
		want []string
	}{
		{"stdout and stderr in order", "echo 1; echo 2 >&2; echo 3; echo 4 >&2", []string{"1\n", "2\n", "3\n", "4\n"}},
		{"last line without newline", "echo a; printf b", []string{"a\n", "b\n"}},
		{"empty lines kept", "echo; echo x; echo", []string{"\n", "x\n", "\n"}},
		{"no output", "true", nil},
		{"stdin is empty", "cat; echo done", []string{"done\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBuilder(t, Config{})
			var out recorder
			err := b.Run(t.Context(), Command{Name: "build 1/1", Run: tt.run, Dir: t.TempDir(), Env: testEnv}, &out)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := out.Lines(); !slices.Equal(got, tt.want) {
				t.Errorf("lines = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRunExit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		run     string
		code    int
		signal  string
		message string
	}{
		{"success", "true", 0, "", ""},
		{"false", "false", 1, "", "build 1/2: exit status 1"},
		{"exit 3", "echo out; exit 3", 3, "", "build 1/2: exit status 3"},
		{"not found", "no-such-command-anywhere", 127, "", "build 1/2: exit status 127 (command not found)"},
		{"not executable", ": > script; ./script", 126, "", "build 1/2: exit status 126 (not executable)"},
		{"killed", "kill -KILL $$", -1, "killed", "build 1/2: killed by signal KILL"},
		{"terminated", "kill -TERM $$", -1, "terminated", "build 1/2: killed by signal TERM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBuilder(t, Config{})
			err := b.Run(t.Context(), Command{Name: "build 1/2", Run: tt.run, Dir: t.TempDir(), Env: testEnv}, io.Discard)
			if tt.message == "" {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			var ee *ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("Run = %v, want an *ExitError", err)
			}
			if ee.Code != tt.code || ee.Signal != tt.signal || ee.TimedOut || ee.Canceled {
				t.Errorf("ExitError = %+v, want Code %d Signal %q", ee, tt.code, tt.signal)
			}
			if got := err.Error(); got != tt.message {
				t.Errorf("Error() = %q, want %q", got, tt.message)
			}
		})
	}
}

func TestRunEnvironment(t *testing.T) {
	t.Parallel()
	idRe := regexp.MustCompile(`^SLIPWAY_RUN_ID=[A-Z2-7]{26}\n$`)
	tests := []struct {
		name string
		env  []string
	}{
		{"given", append(slices.Clone(testEnv), "SLIPWAY_REPO=myapp", "SPACED=a b  c", "EMPTY=", "EQ=a=b")},
		{"nil adds nothing of the server's", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newTestBuilder(t, Config{})
			var ids []string
			for range 2 {
				var out recorder
				// The shell's own initial environment, exactly as Run passed it.
				c := Command{Name: "env", Run: `/usr/bin/tr '\0' '\n' </proc/$$/environ`, Dir: t.TempDir(), Env: tt.env}
				if err := b.Run(t.Context(), c, &out); err != nil {
					t.Fatalf("Run: %v", err)
				}
				got := out.Lines()
				if len(got) != len(tt.env)+1 {
					t.Fatalf("environment = %q, want %q plus SLIPWAY_RUN_ID", got, tt.env)
				}
				for i, kv := range tt.env {
					if got[i] != kv+"\n" {
						t.Errorf("entry %d = %q, want %q", i, got[i], kv)
					}
				}
				if last := got[len(got)-1]; !idRe.MatchString(last) {
					t.Errorf("last entry = %q, want SLIPWAY_RUN_ID=<id>", last)
				}
				ids = append(ids, got[len(got)-1])
			}
			if ids[0] == ids[1] {
				t.Errorf("two runs had the same %s", ids[0])
			}
		})
	}
}

func TestRunDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	want, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBuilder(t, Config{})
	var out recorder
	if err := b.Run(t.Context(), Command{Name: "pwd", Run: "pwd -P", Dir: dir, Env: testEnv}, &out); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := out.Lines(); !slices.Equal(got, []string{want + "\n"}) {
		t.Errorf("pwd = %q, want %q", got, want)
	}
}

func TestRunStartFailure(t *testing.T) {
	t.Parallel()
	b := newTestBuilder(t, Config{})
	c := Command{Name: "build 1/1", Run: "true", Dir: filepath.Join(t.TempDir(), "missing"), Env: testEnv}
	err := b.Run(t.Context(), c, io.Discard)
	var ee *ExitError
	if err == nil || errors.As(err, &ee) {
		t.Fatalf("Run = %v, want a start error that is not an *ExitError", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Run = %v, want it to wrap fs.ErrNotExist", err)
	}
}

func TestRunDoneBeforeStart(t *testing.T) {
	t.Parallel()
	b := newTestBuilder(t, Config{})
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name     string
		ctx      context.Context
		timeout  time.Duration
		canceled bool
		timedOut bool
	}{
		{"cancelled", canceled, 0, true, false},
		{"timed out", t.Context(), time.Nanosecond, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Command{Name: "build 1/1", Run: "echo ran", Dir: t.TempDir(), Env: testEnv, Timeout: tt.timeout}
			var out recorder
			err := b.Run(tt.ctx, c, &out)
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Canceled != tt.canceled || ee.TimedOut != tt.timedOut {
				t.Fatalf("Run = %#v, want Canceled %v, TimedOut %v", err, tt.canceled, tt.timedOut)
			}
			if got := out.Lines(); len(got) > 0 {
				t.Errorf("the command ran: %q", got)
			}
		})
	}
}

// escapes starts processes in every way a build can leave them behind: in the background,
// out of the process group (setsid), double-forked, nohup'd, one out of the group that also
// ignores SIGTERM, and one that drops its environment too (env -i). Each sleeps for $NAP
// seconds, a number unique to the test, which finds them by their command line whatever
// namespace they run in; each prints pid=N; the script prints "ready" once all are running
// (the fifo waits for the trap to be set).
const escapes = `
echo id=$SLIPWAY_RUN_ID
sleep $NAP & echo pid=$!
setsid sleep $NAP & echo pid=$!
sh -c 'sleep $NAP & echo pid=$!'
nohup sleep $NAP >/dev/null 2>&1 & echo pid=$!
setsid env -i /bin/sleep $NAP & echo pid=$!
mkfifo trapped
setsid sh -c 'trap "" TERM; echo pid=$$; echo >trapped; exec sleep $NAP' &
read x <trapped
echo ready
`

// napFor returns a NAP for escapes: a day and a number unique to this test process and t.
func napFor(t *testing.T) string {
	napMu.Lock()
	defer napMu.Unlock()
	napSeq++
	return strconv.Itoa(86400 + os.Getpid()%100000*1000 + napSeq)
}

var (
	napMu  sync.Mutex
	napSeq int
)

// sleepers returns the pids of the processes running `sleep nap`.
func sleepers(t *testing.T, nap string) []int {
	t.Helper()
	return procsWhere(t, func(pid int) bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		return err == nil && len(args) == 2 && filepath.Base(args[0]) == "sleep" && args[1] == nap
	})
}

// hang bounds the waits of tests for Run to return: far more than Run needs on any machine,
// far less than the commands' own sleeps, so it tells a Run that waits for them from a slow
// machine without timing Run.
const hang = 2 * time.Minute

// runBounded runs c in the background and returns Run's error, failing the test if Run has
// not returned within hang.
func runBounded(t *testing.T, b *Builder, ctx context.Context, c Command, out io.Writer) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, c, out) }()
	select {
	case err := <-done:
		return err
	case <-time.After(hang):
		t.Fatalf("Run did not return within %v: it waits for a command that sleeps far longer", hang)
		return nil
	}
}

// timeoutOn makes b time its commands out when ready is closed, instead of after their
// Timeout: on a loaded machine a command may take any time to get where a test needs it.
func timeoutOn(b *Builder, ready <-chan struct{}) {
	b.withTimeout = func(ctx context.Context, _ time.Duration) (context.Context, context.CancelFunc) {
		ctx, stop := context.WithCancelCause(ctx)
		go func() {
			select {
			case <-ready:
				stop(errTimedOut)
			case <-ctx.Done(): // Run is over
			}
		}()
		return ctx, func() { stop(context.Canceled) }
	}
}

// leaveCase is a case of TestRunLeavesNothing.
type leaveCase struct {
	name    string
	tail    string        // after the escapes
	at      string        // the line after which the timeout expires or ctx is cancelled; default "ready\n"
	timeout time.Duration // Command.Timeout; it expires at the line at
	cancel  bool          // cancel ctx at the line at
	check   func(t *testing.T, err error)
}

func TestRunLeavesNothing(t *testing.T) {
	t.Parallel()
	tests := []leaveCase{
		{
			name: "timeout", tail: "sleep 100000", timeout: 300 * time.Millisecond,
			check: func(t *testing.T, err error) {
				var ee *ExitError
				if !errors.As(err, &ee) || !ee.TimedOut || ee.Canceled || ee.Timeout != 300*time.Millisecond {
					t.Fatalf("Run = %#v, want a timed out *ExitError", err)
				}
				if want := "build 1/1: timed out after 300ms"; err.Error() != want {
					t.Errorf("Error() = %q, want %q", err.Error(), want)
				}
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Run = %v, want it to wrap context.DeadlineExceeded", err)
				}
			},
		},
		{
			// sleep inherits the ignored SIGTERM: only SIGKILL, after KillGrace, ends it.
			name: "timeout with the shell ignoring SIGTERM", tail: `trap "" TERM; echo trapped; sleep 100000`, at: "trapped\n",
			timeout: 300 * time.Millisecond,
			check: func(t *testing.T, err error) {
				var ee *ExitError
				if !errors.As(err, &ee) || !ee.TimedOut || ee.Signal != "killed" {
					t.Fatalf("Run = %#v, want a timed out *ExitError, killed", err)
				}
			},
		},
		{
			name: "cancel", tail: "sleep 100000", cancel: true,
			check: func(t *testing.T, err error) {
				var ee *ExitError
				if !errors.As(err, &ee) || !ee.Canceled || ee.TimedOut || !errors.Is(err, context.Canceled) {
					t.Fatalf("Run = %#v, want a cancelled *ExitError", err)
				}
				if want := "build 1/1: cancelled"; err.Error() != want {
					t.Errorf("Error() = %q, want %q", err.Error(), want)
				}
			},
		},
		{
			name: "success", tail: "exit 0",
			check: func(t *testing.T, err error) {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			},
		},
		{
			name: "failure", tail: "exit 4",
			check: func(t *testing.T, err error) {
				var ee *ExitError
				if !errors.As(err, &ee) || ee.Code != 4 {
					t.Fatalf("Run = %#v, want exit status 4", err)
				}
			},
		},
	}
	for _, mode := range boxModes(t) {
		for _, tt := range tests {
			t.Run(mode.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				leavesNothing(t, mode, tt)
			})
		}
	}
}

// leavesNothing runs escapes then tt.tail in mode, ends it (the timeout expiring or ctx
// being cancelled at the line tt.at), checks Run's error, and that nothing is left.
func leavesNothing(t *testing.T, mode boxMode, tt leaveCase) {
	b := mode.builder(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ready := make(chan struct{})
	timeoutOn(b, ready)
	at := cmp.Or(tt.at, "ready\n")
	out := &recorder{onLine: func(l string) {
		if l == at {
			close(ready)
			if tt.cancel {
				cancel()
			}
		}
	}}
	nap := napFor(t)
	dir := t.TempDir()
	// Confined, as builds are: the helper must still reach every process of the command.
	c := Command{Name: "build 1/1", Run: escapes + tt.tail, Dir: dir, Env: append(slices.Clone(testEnv), "NAP="+nap), Timeout: tt.timeout,
		Confined: true, Writable: []string{dir}}
	// The commands sleep for a day: Run returns within hang only if the timeout or
	// the cancel, then KillGrace for SIGTERM, then SIGKILL, end them all.
	err := runBounded(t, b, ctx, c, out)
	tt.check(t, err)

	lines := out.Lines()
	ids := values(lines, "id")
	pids := values(lines, "pid")
	if len(ids) != 1 || len(pids) != 6 || !slices.Contains(lines, "ready\n") {
		t.Fatalf("output = %q, want an id and the pids", lines)
	}
	kv := "SLIPWAY_RUN_ID=" + ids[0]
	if left := carrying(t, kv); len(left) > 0 {
		t.Errorf("processes %v still carry %s", left, kv)
	}
	if left := sleepers(t, nap); len(left) > 0 {
		t.Errorf("processes %v still run sleep %s (%d started)", left, nap, len(pids))
	}
}

// The real timer: a command that outlives its Timeout is ended and reported as timed out.
func TestRunTimeout(t *testing.T) {
	t.Parallel()
	b := newTestBuilder(t, Config{})
	c := Command{Name: "test 1/1", Run: "sleep 100000", Dir: t.TempDir(), Env: testEnv, Timeout: 50 * time.Millisecond}
	err := runBounded(t, b, t.Context(), c, io.Discard)
	var ee *ExitError
	if !errors.As(err, &ee) || !ee.TimedOut || ee.Canceled || ee.Timeout != 50*time.Millisecond || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %#v, want a timed out *ExitError", err)
	}
	if want := "test 1/1: timed out after 50ms"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}

// A background child that holds stdout open must not keep Run waiting: it is ended as soon
// as the shell exits, not after KillGrace, confined or not, in either mode. KillGrace is an
// hour here, so a Run that waited for it would not return within hang.
func TestRunBackgroundHoldsStdout(t *testing.T) {
	t.Parallel()
	for _, mode := range boxModes(t) {
		for _, confined := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/confined=%v", mode.name, confined), func(t *testing.T) {
				t.Parallel()
				b := mode.builder(t, Config{KillGrace: time.Hour})
				dir := t.TempDir()
				var out recorder
				c := Command{Name: "build 1/1", Run: "sleep 100000 & echo started", Dir: dir, Env: testEnv, Confined: confined, Writable: []string{dir}}
				if err := runBounded(t, b, t.Context(), c, &out); err != nil {
					t.Fatalf("Run: %v", err)
				}
				if got := out.Lines(); !slices.Equal(got, []string{"started\n"}) {
					t.Errorf("lines = %q", got)
				}
			})
		}
	}
}

// A process that drops its environment and leaves the session, holding the output pipe, is
// ended too, in either mode: by the namespace, or by the subreaper that it was reparented to.
func TestRunEscapeeHoldingStdout(t *testing.T) {
	// The fifo makes the script wait until the escapee runs with its scrubbed environment.
	const escapee = `mkfifo escaped
setsid env -i /bin/sh -c 'echo >escaped; exec /bin/sleep '$NAP &
read x <escaped`
	t.Parallel()
	for _, mode := range boxModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			b := mode.builder(t, Config{})
			nap := napFor(t)
			env := append(slices.Clone(testEnv), "NAP="+nap)
			dir := t.TempDir()
			c := Command{Name: "build 1/1", Run: escapee, Dir: dir, Env: env, Confined: true, Writable: []string{dir}}
			// The escapee sleeps for a day holding the pipe: Run must return long before.
			if err := runBounded(t, b, t.Context(), c, io.Discard); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if left := sleepers(t, nap); len(left) > 0 {
				t.Errorf("the escapee %v still runs", left)
			}
		})
	}
}

// counter counts what a command wrote, keeping none of it.
type counter struct {
	writes, bytes, longest int
	unended                int // writes that do not end in "\n"
}

func (c *counter) Write(p []byte) (int, error) {
	c.writes++
	c.bytes += len(p)
	c.longest = max(c.longest, len(p))
	if len(p) == 0 || p[len(p)-1] != '\n' {
		c.unended++
	}
	return len(p), nil
}

// Not parallel: it measures the allocations of the whole process.
func TestRunFloodBoundedMemory(t *testing.T) {
	const size = 200_000_000
	b := newTestBuilder(t, Config{})
	var out counter
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := b.Run(t.Context(), Command{Name: "flood", Run: "yes | head -c " + strconv.Itoa(size), Dir: t.TempDir(), Env: testEnv}, &out)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.bytes != size || out.writes != size/2 || out.unended != 0 {
		t.Errorf("got %d bytes in %d writes (%d not ending in a newline), want %d in %d", out.bytes, out.writes, out.unended, size, size/2)
	}
	if out.longest > 8192+1 {
		t.Errorf("longest write = %d, want <= MaxLine+1", out.longest)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes", alloc)
	if alloc > 16<<20 {
		t.Errorf("Run allocated %d bytes for %d of output, want it bounded", alloc, size)
	}
}

func TestRunLongLineSplit(t *testing.T) {
	t.Parallel()
	b := newTestBuilder(t, Config{})
	var out recorder
	run := "head -c 1000000 /dev/zero | tr '\\0' a; echo; echo next"
	if err := b.Run(t.Context(), Command{Name: "long", Run: run, Dir: t.TempDir(), Env: testEnv}, &out); err != nil {
		t.Fatalf("Run: %v", err)
	}
	lines := out.Lines()
	const full = 1000000 / 8192 // pieces of MaxLine bytes
	if len(lines) != full+2 {
		t.Fatalf("got %d writes, want %d", len(lines), full+2)
	}
	for i, l := range lines[:full] {
		if l != strings.Repeat("a", 8192)+"\n" {
			t.Fatalf("write %d: %d bytes, want 8192 a's and a newline", i, len(l))
		}
	}
	if want := strings.Repeat("a", 1000000-full*8192) + "\n"; lines[full] != want {
		t.Errorf("last piece: %d bytes, want %d", len(lines[full]), len(want))
	}
	if lines[full+1] != "next\n" {
		t.Errorf("line after = %q, want %q", lines[full+1], "next\n")
	}
}

// failing is a writer whose reader has gone away.
type failing struct{ writes int }

func (f *failing) Write(p []byte) (int, error) {
	f.writes++
	return 0, errors.New("pusher gone")
}

// A dead writer must not block the command: the rest of its output is drained.
func TestRunWriterFails(t *testing.T) {
	t.Parallel()
	b := newTestBuilder(t, Config{})
	var out failing
	err := b.Run(t.Context(), Command{Name: "build 1/1", Run: "yes | head -c 10000000; echo done", Dir: t.TempDir(), Env: testEnv}, &out)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.writes != 1 {
		t.Errorf("out got %d writes after failing, want 1", out.writes)
	}
}

func TestKillLeftovers(t *testing.T) {
	t.Parallel()
	kv := "SLIPWAY_DEPLOY_PATH=" + t.TempDir()
	start := func(env ...string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command("/bin/sleep", "1000")
		cmd.Env = append(slices.Clone(testEnv), env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Kill fails on one dead already and Wait reports the signal: only the reaping matters.
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return cmd
	}
	victim := start(kv)
	others := []*exec.Cmd{
		start(kv + "/other"),
		start("X" + kv),
		start("OTHER=" + kv),
	}

	n, err := KillLeftovers(kv)
	if err != nil {
		t.Fatalf("KillLeftovers: %v", err)
	}
	if n != 1 {
		t.Fatalf("KillLeftovers = %d, want 1", n) // else victim.Wait would block
	}
	err = victim.Wait()
	if ws, ok := victim.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("victim ended with %v, want SIGKILL", err)
	}
	for _, o := range others {
		if err := o.Process.Signal(syscall.Signal(0)); err != nil {
			t.Errorf("process with env %q: %v, want it alive", o.Env[len(o.Env)-1], err)
		}
	}

	if n, err := KillLeftovers(kv); err != nil || n != 0 {
		t.Errorf("KillLeftovers again = %d, %v, want 0, nil", n, err)
	}
	if _, err := KillLeftovers("SLIPWAY_DEPLOY_PATH"); err == nil {
		t.Error("KillLeftovers of an entry without '=' did not fail")
	}
}
