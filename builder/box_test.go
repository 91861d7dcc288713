package builder

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// boxMode is one of the two ways a command's processes are held: a PID namespace, or, where
// the kernel allows no user namespace, a subreaper.
type boxMode struct {
	name         string
	noNamespaces bool
}

func (m boxMode) builder(t *testing.T, cfg Config) *Builder {
	t.Helper()
	b := newTestBuilder(t, cfg)
	b.noNamespaces = m.noNamespaces
	return b
}

// boxModes returns the modes this kernel can run: both where it allows user namespaces (as
// on CI, where their absence fails the test), only the subreaper elsewhere.
func boxModes(t *testing.T) []boxMode {
	t.Helper()
	modes := []boxMode{{name: "subreaper", noNamespaces: true}}
	sb := New(Config{}, zerolog.Nop()).Sandbox()
	switch {
	case sb.Namespaces:
		modes = append(modes, boxMode{name: "namespace"})
	case os.Getenv("CI") != "":
		t.Fatalf("CI's kernel must allow user and PID namespaces: %s", sb.Why)
	default:
		t.Logf("only the subreaper mode runs here: %s", sb.Why)
	}
	return modes
}

// needLandlock fails the test where the kernel has no Landlock: the confined path cannot
// be tested there, and CI's kernel has it.
func needLandlock(t *testing.T) {
	t.Helper()
	if sb := New(Config{}, zerolog.Nop()).Sandbox(); sb.Landlock == 0 {
		t.Fatalf("this kernel has no Landlock, so confinement cannot be tested here: %s", sb.Why)
	}
}

func TestSandboxString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		sb   Sandbox
		want string
	}{
		{Sandbox{Landlock: 7, Namespaces: true}, "landlock ABI 7, pid namespace"},
		{Sandbox{}, "no landlock (writes not confined), subreaper (no pid namespace)"},
	}
	for _, tt := range tests {
		if got := tt.sb.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

// A confined command writes where it may and nowhere else: not a file or directory outside,
// not through a symlink that leads outside, not by renaming into it; reads stay open.
func TestRunConfined(t *testing.T) {
	needLandlock(t)
	t.Parallel()
	for _, mode := range boxModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			release := filepath.Join(root, "releases", "new")
			other := filepath.Join(root, "releases", "old")
			shared := filepath.Join(root, "shared")
			extra := filepath.Join(root, "extra")
			for _, d := range []string{release, other, shared, extra} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			writeFile(t, filepath.Join(other, "index.html"), "old\n")
			if err := os.Symlink(filepath.Join(shared, "storage"), filepath.Join(release, "storage")); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(shared, "storage"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(other, filepath.Join(release, "escape")); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(root, "tmp-cmd")

			script := `
try() { if sh -c "$1" 2>/dev/null; then echo "yes: $2"; else echo "no: $2"; fi; }
try 'echo x > built' release
try 'mkdir -p a/b && echo x > a/b/c && mv a/b/c a/c' rename-within
try 'echo x > storage/upload' shared-through-link
try 'echo x > $EXTRA/f' writable
try 'echo x > $TMPDIR/f' tmpdir
try 'echo x > ../old/index.html' other-release
try 'echo x >> escape/index.html' through-symlink
try 'mkdir ../old/d' mkdir-outside
try 'rm ../old/index.html' rm-outside
try 'mv built ../old/moved' rename-out
try 'echo x > $ROOT/top' parent
try 'cat ../old/index.html >/dev/null' read-outside
try 'echo x > /dev/null' dev-null
`
			b := mode.builder(t, Config{})
			var out recorder
			c := Command{
				Name: "build 1/1", Run: script, Dir: release,
				Env:      append(slices.Clone(testEnv), "EXTRA="+extra, "ROOT="+root),
				Confined: true, Writable: []string{release, shared, extra}, TempDir: tmp,
			}
			if err := runBounded(t, b, t.Context(), c, &out); err != nil {
				t.Fatalf("Run: %v", err)
			}
			got := strings.Join(out.Lines(), "")
			want := `yes: release
yes: rename-within
yes: shared-through-link
yes: writable
yes: tmpdir
no: other-release
no: through-symlink
no: mkdir-outside
no: rm-outside
no: rename-out
no: parent
yes: read-outside
yes: dev-null
`
			if got != want {
				t.Errorf("what the command could do:\n%s\nwant:\n%s", got, want)
			}
			if b, err := os.ReadFile(filepath.Join(other, "index.html")); err != nil || string(b) != "old\n" {
				t.Errorf("the other release's file = %q, %v; want it untouched", b, err)
			}
			for _, p := range []string{filepath.Join(root, "top"), filepath.Join(other, "d"), filepath.Join(other, "moved")} {
				if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s exists (%v): the command wrote outside", p, err)
				}
			}
			if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("TMPDIR %s is left after the command: %v", tmp, err)
			}
		})
	}
}

