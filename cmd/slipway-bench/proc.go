package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs is every background process the harness started (sshd, slipway, nginx, wrk), so that
// they are all ended on the way out, also after a failure or a signal. Each is killed by its
// own process group id, never by name.
type procs struct {
	mu   sync.Mutex // guards list
	list []*bgProc
}

// bgProc is one background process in its own process group.
type bgProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result, valid once done is closed
}

// start runs cmd in the background in its own process group (a new session, if its
// SysProcAttr asks for one, is a new process group too) and registers it. The rest of
// its SysProcAttr (a Credential) is kept.
func (p *procs) start(name string, cmd *exec.Cmd) (*bgProc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if !cmd.SysProcAttr.Setsid {
		cmd.SysProcAttr.Setpgid = true
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	bp := &bgProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		bp.err = cmd.Wait()
		close(bp.done)
	}()
	p.mu.Lock()
	p.list = append(p.list, bp)
	p.mu.Unlock()
	return bp, nil
}

// exited reports whether the process has ended.
func (bp *bgProc) exited() bool {
	select {
	case <-bp.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the process, waits up to grace for it to end, then SIGKILLs its whole
// process group.
func (bp *bgProc) stop(sig syscall.Signal, grace time.Duration) {
	if bp.exited() {
		killGroup(bp.cmd.Process.Pid) // children it may have left behind
		return
	}
	bp.cmd.Process.Signal(sig)
	select {
	case <-bp.done:
	case <-time.After(grace):
	}
	killGroup(bp.cmd.Process.Pid)
	select {
	case <-bp.done:
	case <-time.After(5 * time.Second):
	}
}

// background lowers the priority of the command cmd (the load generator and the web server
// of figure 8), which must be started with nice -n 10: it gets a session of its own, and
// lowerAutogroup then lowers that session's autogroup. With the kernel's autogroup
// scheduling (on by default), nice only weighs within a session, and every sshd session
// is one: without this the load would take the CPU from the baseline's deploys and not
// from slipway's, which runs in the harness's session.
func background(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
}

// lowerAutogroup sets the autogroup nice of pid's session to 19 (best effort: the file
// exists only with CONFIG_SCHED_AUTOGROUP).
func lowerAutogroup(pid int) {
	os.WriteFile(fmt.Sprintf("/proc/%d/autogroup", pid), []byte("19"), 0)
}

// killGroup SIGKILLs process group pgid (the harness starts every process as the leader of
// its own group, so pgid is the pid it started).
func killGroup(pgid int) {
	if pgid > 0 {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// stopAll ends every registered process, newest first.
func (p *procs) stopAll() {
	p.mu.Lock()
	list := p.list
	p.list = nil
	p.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop(syscall.SIGTERM, 3*time.Second)
	}
}

// remove forgets bp (after it was stopped on purpose).
func (p *procs) remove(bp *bgProc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.list {
		if x == bp {
			p.list = append(p.list[:i], p.list[i+1:]...)
			return
		}
	}
}

// command builds a command that runs in its own process group and whose whole group is
// killed when ctx ends, with a bounded wait for its output.
func command(ctx context.Context, env []string, dir, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		killGroup(cmd.Process.Pid)
		return nil
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs a command to completion (bounded by timeout) and returns its stdout; stderr is
// included in the error.
func run(ctx context.Context, env []string, dir string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := command(ctx, env, dir, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(errb.String(), 2000))
	}
	return out.String(), nil
}

// runIn runs a command with stdin from r.
func runIn(ctx context.Context, env []string, dir string, timeout time.Duration, r io.Reader, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := command(ctx, env, dir, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdin = r
	cmd.Stdout = &out
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(errb.String(), 2000))
	}
	return out.String(), nil
}

// sh runs a shell script (bash, for pipefail) to completion.
func sh(ctx context.Context, env []string, dir string, timeout time.Duration, script string) (string, error) {
	return run(ctx, env, dir, timeout, "bash", "-o", "pipefail", "-ec", script)
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// vmHWM returns the peak resident set size (VmHWM) of pid in bytes.
func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, err := strconv.ParseInt(f[1], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, errors.New("no VmHWM in /proc/status")
}

// rssSampler polls /proc and keeps the peak of the summed resident set size of a process
// tree: the descendants of root (root included unless skipRoot), or, if comm is set, only
// the subtrees of those descendants whose command name starts with comm. Summing RSS counts
// shared pages (libc, git's binary) once per process, so it overstates a little.
type rssSampler struct {
	root     int
	skipRoot bool
	comm     string
	every    time.Duration

	stop chan struct{}
	done chan struct{}
	peak int64
}

func startRSSSampler(root int, skipRoot bool, comm string, every time.Duration) *rssSampler {
	s := &rssSampler{root: root, skipRoot: skipRoot, comm: comm, every: every,
		stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

// Stop ends the sampling and returns the peak in bytes.
func (s *rssSampler) Stop() int64 {
	close(s.stop)
	<-s.done
	return s.peak
}

func (s *rssSampler) loop() {
	defer close(s.done)
	t := time.NewTicker(s.every)
	defer t.Stop()
	page := int64(os.Getpagesize())
	for {
		if v := s.sample(page); v > s.peak {
			s.peak = v
		}
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

func (s *rssSampler) sample(page int64) int64 {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	parent := map[int]int{}
	comm := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parens.
		st := string(b)
		l, r := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if l < 0 || r < l {
			continue
		}
		f := strings.Fields(st[r+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
		comm[pid] = st[l+1 : r]
	}
	// in reports whether pid descends from root, and (with comm) from a matching process.
	var sum int64
	for pid := range parent {
		if pid == s.root && s.skipRoot {
			continue
		}
		under, matched := false, s.comm == ""
		for p, hops := pid, 0; p > 1 && hops < 64; p, hops = parent[p], hops+1 {
			if s.comm != "" && strings.HasPrefix(comm[p], s.comm) {
				matched = true
			}
			if p == s.root {
				under = true
				break
			}
		}
		if !under || !matched {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		res, _ := strconv.ParseInt(f[1], 10, 64)
		sum += res * page
	}
	return sum
}
