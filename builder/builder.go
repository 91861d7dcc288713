// Package builder runs a deploy's shell commands (build, test, hooks) in a release
// directory: each with `sh -c`, stdin from /dev/null, a complete environment, a timeout, and
// its output streamed line by line, in a box (box.go) that confines and limits it.
//
// Invariant: when Run returns, no process the command started is left running, whatever it
// did to its environment, session or process group. Each command runs under a helper, this
// program re-executed (BoxMain), which is the init of the command's own PID namespace where
// the kernel allows one, and its child subreaper elsewhere; the helper ends everything when
// the shell exits, and the kernel ends the namespace when the helper dies. Every process also
// carries a unique SLIPWAY_RUN_ID in its environment, the way to find leftovers when a helper
// itself died (proc.go).
//
// A command that is Confined may write only below its Writable paths and its TempDir
// (Landlock, where the kernel has it), and signal no process outside its box.
//
// The package is Linux only: it uses namespaces, Landlock, /proc and pidfds.
package builder

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// runIDVar is the environment variable that tags every process started by one Run.
const runIDVar = "SLIPWAY_RUN_ID"

// shell is run by absolute path so that finding it does not depend on the server's PATH.
const shell = "/bin/sh"

// Config configures a Builder. Zero values take the defaults.
type Config struct {
	KillGrace time.Duration // between SIGTERM and SIGKILL on timeout/cancel; default 5s
	MaxLine   int           // output lines longer than this are split; default 8192 bytes
}

// Builder runs commands. It is safe for concurrent use.
type Builder struct {
	cfg Config
	log zerolog.Logger

	// withTimeout bounds a command's context by its Command.Timeout, ending it with the
	// cause errTimedOut; tests replace it to time a command out on an event of theirs.
	withTimeout func(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc)
	// noNamespaces runs every command under a subreaper, as where the kernel allows no user
	// namespace; tests set it to run that path on any kernel.
	noNamespaces bool
	// cgroups, if set, is the cgroup subtree commands run in, instead of the one found
	// delegated; tests set it to a cgroup of their own.
	cgroups *cgroupTree
}

// New returns a Builder. Zero fields of cfg take their defaults.
func New(cfg Config, log zerolog.Logger) *Builder {
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = 5 * time.Second
	}
	if cfg.MaxLine <= 0 {
		cfg.MaxLine = 8192
	}
	return &Builder{cfg: cfg, log: log, withTimeout: withTimeout}
}

func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d, errTimedOut)
}

// Sandbox returns what confinement this kernel gives commands, found out on the process's
// first call (it starts one helper).
func (b *Builder) Sandbox() Sandbox {
	sb, _ := b.sandbox()
	return sb
}

// sandbox is Sandbox with the cgroup subtree, nil if none.
func (b *Builder) sandbox() (Sandbox, *cgroupTree) {
	sb, tree := kernel.get()
	if b.noNamespaces {
		sb.Namespaces = false
	}
	if b.cgroups != nil {
		tree = b.cgroups
		sb.Cgroups, sb.CgroupsWhy = tree.String(), ""
	}
	return sb, tree
}

// Command is one shell command to run.
type Command struct {
	Name    string        // what the pusher sees in errors, e.g. "build 1/2"
	Run     string        // shell command, run as: sh -c Run
	Dir     string        // working directory (the release dir)
	Env     []string      // the complete environment, "K=V"; nothing of the server's own environment is added (Run adds only SLIPWAY_RUN_ID, and TMPDIR with TempDir)
	Timeout time.Duration // 0 = no limit

	// Confined makes the command, and every process it starts, unable to write anywhere
	// but below Writable and TempDir (Landlock, where the kernel has it), and runs it in its
	// own user and PID namespace (where the kernel allows one). An unconfined command runs
	// under a subreaper as the server's user: a setuid program (sudo) works there, and in
	// neither a user namespace nor under Landlock.
	Confined bool
	Writable []string
	// TempDir, if set, is made (0700; it must not exist) for the command alone, given to it
	// as TMPDIR, and removed with everything in it when the command ends.
	TempDir string
	Limits  Limits
}

// errTimedOut is the cause of the context that enforces Command.Timeout.
var errTimedOut = errors.New("command timed out")

