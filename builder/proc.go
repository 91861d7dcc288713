package builder

// Finding a command's processes by their tag: the fallback for what the box (box.go) did not
// end itself, a crash of the server (KillLeftovers, at start) or a helper that died.
//
// Every process a command starts inherits SLIPWAY_RUN_ID=<id> (and the deploy's
// SLIPWAY_DEPLOY_PATH) from the shell, through any number of forks, setsid, nohup and
// daemonizing, so scanning /proc/*/environ for that exact entry finds them.
//
// Limit: /proc/<pid>/environ shows the environment a process was exec'd with. A process
// that execs with a scrubbed environment (env -i, execve with a new env), or overwrites
// that memory (setproctitle-style), is no longer found. The box is what ends those: the PID
// namespace, or the helper as their subreaper.
//
// Processes whose environ cannot be read (another user's, without privilege) are skipped:
// a command runs as the server's user, so its own processes are readable.
//
// A process is held by a pidfd from before its environ is read until it is signalled, so
// a pid reused in between can never make us signal a stranger.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	killBudget = 5 * time.Second // how long the SIGKILL phase may wait for processes to go
	maxSweeps  = 100             // scans in the SIGKILL phase; a fork bomb converges well before
)

// KillLeftovers ends (SIGKILL) every process, other than the caller, whose environment
// contains the entry kv exactly (e.g. "SLIPWAY_DEPLOY_PATH=/var/www/app"), and returns how
// many it killed. The server calls it at start, so that a build left running by a crash
// (kill -9 of the server) is ended.
func KillLeftovers(kv string) (int, error) {
	if !strings.Contains(kv, "=") {
		return 0, fmt.Errorf("kill leftovers: %q is not a K=V entry", kv)
	}
	t := newTracked(kv)
	err := t.kill(newScanner(kv))
	return t.count(), err
}

// tracked is the set of processes of one command: every process whose environment carries
// the entry kv.
type tracked struct {
	kv string

	mu        sync.Mutex   // guards signalled
	signalled map[int]bool // pids signalled so far
}

func newTracked(kv string) *tracked {
	return &tracked{kv: kv, signalled: map[int]bool{}}
}

// count returns how many tagged processes have been signalled.
func (t *tracked) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.signalled)
}

// killAll sends SIGKILL to each of procs.
func (t *tracked) killAll(procs []proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range procs {
		if unix.PidfdSendSignal(p.fd, unix.SIGKILL, nil, 0) == nil {
			t.signalled[p.pid] = true
		}
	}
}

// kill sends SIGKILL, scan after scan, to every tagged process until a scan finds none.
func (t *tracked) kill(s *scanner) error {
	end := time.Now().Add(killBudget)
	for range maxSweeps {
		procs, err := s.find()
		t.killAll(procs)
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		waitGone(procs, end)
		closeAll(procs)
		if time.Now().After(end) {
			break
		}
	}
	procs, err := s.find()
	if err != nil {
		return err
	}
	closeAll(procs)
	if len(procs) > 0 {
		return fmt.Errorf("%d processes still running after SIGKILL", len(procs))
	}
	return nil
}

// waitGone waits until every process in procs has exited or deadline passes. A pidfd
// becomes readable when its process exits, so this waits on the event, not a timer.
func waitGone(procs []proc, deadline time.Time) {
	fds := make([]unix.PollFd, len(procs))
	for i, p := range procs {
		fds[i] = unix.PollFd{Fd: int32(p.fd), Events: unix.POLLIN}
	}
	for left := len(fds); left > 0; {
		wait := time.Until(deadline)
		if wait <= 0 {
			return
		}
		n, err := unix.Poll(fds, int((wait+time.Millisecond-1)/time.Millisecond))
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		for i := range fds {
			if fds[i].Fd >= 0 && fds[i].Revents != 0 {
				fds[i].Fd = -1 // poll ignores negative fds
				left--
			}
		}
	}
}

// proc is a process found by a scan, held by a pidfd.
type proc struct {
	pid int
	fd  int
}

func closeAll(procs []proc) {
	for _, p := range procs {
		_ = unix.Close(p.fd) // a pidfd: closing it loses nothing
	}
}

// scanner finds the processes whose environment holds one exact entry.
type scanner struct {
	kv   string
	self int
	buf  []byte // reused for each environ read
}

func newScanner(kv string) *scanner {
	return &scanner{kv: kv, self: os.Getpid()}
}

// find returns every process other than the caller whose environment holds s.kv, each held
// by a pidfd the caller must close.
func (s *scanner) find() ([]proc, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close() // read only: closing it loses nothing
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	var procs []proc
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == s.self {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ENOSYS) {
			closeAll(procs)
			return nil, fmt.Errorf("scan processes: pidfd_open: %w", err)
		}
		if err != nil {
			continue // gone already
		}
		// Environ is read after the pidfd was opened: if that process is still alive
		// afterwards, the pid still named it when it was read.
		env, err := s.environ(pid)
		if err != nil || !hasEntry(env, s.kv) {
			_ = unix.Close(fd) // a pidfd: closing it loses nothing
			continue
		}
		if unix.PidfdSendSignal(fd, 0, nil, 0) != nil {
			_ = unix.Close(fd) // a pidfd: closing it loses nothing
			continue
		}
		procs = append(procs, proc{pid: pid, fd: fd})
	}
	return procs, nil
}

// environ reads /proc/<pid>/environ into s.buf.
func (s *scanner) environ(pid int) ([]byte, error) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/environ", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd) // read only: closing it loses nothing
	s.buf = s.buf[:0]
	for {
		if len(s.buf) == cap(s.buf) {
			s.buf = slices.Grow(s.buf, 4096)
		}
		n, err := unix.Read(fd, s.buf[len(s.buf):cap(s.buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return s.buf, nil
		}
		s.buf = s.buf[:len(s.buf)+n]
	}
}

// hasEntry reports whether the NUL-separated environment env holds the entry kv exactly.
func hasEntry(env []byte, kv string) bool {
	for len(env) > 0 {
		e := env
		if i := bytes.IndexByte(env, 0); i >= 0 {
			e, env = env[:i], env[i+1:]
		} else {
			env = nil
		}
		if string(e) == kv {
			return true
		}
	}
	return false
}
