// Package builder runs a deploy's shell commands (build, test, hooks) in a release
// directory: each with `sh -c`, stdin from /dev/null, a complete environment, its own process
// group, a timeout, and its output streamed line by line.
//
// Invariant: when Run returns, no process the command started is left running. That covers
// children put in the background, and ones that left the process group (setsid, double
// fork): every process started by a command carries a unique SLIPWAY_RUN_ID in its
// environment, and Run ends every process that carries it. The one way out is a process
// that drops that entry by exec'ing with a new environment (env -i); see proc.go.
//
// The package is Linux only: it finds processes through /proc and signals them through pidfds.
package builder

import (
	"context"
	"crypto/rand"
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
	"golang.org/x/sys/unix"
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

// Command is one shell command to run.
type Command struct {
	Name    string        // what the pusher sees in errors, e.g. "build 1/2"
	Run     string        // shell command, run as: sh -c Run
	Dir     string        // working directory (the release dir)
	Env     []string      // the complete environment, "K=V"; nothing of the server's own environment is added (Run adds only SLIPWAY_RUN_ID)
	Timeout time.Duration // 0 = no limit
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
// exit, signal, timeout, cancellation), and another error if it could not be started.
// Processes left behind by a command get SIGTERM and, after KillGrace, SIGKILL, whether the
// command succeeded or not.
func (b *Builder) Run(ctx context.Context, c Command, out io.Writer) error {
	start := time.Now()
	tag := runIDVar + "=" + rand.Text()

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

	log := b.log.With().Str("step", c.Name).Logger()
	procs := newTracked(tag)
	var stop stopTime
	cmd := exec.CommandContext(runCtx, shell, "-c", c.Run)
	cmd.Dir = c.Dir
	cmd.Env = append(slices.Clip(c.Env), tag)
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		stop.set(time.Now())
		if err := procs.term(cmd.Process.Pid); err != nil {
			log.Warn().Err(err).Msg("terminate command")
		}
		return nil
	}
	// The output pipe is ours (Stdout is an *os.File), so WaitDelay does not bound it here;
	// it is the SIGKILL of the shell itself if it outlives KillGrace after Cancel. The pipe is
	// bounded below, after every tagged process has been ended.
	cmd.WaitDelay = b.cfg.KillGrace

	err = cmd.Start()
	// The children hold their copies; ours would keep the pipe open forever. Closing the
	// write end of a pipe loses nothing.
	pw.Close()
	if err != nil {
		if runCtx.Err() != nil { // exec does not start a command whose ctx is done
			return result(ctx, runCtx, c, nil, err, true)
		}
		return fmt.Errorf("start %s: %w", c.Name, err)
	}
	pid := cmd.Process.Pid
	log.Debug().Int("pid", pid).Msg("command started")

	var (
		drained    = make(chan struct{})
		werr, rerr error
	)
	go func() {
		defer close(drained)
		werr, rerr = copyLines(out, pr, b.cfg.MaxLine)
	}()

	// Wait for the shell to exit without reaping it: while it is a zombie its pid cannot be
	// reused, so signalling its process group cannot reach a stranger.
	if err := waitExited(pid); err != nil {
		// Cannot happen for our own child; fall through to Wait, which reaps it.
		log.Warn().Err(err).Int("pid", pid).Msg("wait for exit")
	}
	stoppedAt, stopped := stop.get()
	deadline := time.Now().Add(b.cfg.KillGrace)
	if stopped {
		deadline = stoppedAt.Add(b.cfg.KillGrace)
	}
	endErr := procs.end(pid, deadline)
	waitErr := cmd.Wait()

	// Every process carrying the tag is gone, so the pipe reaches EOF at once unless a
	// process that escaped the tag still holds it: give that one KillGrace, no more.
	// It cannot fail: the ends of an os.Pipe are pollable.
	_ = pr.SetReadDeadline(time.Now().Add(b.cfg.KillGrace))
	<-drained

	ev := log.Info()
	if endErr != nil {
		ev = log.Error().Err(endErr)
	}
	ev.Int64("took_ms", time.Since(start).Milliseconds()).Int("killed", procs.count()).Msg("command finished")
	if werr != nil {
		log.Warn().Err(werr).Msg("output discarded")
	}
	if rerr != nil {
		log.Warn().Err(rerr).Msg("output pipe not drained")
	}

	return result(ctx, runCtx, c, cmd.ProcessState, waitErr, stopped)
}

// result turns how the shell ended (st, nil if it never started) into Run's error. stopped
// tells whether runCtx had ended the command before it exited.
func result(ctx, runCtx context.Context, c Command, st *os.ProcessState, waitErr error, stopped bool) error {
	e := &ExitError{Name: c.Name, Code: -1, Err: waitErr}
	if st != nil {
		e.Code = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = ws.Signal().String()
		}
	}
	switch {
	case stopped && context.Cause(runCtx) == errTimedOut:
		e.TimedOut, e.Timeout, e.Err = true, c.Timeout, context.DeadlineExceeded
	case stopped:
		e.Canceled, e.Err = true, ctx.Err()
	case st != nil && st.Success():
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

// waitExited blocks until the child pid has exited, leaving it a zombie for Wait to reap.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return err
		}
	}
}
