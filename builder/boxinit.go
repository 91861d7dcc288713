package builder

// The helper's side of the box (see box.go): slipway's binary started as "slipway-box". It
// starts the command, reaps every process that ends up its child, and ends them all when the
// shell exits, when the server sends SIGTERM (a timeout or a cancel), or when the server
// dies. It reports how the shell ended on fd 3.
//
// The command is started through slipway's binary once more, as "slipway-box-exec", which
// sets the command's limits, confines itself with Landlock and execs `sh -c`: so the helper
// itself runs neither limited nor confined (it must be able to signal what it started), and
// nothing runs between the limits and the exec that could trip over them.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsyscall "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// BoxMain runs this process as a command's helper if it was started as one, and then never
// returns; otherwise it returns at once. A program that runs commands through a Builder
// calls it first thing in main (and a test binary in TestMain), because the helpers are
// that program re-executed.
func BoxMain() {
	if len(os.Args) != 2 || (os.Args[0] != boxArg0 && os.Args[0] != execArg0) {
		return
	}
	if os.Args[0] == execArg0 {
		execMain(os.Args[1])
	}
	var spec boxSpec
	if err := json.Unmarshal([]byte(os.Args[1]), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "slipway-box: %v\n", err)
		os.Exit(2)
	}
	if spec.Namespace {
		if err := mountProc(); err != nil {
			fmt.Fprintf(os.Stderr, "slipway-box: %v\n", err)
			os.Exit(2)
		}
	}
	if spec.Probe {
		os.Exit(0) // it started, and mounted its /proc: the namespaces work
	}
	status := os.NewFile(3, "status")
	syscall.CloseOnExec(3) // the command must not inherit it
	st := runBox(spec)
	b, _ := json.Marshal(st) // a struct of strings and ints: cannot fail
	if _, err := status.Write(b); err != nil {
		os.Exit(3) // the server reads a missing status as a failure of the helper
	}
	os.Exit(0)
}

// runBox runs the command and ends everything it started.
func runBox(spec boxSpec) boxStatus {
	var st boxStatus
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)

	var end ender = namespaceEnder{}
	if !spec.Namespace {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			st.Err = fmt.Sprintf("become a child subreaper: %v", err)
			return st
		}
		end = &subreaperEnder{self: os.Getpid()}
	}

	shell, setup, err := startShell(spec)
	if err != nil {
		st.Err = err.Error()
		return st
	}
	exits := reap()
	if setup.Err != "" {
		st.Err, st.ErrPath = setup.Err, setup.ErrPath
		for range exits { // the intermediate exits at once
		}
		return st
	}
	st.Landlock = setup.Landlock

	grace := time.Duration(spec.GraceMs) * time.Millisecond
	var (
		shellDone bool
		ending    bool             // SIGTERM went to everything
		kill      <-chan time.Time // when SIGKILL goes to everything
		killing   *time.Ticker     // SIGKILL again, for what forked meanwhile
	)
	startEnding := func() {
		if !ending {
			ending = true
			end.signal(syscall.SIGTERM)
			kill = time.After(grace)
		}
	}
	killAll := func() {
		end.signal(syscall.SIGKILL)
		if killing == nil {
			killing = time.NewTicker(50 * time.Millisecond)
		}
	}
	var tick <-chan time.Time
	for {
		if killing != nil {
			tick = killing.C
		}
		select {
		case e, ok := <-exits:
			if !ok { // no child left
				return st
			}
			if e.pid == shell.Pid {
				st.Status, shellDone = int(e.status), true
				startEnding()
			} else if shellDone {
				st.Leftover++
			}
		case sig := <-sigs:
			if sig == syscall.SIGHUP { // the server is gone
				killAll()
				continue
			}
			startEnding()
		case <-kill:
			killAll()
		case <-tick:
			killAll()
		}
	}
}

// execArg0 is the argv[0] of the intermediate that limits and confines itself, then execs
// the shell (execMain).
const execArg0 = "slipway-box-exec"

// setupResult is what the intermediate reports on its fd 3: nothing if it exec'd the shell
// (the pipe closes on exec), why not otherwise.
type setupResult struct {
	Err      string `json:"err,omitempty"`
	ErrPath  string `json:"err_path,omitempty"`
	Landlock int    `json:"landlock,omitempty"`
}