// Unconfined (a hook, or sandbox = "off"), the command writes as the server's user, in
// either mode.
func TestRunUnconfined(t *testing.T) {
	t.Parallel()
	for _, mode := range boxModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			release := filepath.Join(root, "release")
			if err := os.Mkdir(release, 0o755); err != nil {
				t.Fatal(err)
			}
			b := mode.builder(t, Config{})
			c := Command{Name: "hook", Run: `echo x > "$ROOT/outside"; readlink /proc/self/ns/user`, Dir: release, Env: append(slices.Clone(testEnv), "ROOT="+root),
				Writable: []string{release}}
			var out recorder
			if err := runBounded(t, b, t.Context(), c, &out); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if _, err := os.Stat(filepath.Join(root, "outside")); err != nil {
				t.Errorf("the command could not write outside its release: %v", err)
			}
			// Not in a user namespace of its own, where a setuid program (sudo) would not work.
			own, err := os.Readlink("/proc/self/ns/user")
			if err != nil {
				t.Fatal(err)
			}
			if got := out.Lines(); !slices.Equal(got, []string{own + "\n"}) {
				t.Errorf("the command's user namespace = %q, want the server's %q", got, own)
			}
		})
	}
}

// A confined command cannot signal a process outside its box, even where no PID namespace
// hides them (here, the test process itself); unconfined, it can.
func TestRunConfinedSignals(t *testing.T) {
	needLandlock(t)
	t.Parallel()
	b := boxMode{name: "subreaper", noNamespaces: true}.builder(t, Config{})
	for _, confined := range []bool{false, true} {
		dir := t.TempDir()
		var out recorder
		c := Command{Name: "build 1/1", Run: `if kill -0 $OUTSIDE; then echo reached; else echo refused; fi`, Dir: dir,
			Env: append(slices.Clone(testEnv), "OUTSIDE="+strconv.Itoa(os.Getpid())), Confined: confined, Writable: []string{dir}}
		if err := runBounded(t, b, t.Context(), c, &out); err != nil {
			t.Fatalf("Run: %v", err)
		}
		want := "reached\n"
		if confined {
			want = "refused\n"
		}
		if got := out.Lines(); len(got) == 0 || got[len(got)-1] != want {
			t.Errorf("confined=%v: output %q, want it to end with %q", confined, got, want)
		}
	}
}

// A writable path that does not exist is refused before the command runs, with its path.
func TestRunConfinedMissingWritable(t *testing.T) {
	needLandlock(t)
	t.Parallel()
	b := newTestBuilder(t, Config{})
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	var out recorder
	err := runBounded(t, b, t.Context(), Command{Name: "build 1/1", Run: "echo ran", Dir: dir, Env: testEnv, Confined: true, Writable: []string{dir, missing}}, &out)
	var se *SetupError
	if !errors.As(err, &se) || se.Path != missing {
		t.Fatalf("Run = %v, want a *SetupError for %s", err, missing)
	}
	if got := out.Lines(); len(got) > 0 {
		t.Errorf("the command ran: %q", got)
	}
}

