package builder

// cgroup v2 limits, where a subtree is delegated to slipway (systemd's Delegate=yes): each
// command's helper is started inside a cgroup of its own (clone3 into it, so not one process
// of the command runs outside), with memory.max, pids.max and cpu.weight from its Limits.
// When the command ends, cgroup.kill ends whatever is left, and memory.events and pids.events
// say whether it hit a limit. Elsewhere the limits are rlimits (boxinit.go's setLimits).
//
// Delegation: the server is in a cgroup delegated to it (its service's). A cgroup with
// controllers enabled for its children may hold no process itself, so slipway first moves
// itself into a child, "server", then enables the controllers, then makes one child per
// command beside it. The root cgroup is never taken for delegated.

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupControllers are the controllers slipway uses, each for one limit.
var cgroupControllers = []string{"memory", "pids", "cpu"}

// cgroupTree is the delegated cgroup slipway makes its commands' cgroups in.
type cgroupTree struct {
	dir         string          // absolute, under the cgroup2 mount
	controllers map[string]bool // enabled for the commands' cgroups
}

// findCgroup finds the cgroup delegated to this process and prepares it, or says why
// there is none.
func findCgroup() (*cgroupTree, string) {
	own, err := ownCgroup()
	if err != nil {
		return nil, err.Error()
	}
	mount, err := cgroup2Mount()
	if err != nil {
		return nil, err.Error()
	}
	if own == "/" {
		return nil, "slipway runs in the root cgroup: no subtree is delegated to it"
	}
	dir := filepath.Join(mount, own)
	if !delegated(dir) {
		return nil, fmt.Sprintf("cgroup %s is not delegated to slipway (systemd: Delegate=yes)", own)
	}
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control"} {
		if unix.Access(filepath.Join(dir, f), unix.W_OK) != nil {
			return nil, fmt.Sprintf("cgroup %s is delegated, but slipway may not write %s", own, filepath.Join(dir, f))
		}
	}
	// Leave the cgroup for a child of it, so that controllers can be enabled for children.
	server := filepath.Join(dir, "server")
	if err := os.Mkdir(server, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Sprintf("cgroup %s: %v", own, err)
	}
	if err := os.WriteFile(filepath.Join(server, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return nil, fmt.Sprintf("cgroup %s: move slipway into server/: %v", own, err)
	}
	t := &cgroupTree{dir: dir, controllers: map[string]bool{}}
	available, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers")) // none readable: none enabled
	for _, c := range cgroupControllers {
		if !slices.Contains(strings.Fields(string(available)), c) {
			continue
		}
		if os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0) == nil {
			t.controllers[c] = true
		}
	}
	return t, ""
}

// delegated tells a cgroup delegated to this process from one it merely may write (root may
// write every cgroup; systemd owns those it did not delegate): systemd marks the cgroup of a
// unit with Delegate=yes with the extended attribute trusted.delegate (user.delegate for a
// user's units), and delegation to an unprivileged user gives it the directory.
func delegated(dir string) bool {
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		buf := make([]byte, 8)
		if n, err := unix.Getxattr(dir, attr, buf); err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	var st unix.Stat_t
	return os.Getuid() != 0 && unix.Stat(dir, &st) == nil && int(st.Uid) == os.Getuid()
}

// ownCgroup reads this process's cgroup v2 path from /proc/self/cgroup ("0::/path").
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", errors.New("this process is in no cgroup v2 hierarchy")
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified beside cgroup v1).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close() // read only: closing it loses nothing
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "... mountpoint ... - fstype source options"
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// String says what the tree limits, for status and the log.
func (t *cgroupTree) String() string {
	var on []string
	for _, c := range cgroupControllers {
		if t.controllers[c] {
			on = append(on, c)
		}
	}
	if len(on) == 0 {
		return fmt.Sprintf("cgroup v2 in %s (no controller: only cgroup.kill)", t.dir)
	}
	return fmt.Sprintf("cgroup v2 in %s (%s)", t.dir, strings.Join(on, ", "))
}

// commandCgroup is one command's cgroup.
type commandCgroup struct {
	dir string
	fd  int // an O_PATH descriptor of dir, for clone3's CLONE_INTO_CGROUP
}

// newCommand makes a cgroup for one command with l's limits.
func (t *cgroupTree) newCommand(l Limits) (*commandCgroup, error) {
	dir := filepath.Join(t.dir, "cmd-"+strings.ToLower(rand.Text()[:12]))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make the command's cgroup: %w", err)
	}
	cg := &commandCgroup{dir: dir, fd: -1}
	set := func(file, value string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
			return fmt.Errorf("set %s: %w", file, err)
		}
		return nil
	}
	var err error
	if l.MemoryMax > 0 && t.controllers["memory"] {
		err = errors.Join(err, set("memory.max", strconv.FormatInt(l.MemoryMax, 10)))
		if _, statErr := os.Stat(filepath.Join(dir, "memory.swap.max")); statErr == nil {
			err = errors.Join(err, set("memory.swap.max", "0")) // swap would stretch memory.max
		}
	}
	if l.PidsMax > 0 && t.controllers["pids"] {
		err = errors.Join(err, set("pids.max", strconv.Itoa(l.PidsMax)))
	}
	if l.CPUWeight > 0 && t.controllers["cpu"] {
		err = errors.Join(err, set("cpu.weight", strconv.Itoa(l.CPUWeight)))
	}
	if err == nil {
		cg.fd, err = unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		cg.remove()
		return nil, err
	}
	return cg, nil
}

// hit names the limit the command reached, or "": memory.events counts the processes the
// OOM killer ended, pids.events the forks refused.
func (cg *commandCgroup) hit(l Limits) string {
	switch {
	case l.MemoryMax > 0 && eventCount(filepath.Join(cg.dir, "memory.events"), "oom_kill") > 0:
		return "memory_max reached"
	case l.PidsMax > 0 && eventCount(filepath.Join(cg.dir, "pids.events"), "max") > 0:
		return "pids_max reached"
	}
	return ""
}

// eventCount reads one counter of a cgroup events file ("name N" lines); 0 if it cannot.
func eventCount(file, name string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// cgroupDrain bounds how long end waits for a killed cgroup to empty.
const cgroupDrain = 5 * time.Second

// end kills whatever is left in the cgroup (cgroup.kill), waits for it to empty, and
// removes it. A cgroup that will not empty is left, and said so.
func (cg *commandCgroup) end() error {
	if err := os.WriteFile(filepath.Join(cg.dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kill the command's cgroup: %w", err)
	}
	deadline := time.Now().Add(cgroupDrain)
	for eventCount(filepath.Join(cg.dir, "cgroup.events"), "populated") != 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("the command's cgroup %s is still populated %s after cgroup.kill", cg.dir, cgroupDrain)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cg.remove()
}

func (cg *commandCgroup) remove() error {
	if cg.fd >= 0 {
		_ = unix.Close(cg.fd) // O_PATH: closing it loses nothing
		cg.fd = -1
	}
	if err := unix.Rmdir(cg.dir); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove the command's cgroup: %w", err)
	}
	return nil
}