// startShell starts the intermediate, which becomes the shell, and returns it with what it
// reported: setup.Err if it could not limit or confine itself (it then exits).
func startShell(spec boxSpec) (*os.Process, setupResult, error) {
	var setup setupResult
	arg, err := json.Marshal(spec)
	if err != nil {
		return nil, setup, fmt.Errorf("encode the box spec: %w", err)
	}
	er, ew, err := os.Pipe()
	if err != nil {
		return nil, setup, fmt.Errorf("setup pipe: %w", err)
	}
	defer er.Close() // read to the end below: closing it loses nothing
	p, err := os.StartProcess(exe, []string{execArg0, string(arg)}, &os.ProcAttr{
		Dir:   spec.Dir,
		Env:   os.Environ(),
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, ew},
	})
	ew.Close() // the intermediate holds its copy: closing ours loses nothing
	if err != nil {
		return nil, setup, err
	}
	// EOF when the exec closed the intermediate's copy; its report otherwise.
	b, err := io.ReadAll(io.LimitReader(er, 1<<16))
	switch {
	case err != nil:
		setup.Err = fmt.Sprintf("read the setup report: %v", err)
	case len(b) > 0:
		if err := json.Unmarshal(b, &setup); err != nil {
			setup.Err = fmt.Sprintf("read the setup report: %v", err)
		}
	}
	return p, setup, nil
}

// execMain is the intermediate: it limits and confines itself as the spec in arg says, then
// execs the shell, which keeps its pid, limits and Landlock domain. On any failure it reports
// on fd 3 and exits 127.
func execMain(arg string) {
	report := os.NewFile(3, "setup")
	syscall.CloseOnExec(3) // closed by the exec: the helper reads EOF
	fail := func(r setupResult) {
		b, _ := json.Marshal(r) // strings and an int: cannot fail
		_, _ = report.Write(b)  // if the helper is gone, so is the reason to tell it
		os.Exit(127)
	}
	var spec boxSpec
	if err := json.Unmarshal([]byte(arg), &spec); err != nil {
		fail(setupResult{Err: fmt.Sprintf("decode the box spec: %v", err)})
	}
	// The helper's ambient CAP_SYS_ADMIN (box.go) must not reach the command.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		fail(setupResult{Err: fmt.Sprintf("drop ambient capabilities: %v", err)})
	}
	var r setupResult
	if spec.Confine {
		abi, path, err := confine(spec.Writable)
		if err != nil {
			fail(setupResult{Err: err.Error(), ErrPath: path})
		}
		r.Landlock = abi
	}
	if r.Landlock > 0 {
		// Tell the helper the ABI applied: a short write, before the exec closes the pipe.
		b, _ := json.Marshal(r) // an int: cannot fail
		if _, err := report.Write(b); err != nil {
			os.Exit(127)
		}
	}
	// The limits come last, and nothing after them allocates: memory_max is RLIMIT_DATA, and
	// a Go runtime that needs memory past it dies (the race detector's does at once).
	argv0, err := syscall.BytePtrFromString(shell)
	if err != nil {
		fail(setupResult{Err: fmt.Sprintf("exec %s: %v", shell, err)})
	}
	argv, err := syscall.SlicePtrFromStrings([]string{"sh", "-c", spec.Run})
	if err != nil {
		fail(setupResult{Err: fmt.Sprintf("exec %s: the command: %v", shell, err)})
	}
	envv, err := syscall.SlicePtrFromStrings(os.Environ())
	if err != nil {
		fail(setupResult{Err: fmt.Sprintf("exec %s: the environment: %v", shell, err)})
	}
	if err := setLimits(spec.Limits); err != nil {
		fail(setupResult{Err: err.Error()})
	}
	_, _, errno := syscall.RawSyscall(syscall.SYS_EXECVE, uintptr(unsafe.Pointer(argv0)),
		uintptr(unsafe.Pointer(&argv[0])), uintptr(unsafe.Pointer(&envv[0])))
	fail(setupResult{Err: fmt.Sprintf("exec %s: %v", shell, errno)})
}

type exited struct {
	pid    int
	status syscall.WaitStatus
}

// reap reaps every child of this process as it exits, and closes the channel once there
// is none left.
func reap() <-chan exited {
	exits := make(chan exited)
	go func() {
		defer close(exits)
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, 0, nil)
			if err == syscall.EINTR {
				continue
			}
			if err != nil { // ECHILD: nothing left
				return
			}
			exits <- exited{pid: pid, status: ws}
		}
	}()
	return exits
}

// ender signals every process of the command but the helper.
type ender interface {
	signal(sig syscall.Signal)
}

// namespaceEnder is the PID namespace's init: kill(-1) reaches every other process in it.
type namespaceEnder struct{}

func (namespaceEnder) signal(sig syscall.Signal) {
	_ = syscall.Kill(-1, sig) // ESRCH: nothing left, as wanted
}

