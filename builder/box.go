package builder

// The box: every command runs under a helper process, slipway's own binary re-executed as
// "slipway-box" (BoxMain), which confines itself and then starts `sh -c` (boxinit.go).
// Go cannot run code between fork and exec, so confinement that a process applies to itself
// (Landlock, rlimits) needs a process of ours on the far side of the exec: runc's init and
// gVisor use the same trick.
//
// Where the kernel lets an unprivileged process make a user namespace, the helper starts in
// a new user, PID and mount namespace, with the server's uid and gid mapped onto themselves:
// it is the namespace's init, and when it exits the kernel kills every process left in it,
// whatever they did to their environment, session or process group. It mounts a /proc of its
// own, so that $$ and /proc/<pid> agree and the command sees no process but its own. Elsewhere the helper is a child
// subreaper: every orphan of the command is reparented to it, and it ends them all.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	llsyscall "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// boxArg0 is the argv[0] that makes slipway's binary run as a command's helper (BoxMain).
const boxArg0 = "slipway-box"

// Sandbox is what confinement this kernel gives commands.
type Sandbox struct {
	Landlock   int    // Landlock ABI version, 0 if the kernel has none
	Namespaces bool   // each command gets its own user and PID namespace
	Why        string // why not, when Namespaces is false or Landlock is 0
	// Cgroups describes the cgroup v2 subtree commands are limited in, "" if none; then
	// CgroupsWhy says why, and the limits are rlimits.
	Cgroups    string
	CgroupsWhy string
}

// LimitsString is the line status and the log show of how commands are limited.
func (s Sandbox) LimitsString() string {
	if s.Cgroups != "" {
		return s.Cgroups
	}
	return "rlimits (" + s.CgroupsWhy + ")"
}

// String is the one line status and the log show: "landlock ABI 7, pid namespace".
func (s Sandbox) String() string {
	ll := "no landlock (writes not confined)"
	if s.Landlock > 0 {
		ll = fmt.Sprintf("landlock ABI %d", s.Landlock)
	}
	ns := "subreaper (no pid namespace)"
	if s.Namespaces {
		ns = "pid namespace"
	}
	return ll + ", " + ns
}

// Limits bound what one command may use. Zero fields set no limit. In a delegated cgroup v2
// subtree, MemoryMax, PidsMax and CPUWeight are memory.max, pids.max and cpu.weight of the
// command's cgroup (cgroup.go), where its controller is enabled; elsewhere the rlimits below.
type Limits struct {
	// MemoryMax bounds the command's writable private memory: each process's RLIMIT_DATA.
	// Not RLIMIT_AS: V8, the JVM and Go reserve far more address space than they use, and
	// an address-space limit breaks them.
	MemoryMax int64
	// PidsMax bounds how many processes the command may run at once (RLIMIT_NPROC, counted
	// in the command's own user namespace; root is exempt from it, as the kernel wants).
	PidsMax int
	// OpenFiles bounds each process's open files (RLIMIT_NOFILE); default 65536.
	OpenFiles int
	// CPUWeight is the command's cpu.weight (1 to 10000, default 100), with cgroups only.
	CPUWeight int
}

// boxSpec is what the server tells a helper, as JSON in its argv[1]. The command's
// environment is the helper's own; nothing secret goes in the spec.
type boxSpec struct {
	Run       string   `json:"run"`                 // sh -c Run
	Dir       string   `json:"dir"`                 // working directory
	Confine   bool     `json:"confine"`             // apply Landlock
	Writable  []string `json:"writable,omitempty"`  // what a confined command may write
	Limits    Limits   `json:"limits"`              //
	GraceMs   int64    `json:"grace_ms"`            // between SIGTERM and SIGKILL for what is left
	Namespace bool     `json:"namespace,omitempty"` // the helper is its PID namespace's init
	Probe     bool     `json:"probe,omitempty"`     // report and exit: the namespace probe
}

// boxStatus is what a helper reports on its status pipe (fd 3) before it exits.
type boxStatus struct {
	Status   int    `json:"status"`             // the shell's wait status (syscall.WaitStatus)
	Leftover int    `json:"leftover"`           // processes ended after the shell exited
	Landlock int    `json:"landlock"`           // the Landlock ABI applied, 0 if none
	Err      string `json:"err,omitempty"`      // the command could not be started: why
	ErrPath  string `json:"err_path,omitempty"` // the path Err concerns, if any
}

// exe is the binary the helpers run: this process's own, even if the file was replaced
// since it started (an upgrade in place).
const exe = "/proc/self/exe"

// boxCmd returns the helper's exec.Cmd for spec, in a new user and PID namespace if ns.
func boxCmd(spec boxSpec, ns bool) (*exec.Cmd, error) {
	spec.Namespace = ns
	arg, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode the box spec: %w", err)
	}
	cmd := &exec.Cmd{Path: exe, Args: []string{boxArg0, string(arg)}}
	attr := &syscall.SysProcAttr{Setpgid: true}
	if ns {
		uid, gid := os.Getuid(), os.Getgid()
		attr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
		// The helper mounts its /proc, which takes CAP_SYS_ADMIN in its namespace: a process
		// that is not root there loses its capabilities at exec unless they are ambient. The
		// intermediate drops them again before the command (execMain).
		attr.AmbientCaps = []uintptr{unix.CAP_SYS_ADMIN}
		// If the server dies, so does the namespace's init, and with it every process of
		// the command: nothing outlives a crash of the server.
		attr.Pdeathsig = syscall.SIGKILL
	} else {
		// The helper ends its descendants when it gets this, then exits.
		attr.Pdeathsig = syscall.SIGHUP
	}
	cmd.SysProcAttr = attr
	return cmd, nil
}

// kernel is what this kernel allows, found out once per process.
var kernel probe

// probe finds out once what this kernel allows.
type probe struct {
	once sync.Once
	sb   Sandbox
	tree *cgroupTree // the delegated cgroup subtree, nil if none
}

func (p *probe) get() (Sandbox, *cgroupTree) {
	p.once.Do(func() {
		p.sb = probeSandbox()
		var why string
		p.tree, why = findCgroup()
		if p.tree != nil {
			p.sb.Cgroups = p.tree.String()
		} else {
			p.sb.CgroupsWhy = why
		}
	})
	return p.sb, p.tree
}

// probeSandbox asks the kernel for its Landlock ABI and starts one helper in a new user and
// PID namespace, which reports and exits.
func probeSandbox() Sandbox {
	var sb Sandbox
	var why []string
	if v, err := llsyscall.LandlockGetABIVersion(); err == nil && v > 0 {
		sb.Landlock = v
	} else {
		why = append(why, fmt.Sprintf("landlock: %v", cmpErr(err, "not enabled")))
	}
	cmd, err := boxCmd(boxSpec{Probe: true}, true)
	if err == nil {
		var out []byte
		out, err = cmd.CombinedOutput()
		if msg := strings.TrimSpace(string(out)); err != nil && msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
	}
	if err != nil {
		why = append(why, fmt.Sprintf("user and pid namespace: %v", err))
	} else {
		sb.Namespaces = true
	}
	sb.Why = strings.Join(why, "; ")
	return sb
}

func cmpErr(err error, otherwise string) string {
	if err != nil {
		return err.Error()
	}
	return otherwise
}