// The limits every command gets, and the ones configured.
func TestRunLimits(t *testing.T) {
	t.Parallel()
	for _, mode := range boxModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			b := mode.builder(t, Config{})
			var out recorder
			dir := t.TempDir()
			c := Command{Name: "build 1/1", Run: "ulimit -c; ulimit -n; ulimit -d", Dir: dir, Env: testEnv,
				Confined: true, Writable: []string{dir}, Limits: Limits{MemoryMax: 256 << 20, OpenFiles: 1000}}
			if err := runBounded(t, b, t.Context(), c, &out); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got, want := out.Lines(), []string{"0\n", "1000\n", strconv.Itoa(256<<10) + "\n"}; !slices.Equal(got, want) {
				t.Errorf("ulimit -c, -n, -d = %q, want %q", got, want)
			}

			// A command that allocates more than MemoryMax fails.
			out = recorder{}
			c = Command{Name: "build 1/1", Run: "dd if=/dev/zero of=/dev/null bs=300M count=1", Dir: dir, Env: testEnv,
				Confined: true, Writable: []string{dir}, Limits: Limits{MemoryMax: 64 << 20}}
			err := runBounded(t, b, t.Context(), c, &out)
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code == 0 {
				t.Fatalf("Run = %v, want the 300 MiB allocation to fail under a 64 MiB memory_max", err)
			}
			if got := strings.Join(out.Lines(), ""); !strings.Contains(got, "memory exhausted") {
				t.Errorf("output = %q, want dd's memory exhausted", got)
			}
		})
	}
}

// In a namespace, the command's /proc is its own: $$ names the shell there, and no process of
// the server shows.
func TestRunOwnProc(t *testing.T) {
	t.Parallel()
	modes := boxModes(t)
	if len(modes) < 2 {
		t.Skip("no user namespaces on this kernel: boxModes said why")
	}
	b := newTestBuilder(t, Config{})
	var out recorder
	dir := t.TempDir()
	c := Command{Name: "build 1/1", Run: `cat /proc/$$/comm; ls /proc | grep -c '^[0-9]'`, Dir: dir, Env: testEnv, Confined: true, Writable: []string{dir}}
	if err := runBounded(t, b, t.Context(), c, &out); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := out.Lines()
	if len(got) != 2 || got[0] != "sh\n" {
		t.Fatalf("output = %q, want sh's comm and a count of processes", got)
	}
	// The helper, the shell, ls and grep.
	if n, err := strconv.Atoi(strings.TrimSpace(got[1])); err != nil || n > 4 {
		t.Errorf("the command sees %q processes in /proc, want its own 4 at most", got[1])
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testCgroup makes a cgroup for the test under the cgroup v2 mount, standing for the subtree
// systemd delegates to slipway, with whatever controllers this kernel gives cgroup v2 there.
// It needs root: the test fails without it where CI runs (as root), and says why elsewhere.
func testCgroup(t *testing.T) *cgroupTree {
	t.Helper()
	mount, err := cgroup2Mount()
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("making a cgroup outside a delegated subtree needs root")
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI runs as root with cgroup v2 mounted: %v", err)
		}
		t.Skipf("the cgroup mode cannot be tested here: %v", err)
	}
	dir := filepath.Join(mount, "slipway-test-"+strings.ToLower(strconv.Itoa(os.Getpid()))+"-"+strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove the test's cgroup: %v", err)
		}
	})
	tree := &cgroupTree{dir: dir, controllers: map[string]bool{}}
	available, _ := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	for _, c := range cgroupControllers {
		if slices.Contains(strings.Fields(string(available)), c) && os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0) == nil {
			tree.controllers[c] = true
		}
	}
	return tree
}