// Run runs one command and returns when it and every process it started have ended.
// Output (stdout and stderr merged, in order, through one pipe) is written to out one whole
// line per Write call ("...\n"); lines longer than MaxLine are split. A Write error does not
// stop the command: the rest of its output is discarded (ctx is expected to end it, e.g.
// when the pusher is gone). out should not block indefinitely: Run waits for it.
//
// Run returns nil if the command exited 0, an *ExitError if it did not succeed (non-zero
// exit, signal, timeout, cancellation), a *SetupError if its box could not be made (a
// writable path that does not exist), and another error if it could not be started.
// Processes left behind by a command get SIGTERM and, after KillGrace, SIGKILL, whether the
// command succeeded or not.
func (b *Builder) Run(ctx context.Context, c Command, out io.Writer) error {
	start := time.Now()
	tag := runIDVar + "=" + rand.Text()

	if fi, err := os.Stat(c.Dir); err != nil || !fi.IsDir() {
		if err == nil {
			err = fmt.Errorf("%s: %w", c.Dir, syscall.ENOTDIR)
		}
		return fmt.Errorf("start %s: %w", c.Name, err)
	}
	env := append(slices.Clip(c.Env), tag)
	writable := c.Writable
	if c.TempDir != "" {
		if err := os.Mkdir(c.TempDir, 0o700); err != nil {
			return fmt.Errorf("start %s: temporary directory: %w", c.Name, err)
		}
		defer b.removeTemp(c.TempDir)
		env = append(env, "TMPDIR="+c.TempDir)
		writable = append(slices.Clip(writable), c.TempDir)
	}

	runCtx := ctx
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = b.withTimeout(ctx, c.Timeout)
		defer cancel()
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start %s: output pipe: %w", c.Name, err)
	}
	defer pr.Close() // the read end: closing it loses nothing
	sr, sw, err := os.Pipe()
	if err != nil {
		pw.Close() // unused: closing it loses nothing
		return fmt.Errorf("start %s: status pipe: %w", c.Name, err)
	}
	defer sr.Close() // the read end: closing it loses nothing

	log := b.log.With().Str("step", c.Name).Logger()
	sb, tree := b.sandbox()
	spec := boxSpec{
		Run: c.Run, Dir: c.Dir, Limits: c.Limits, GraceMs: b.cfg.KillGrace.Milliseconds(),
		Confine:  c.Confined && sb.Landlock > 0,
		Writable: writable,
	}
	var cg *commandCgroup
	if tree != nil {
		if cg, err = tree.newCommand(c.Limits); err != nil {
			log.Warn().Err(err).Msg("no cgroup for the command: its limits are rlimits")
		} else {
			defer func() {
				if err := cg.end(); err != nil {
					log.Error().Err(err).Msg("end the command's cgroup")
				}
			}()
			// What the cgroup limits is not an rlimit too.
			if tree.controllers["memory"] {
				spec.Limits.MemoryMax = 0
			}
			if tree.controllers["pids"] {
				spec.Limits.PidsMax = 0
			}
		}
	}
	ns := sb.Namespaces && c.Confined
	box, err := boxCmd(spec, ns)
	if err != nil {
		pw.Close() // unused: closing it loses nothing
		sw.Close() // unused: closing it loses nothing
		return fmt.Errorf("start %s: %w", c.Name, err)
	}
	if cg != nil {
		// clone3 starts the helper in the cgroup: no process of the command runs outside it.
		box.SysProcAttr.UseCgroupFD, box.SysProcAttr.CgroupFD = true, cg.fd
	}
	var stop stopTime
	cmd := exec.CommandContext(runCtx, box.Path)
	cmd.Args, cmd.SysProcAttr = box.Args, box.SysProcAttr
	cmd.Dir = c.Dir
	cmd.Env = env
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.ExtraFiles = []*os.File{sw}
	cmd.Cancel = func() error {
		stop.set(time.Now())
		// The helper sends SIGTERM to everything, and SIGKILL after KillGrace.
		return cmd.Process.Signal(syscall.SIGTERM)
	}
	// The backstop, if the helper itself does not end in time: SIGKILL to it, which in a
	// PID namespace ends everything; elsewhere the scan below ends what is left.
	cmd.WaitDelay = b.cfg.KillGrace + 2*time.Second

	err = cmd.Start()
	// The helper holds its copies; ours would keep the pipes open forever. Closing the
	// write end of a pipe loses nothing.
	pw.Close()
	sw.Close()
	if err != nil {
		if runCtx.Err() != nil { // exec does not start a command whose ctx is done
			return result(ctx, runCtx, c, nil, true)
		}
		return fmt.Errorf("start %s: %w", c.Name, err)
	}
	log.Debug().Int("pid", cmd.Process.Pid).Bool("namespace", ns).Bool("confined", spec.Confine).Msg("command started")

	var (
		drained    = make(chan struct{})
		werr, rerr error
	)
	go func() {
		defer close(drained)
		werr, rerr = copyLines(out, pr, b.cfg.MaxLine)
	}()

	waitErr := cmd.Wait()
	_, stopped := stop.get()
	st, stErr := readStatus(sr)
	var endErr error
	if !ns && stErr != nil {
		// Without a namespace, a helper that died (the backstop, the OOM killer) leaves its
		// command's processes behind: the tag finds them. (A helper that reported waited for
		// every one of them; in a namespace, the kernel ends them with the helper.)
		endErr = newTracked(tag).kill(newScanner(tag))
	}

	// Every process of the command is gone, so the pipe reaches EOF at once unless a
	// process that escaped still holds it: give that one KillGrace, no more.
	// It cannot fail: the ends of an os.Pipe are pollable.
	_ = pr.SetReadDeadline(time.Now().Add(b.cfg.KillGrace))
	<-drained

	ev := log.Info()
	if endErr != nil {
		ev = log.Error().Err(endErr)
	}
	ev.Int64("took_ms", time.Since(start).Milliseconds()).Int("killed", st.Leftover).Int("landlock", st.Landlock).Msg("command finished")
	if werr != nil {
		log.Warn().Err(werr).Msg("output discarded")
	}
	if rerr != nil {
		log.Warn().Err(rerr).Msg("output pipe not drained")
	}

	switch {
	case stErr != nil && !stopped:
		log.Error().Err(stErr).AnErr("wait", waitErr).Msg("helper failed")
		return fmt.Errorf("run %s: the helper failed: %w", c.Name, stErr)
	case st.Err != "":
		return &SetupError{Name: c.Name, Path: st.ErrPath, Err: errors.New(st.Err)}
	case stErr != nil: // stopped, and the backstop killed the helper
		return result(ctx, runCtx, c, &exitInfo{code: -1, signal: syscall.SIGKILL.String()}, stopped)
	}
	ws := syscall.WaitStatus(st.Status)
	ex := &exitInfo{code: ws.ExitStatus()}
	if ws.Signaled() {
		ex.signal = ws.Signal().String()
	}
	if cg != nil && (ex.code != 0 || ex.signal != "") {
		ex.limit = cg.hit(c.Limits)
	}
	return result(ctx, runCtx, c, ex, stopped)
}