// subreaperEnder signals every descendant of self; being a child subreaper, every process
// the command started is one until it is reaped.
type subreaperEnder struct{ self int }

func (s *subreaperEnder) signal(sig syscall.Signal) {
	procs := descendants(s.self)
	for _, p := range procs {
		_ = unix.PidfdSendSignal(p.fd, sig, nil, 0) // ESRCH: it ended meanwhile
	}
	closeAll(procs)
}

// descendants returns the processes below pid, each held by a pidfd and checked to be the
// child of its parent after the pidfd was opened, so that a pid reused meanwhile is never
// taken for one of them.
func descendants(pid int) []proc {
	var procs []proc
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		parent := queue[0]
		for _, child := range children(parent) {
			fd, err := unix.PidfdOpen(child, 0)
			if err != nil {
				continue // gone already
			}
			if parentOf(child) != parent || unix.PidfdSendSignal(fd, 0, nil, 0) != nil {
				_ = unix.Close(fd) // a pidfd: closing it loses nothing
				continue
			}
			procs = append(procs, proc{pid: child, fd: fd})
			queue = append(queue, child)
		}
	}
	return procs
}

// children lists the children of every thread of pid (/proc/<pid>/task/<tid>/children).
func children(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var kids []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(b) {
			if k, err := strconv.Atoi(string(f)); err == nil {
				kids = append(kids, k)
			}
		}
	}
	return kids
}

// parentOf reads the parent pid from /proc/<pid>/stat; 0 if it cannot.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(string(f[1]))
	return ppid
}

// mountProc mounts a /proc that shows this PID namespace, in this mount namespace only.
func mountProc() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make the mounts private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	return nil
}

// defaultOpenFiles is RLIMIT_NOFILE when Limits.OpenFiles is not set.
const defaultOpenFiles = 65536

// setLimits sets the rlimits every process of the command inherits.
func setLimits(l Limits) error {
	set := func(name string, res int, v uint64) error {
		var cur unix.Rlimit
		if err := unix.Getrlimit(res, &cur); err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		v = min(v, cur.Max) // an unprivileged process cannot raise its hard limit
		if err := unix.Setrlimit(res, &unix.Rlimit{Cur: v, Max: v}); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		return nil
	}
	if err := set("core size", unix.RLIMIT_CORE, 0); err != nil {
		return err
	}
	files := defaultOpenFiles
	if l.OpenFiles > 0 {
		files = l.OpenFiles
	}
	if err := set("open files", unix.RLIMIT_NOFILE, uint64(files)); err != nil {
		return err
	}
	if l.MemoryMax > 0 {
		if err := set("memory_max", unix.RLIMIT_DATA, uint64(l.MemoryMax)); err != nil {
			return err
		}
	}
	if l.PidsMax > 0 {
		if err := set("pids_max", unix.RLIMIT_NPROC, uint64(l.PidsMax)); err != nil {
			return err
		}
	}
	return nil
}

// devices are the device files every command may write, as any program expects to.
var devices = []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}

// confine restricts this process, and everything it starts, with Landlock: everything is
// readable and executable, pathname sockets stay reachable and the network stays open, but
// only the paths in writable (and the usual device files) may be written, and signals reach
// no process outside. It returns the ABI applied; on an error,
// the path it concerns, if any.
func confine(writable []string) (abi int, path string, err error) {
	abi, err = llsyscall.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		return 0, "", fmt.Errorf("landlock is not available: %v", cmpErr(err, "ABI 0"))
	}
	rules := []landlock.Rule{
		landlock.RODirs("/").WithResolveUnix(),
		landlock.RWFiles(devices...).WithIoctlDev().IgnoreIfMissing(),
	}
	for _, w := range writable {
		fi, err := os.Stat(w)
		if err != nil {
			return 0, w, fmt.Errorf("writable path: %w", err)
		}
		if fi.IsDir() {
			rules = append(rules, landlock.RWDirs(w).WithRefer())
		} else {
			rules = append(rules, landlock.RWFiles(w))
		}
	}
	// Signals may not leave the domain (ABI 6 and later): without a PID namespace, the
	// command could otherwise signal every process of the server's user, the server too. The
	// helper, outside the domain, may still signal the command.
	cfg := landlock.Config{HandledAccessFS: landlock.V11.HandledAccessFS, Scoped: llsyscall.ScopeSignal}
	if err := cfg.BestEffort().Restrict(rules...); err != nil {
		return 0, "", fmt.Errorf("landlock: %w", err)
	}
	return abi, "", nil
}