// In a cgroup subtree, each command runs in a cgroup of its own, in either mode, which
// cgroup.kill ends and slipway removes: nothing is left, not even the cgroup. Where this
// kernel has the memory and pids controllers in cgroup v2, a memory hog and a fork tree each
// fail naming the limit; where it has not (this machine binds them to cgroup v1), the test
// says so and checks the rest.
func TestRunCgroup(t *testing.T) {
	t.Parallel()
	tree := testCgroup(t)
	t.Logf("cgroup mode in %s", tree)
	for _, mode := range boxModes(t) {
		t.Run(mode.name, func(t *testing.T) {
			b := mode.builder(t, Config{})
			b.cgroups = tree
			dir := t.TempDir()
			nap := napFor(t)
			var out recorder
			c := Command{Name: "build 1/1", Run: "setsid env -i /bin/sleep $NAP >/dev/null 2>&1 & cat /proc/self/cgroup", Dir: dir,
				Env: append(slices.Clone(testEnv), "NAP="+nap), Confined: true, Writable: []string{dir}}
			if err := runBounded(t, b, t.Context(), c, &out); err != nil {
				t.Fatalf("Run: %v", err)
			}
			rel := strings.TrimPrefix(tree.dir, mustMount(t))
			if got := strings.Join(out.Lines(), ""); !strings.Contains(got, "0::"+rel+"/cmd-") {
				t.Errorf("the command's cgroups are %q, want one under %s", got, rel)
			}
			if left := sleepers(t, nap); len(left) > 0 {
				t.Errorf("processes %v still run", left)
			}
			if kids := childCgroups(t, tree.dir); len(kids) > 0 {
				t.Errorf("the command's cgroups %v are left", kids)
			}
		})
	}
	if !tree.controllers["memory"] || !tree.controllers["pids"] {
		t.Logf("this kernel gives cgroup v2 no memory or pids controller here: memory_max and pids_max are not tested in the cgroup mode")
		return
	}
	b := newTestBuilder(t, Config{})
	b.cgroups = tree
	for _, tt := range []struct {
		run, limit string
		l          Limits
	}{
		{"head -c 400M /dev/zero | tail -c 1 >/dev/null", "memory_max reached", Limits{MemoryMax: 64 << 20}},
		{"i=0; while [ $i -lt 255 ]; do sleep 100 & i=$((i+1)); done", "pids_max reached", Limits{PidsMax: 32}},
	} {
		dir := t.TempDir()
		err := runBounded(t, b, t.Context(), Command{Name: "build 1/1", Run: tt.run, Dir: dir, Env: testEnv, Confined: true, Writable: []string{dir}, Limits: tt.l}, &recorder{})
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Limit != tt.limit {
			t.Errorf("%s: Run = %v, want an *ExitError naming %s", tt.run, err, tt.limit)
		}
	}
}

func mustMount(t *testing.T) string {
	t.Helper()
	m, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// childCgroups lists the cgroups in dir.
func childCgroups(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, e := range ents {
		if e.IsDir() {
			kids = append(kids, e.Name())
		}
	}
	return kids
}

// findCgroup takes a cgroup for delegated only if systemd marked it so (trusted.delegate),
// moves the server into a server/ child of it, and enables the controllers it can; a cgroup
// root may write but nobody delegated is left alone. Each case runs the test binary, started
// in the cgroup (clone3), as the process that looks.
func TestFindCgroup(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		delegate  bool
		want      string
		serverDir bool
	}{
		{"delegated", true, "cgroup v2 in ", true},
		{"not delegated", false, "none: cgroup ", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tree := testCgroup(t)
			if tt.delegate {
				if err := unix.Setxattr(tree.dir, "trusted.delegate", []byte("1"), 0); err != nil {
					t.Fatalf("mark the cgroup delegated: %v", err)
				}
			}
			fd, err := unix.Open(tree.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			cmd := exec.Command(exe)
			cmd.Env = append(os.Environ(), "SLIPWAY_TEST_FIND_CGROUP=1")
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if !strings.HasPrefix(string(out), tt.want) {
				t.Errorf("findCgroup in %s = %q, want %q...", tree.dir, out, tt.want)
			}
			server := filepath.Join(tree.dir, "server")
			if _, err := os.Stat(server); (err == nil) != tt.serverDir {
				t.Errorf("%s exists: %v, want %v", server, err == nil, tt.serverDir)
			}
			if tt.serverDir {
				if err := os.Remove(server); err != nil { // the process that moved there has exited
					t.Errorf("remove %s: %v", server, err)
				}
			}
		})
	}
}