// removeTemp removes a command's temporary directory; a failure only costs space, and is
// logged.
func (b *Builder) removeTemp(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		b.log.Warn().Err(err).Str("path", dir).Msg("remove temporary directory")
	}
}

// readStatus reads the helper's report from the status pipe, which the helper has closed.
func readStatus(r io.Reader) (boxStatus, error) {
	var st boxStatus
	b, err := io.ReadAll(io.LimitReader(r, 1<<16))
	if err != nil {
		return st, fmt.Errorf("read the helper's status: %w", err)
	}
	if len(b) == 0 {
		return st, errors.New("the helper ended without a status")
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read the helper's status: %w", err)
	}
	return st, nil
}

// exitInfo is how the shell ended.
type exitInfo struct {
	code   int    // exit status; -1 if killed by a signal
	signal string // the signal's description, if one killed it
	limit  string // the cgroup limit it reached, if any ("memory_max reached")
}

// result turns how the shell ended (ex, nil if it never started) into Run's error. stopped
// tells whether runCtx had ended the command before it exited.
func result(ctx, runCtx context.Context, c Command, ex *exitInfo, stopped bool) error {
	e := &ExitError{Name: c.Name, Code: -1}
	if ex != nil {
		e.Code, e.Signal, e.Limit = ex.code, ex.signal, ex.limit
	}
	switch {
	case stopped && context.Cause(runCtx) == errTimedOut:
		e.TimedOut, e.Timeout, e.Err = true, c.Timeout, context.DeadlineExceeded
	case stopped:
		e.Canceled, e.Err = true, ctx.Err()
	case ex != nil && ex.code == 0 && ex.signal == "":
		return nil
	}
	return e
}

// stopTime records when Cmd.Cancel sent SIGTERM. Cancel runs on exec's goroutine.
type stopTime struct {
	mu sync.Mutex // guards at and ok
	at time.Time
	ok bool
}

func (s *stopTime) set(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ok {
		s.at, s.ok = t, true
	}
}

func (s *stopTime) get() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at, s.ok
}
