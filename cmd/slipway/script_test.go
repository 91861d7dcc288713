package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/slipway/slipway/builder"
)

// The end-to-end tests: testscript runs the real slipway binary (this test binary, re-run
// as "slipway"), and the scripts push to it with the real git over the real ssh on loopback.
func TestMain(m *testing.M) {
	builder.BoxMain() // the test binary is also the commands' helper
	testscript.Main(m, map[string]func(){"slipway": func() { os.Exit(runMain()) }})
}

// sudoersRule lets nobody run /usr/bin/true as root without a password: .ci/run installs it,
// for hook-sudo.
const sudoersRule = "/etc/sudoers.d/slipway-test"

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitFor bounds every wait of a script; the scripts wait for events, not for time.
const waitFor = 60 * time.Second

func TestScripts(t *testing.T) {
	testscript.Run(t, scriptParams(t, "testdata/script"))
}

// scriptParams runs the scripts in dir with slipway's script commands.
func scriptParams(t *testing.T, dir string) testscript.Params {
	for _, tool := range []string{"git", "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the end-to-end tests need %s on PATH (.ci/run installs it): %v", tool, err)
		}
	}
	return testscript.Params{
		Dir:                 dir,
		Setup:               setupScript,
		RequireExplicitExec: true,
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "root": // slipway refuses some settings to root; such scripts serve as nobody
				return os.Geteuid() == 0, nil
			case "sudo": // root, to serve as nobody, and the sudoers rule .ci/run installs for nobody
				ok := os.Geteuid() == 0 && fileExists(sudoersRule)
				if _, err := exec.LookPath("sudo"); err != nil {
					ok = false
				}
				if !ok && os.Getenv("CI") != "" {
					return false, fmt.Errorf("CI must run as root with sudo and %s (.ci/run installs them)", sudoersRule)
				}
				return ok, nil
			case "chromium": // the dashboard's browser tests
				_, err := chromium()
				if err != nil && os.Getenv("CI") != "" {
					return false, fmt.Errorf("CI must have chromium (.ci/run installs it): %v", err)
				}
				return err == nil, nil
			case "npm", "go": // real builds against the npm registry and the Go module proxy
				_, err := exec.LookPath(cond)
				if err != nil && os.Getenv("CI") != "" {
					return false, fmt.Errorf("CI must have %s on PATH (.ci/run installs it)", cond)
				}
				return err == nil, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitfile":   cmdWaitFile,
			"linkto":     cmdLinkTo,
			"noproc":     cmdNoProc,
			"waitnoproc": cmdWaitNoProc,
			"killssh":    cmdKillSSH,
			"countdir":   cmdCountDir,
			"setvar":     cmdSetVar,
			"waitgone":   cmdWaitGone,
			"sshas":      cmdSSHAs,
			"waitgrep":   cmdWaitGrep,
			"waitglob":   cmdWaitGlob,
			"fleethost":  cmdFleetHost,
			"signal":     cmdSignal,
			"peakrss":    cmdPeakRSS,
			"flood":      cmdFlood,
			"procfds":    cmdProcFDs,
			"httpapp":    cmdHTTPApp,
			"webhook":    cmdWebhook,
			"metric":     cmdMetric,
			"waitmetric": cmdWaitMetric,
			"browser":    cmdBrowser,
		},
	}
}

// setupScript makes git and ssh hermetic: HOME is $WORK/home, no system config, keys for
// alice and bob in $WORK/authorized_keys, a key for eve that is not, and GIT_SSH_COMMAND
// pushing as alice. $SSH_ALICE, $SSH_BOB and $SSH_EVE push as the others.
func setupScript(env *testscript.Env) error {
	home := filepath.Join(env.WorkDir, "home")
	keys := filepath.Join(env.WorkDir, "keys")
	for _, d := range []string{home, keys} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	var authorized []byte
	for _, name := range []string{"alice", "bob", "eve"} {
		key := filepath.Join(keys, name)
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key).CombinedOutput(); err != nil {
			return fmt.Errorf("ssh-keygen: %v: %s", err, out)
		}
		if name == "eve" {
			continue
		}
		pub, err := os.ReadFile(key + ".pub")
		if err != nil {
			return err
		}
		authorized = append(authorized, pub...)
	}
	if err := os.WriteFile(filepath.Join(env.WorkDir, "authorized_keys"), authorized, 0o644); err != nil {
		return err
	}
	gitconfig := "[user]\n\tname = Test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
	if err := os.WriteFile(filepath.Join(home, ".gitconfig"), []byte(gitconfig), 0o644); err != nil {
		return err
	}
	ssh := func(name string) string {
		return "ssh -F /dev/null -i " + filepath.Join(keys, name) + " -o IdentitiesOnly=yes -o IdentityAgent=none" +
			" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
	}
	env.Setenv("HOME", home)
	env.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	env.Setenv("GIT_TERMINAL_PROMPT", "0")
	env.Setenv("SSH_ALICE", ssh("alice"))
	env.Setenv("SSH_BOB", ssh("bob"))
	env.Setenv("SSH_EVE", ssh("eve"))
	env.Setenv("GIT_SSH_COMMAND", ssh("alice"))
	env.Setenv("KEYS", keys)
	return nil
}

// waitfile FILE [VAR [PORTVAR]]: wait until FILE holds a whole line; set VAR to it, and
// PORTVAR to its port when it is a host:port address.
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 3 {
		ts.Fatalf("usage: waitfile FILE [VAR [PORTVAR]]")
	}
	file := ts.MkAbs(args[0])
	deadline := time.Now().Add(waitFor)
	for {
		b, err := os.ReadFile(file)
		if err == nil && len(b) > 0 && bytes.HasSuffix(b, []byte("\n")) {
			line := strings.SplitN(string(b), "\n", 2)[0]
			if len(args) >= 2 {
				ts.Setenv(args[1], line)
			}
			if len(args) == 3 {
				ts.Setenv(args[2], line[strings.LastIndexByte(line, ':')+1:])
			}
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitfile %s: not written within %s", args[0], waitFor)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sshas NAME ARGS...: run an operator command over the real ssh as NAME's key, against the
// server at $PORT: ssh -p $PORT git@127.0.0.1 ARGS... (stdout and stderr as for exec).
func cmdSSHAs(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: sshas NAME ARGS...")
	}
	sshArgs := []string{"-F", "/dev/null", "-i", filepath.Join(ts.Getenv("KEYS"), args[0]),
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-p", ts.Getenv("PORT"), "git@127.0.0.1"}
	err := ts.Exec("ssh", append(sshArgs, args[1:]...)...)
	if err != nil {
		ts.Logf("[%v]", err)
	}
	if (err == nil) == neg {
		ts.Fatalf("sshas %s: unexpected command %s", strings.Join(args, " "), map[bool]string{true: "success", false: "failure"}[err == nil])
	}
}

// waitgrep FILE REGEXP: wait until FILE has a line matching REGEXP.
func cmdWaitGrep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitgrep FILE REGEXP")
	}
	re := regexp.MustCompile("(?m)" + args[1])
	deadline := time.Now().Add(waitFor)
	for {
		if b, err := os.ReadFile(ts.MkAbs(args[0])); err == nil && re.Match(b) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitgrep %s: no line matching %q within %s", args[0], args[1], waitFor)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitglob PATTERN: wait until a path matches PATTERN (filepath.Glob), e.g. a spare that
// slipway makes in the background after a deploy.
func cmdWaitGlob(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitglob PATTERN")
	}
	deadline := time.Now().Add(waitFor)
	for {
		if m, err := filepath.Glob(ts.MkAbs(args[0])); err != nil {
			ts.Fatalf("waitglob: %v", err)
		} else if len(m) > 0 {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitglob %s: nothing matched within %s", args[0], waitFor)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signal TERM|HUP PATTERN: send the signal to this script's processes (working directory
// $WORK) whose command line contains PATTERN. testscript's kill knows only INT and KILL.
func cmdSignal(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: signal TERM|HUP PATTERN")
	}
	sig := map[string]syscall.Signal{"TERM": syscall.SIGTERM, "HUP": syscall.SIGHUP}[args[0]]
	if sig == 0 {
		ts.Fatalf("signal: unknown signal %s", args[0])
	}
	work := ts.Getenv("WORK")
	var sent int
	for _, pid := range findProcs(args[1]) {
		if cwd, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "cwd")); err == nil && cwd == work {
			syscall.Kill(pid, sig)
			sent++
		}
	}
	if sent == 0 {
		ts.Fatalf("signal: no process of this script matches %q", args[1])
	}
}

// flood N SRC ADDR: open N TCP connections from the local address SRC to ADDR that send
// nothing, held until the script ends, as a client exhausting the server's connections
// would. The server may close them at once; that is not an error.
func cmdFlood(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: flood N SRC ADDR")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("flood: %v", err)
	}
	conns := make([]net.Conn, 0, n)
	ts.Defer(func() {
		for _, c := range conns {
			c.Close() // the test is over; the server may have closed it already
		}
	})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(args[1])}}
	for range n {
		c, err := d.Dial("tcp", args[2])
		if err != nil {
			ts.Fatalf("flood: connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
}

// procfds PATTERN VAR: set VAR to the number of open file descriptors of this script's
// process whose command line contains PATTERN, and fail if it has a zombie child.
func cmdProcFDs(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: procfds PATTERN VAR")
	}
	pid := scriptProc(ts, args[0])
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		ts.Fatalf("procfds: %v", err)
	}
	dirs, _ := os.ReadDir("/proc") // a process that vanished meanwhile is not a zombie of ours
	for _, d := range dirs {
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after its last ')'.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[0] == "Z" && fields[1] == strconv.Itoa(pid) {
			ts.Fatalf("procfds: %s has a zombie child %s", args[0], d.Name())
		}
	}
	ts.Logf("%s (%d) has %d open file descriptors", args[0], pid, len(fds))
	ts.Setenv(args[1], strconv.Itoa(len(fds)))
}

// scriptProc is the pid of this script's process (working directory $WORK) whose command
// line contains pattern.
func scriptProc(ts *testscript.TestScript, pattern string) int {
	work := ts.Getenv("WORK")
	for _, pid := range findProcs(pattern) {
		if cwd, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "cwd")); err == nil && cwd == work {
			return pid
		}
	}
	ts.Fatalf("no process of this script matches %q", pattern)
	return 0
}

// peakrss PATTERN MAXMB: this script's process whose command line contains PATTERN has
// used at most MAXMB megabytes of memory at its peak (VmHWM). It logs the figure.
func cmdPeakRSS(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: peakrss PATTERN MAXMB")
	}
	maxMB, err := strconv.Atoi(args[1])
	if err != nil {
		ts.Fatalf("peakrss: %v", err)
	}
	pid := scriptProc(ts, args[0])
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		ts.Fatalf("peakrss: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if kb, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")))
			if err != nil {
				ts.Fatalf("peakrss: VmHWM %q: %v", kb, err)
			}
			ts.Logf("peak RSS of %d (%s): %.1f MB", pid, args[0], float64(n)/1024)
			if n > maxMB*1024 {
				ts.Fatalf("peakrss: %s peaked at %.1f MB, more than %d MB", args[0], float64(n)/1024, maxMB)
			}
			return
		}
	}
	ts.Fatalf("peakrss: no VmHWM for %d", pid)
}

// waitgone PATH: wait until PATH no longer exists.
func cmdWaitGone(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitgone PATH")
	}
	deadline := time.Now().Add(waitFor)
	for {
		if _, err := os.Lstat(ts.MkAbs(args[0])); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitgone %s: still there after %s", args[0], waitFor)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// setvar VAR: set VAR to the last command's standard output, trimmed.
// setvar VAR [REGEXP]: VAR is the last command's stdout, trimmed; with REGEXP, what its
// first group matched there.
func cmdSetVar(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: setvar VAR [REGEXP]")
	}
	out := ts.ReadFile("stdout")
	if len(args) == 1 {
		ts.Setenv(args[0], strings.TrimSpace(out))
		return
	}
	m := regexp.MustCompile(args[1]).FindStringSubmatch(out)
	if len(m) < 2 {
		ts.Fatalf("setvar %s: %q matches nothing (or has no group) in %q", args[0], args[1], out)
	}
	ts.Setenv(args[0], m[1])
}

// linkto LINK REGEXP: LINK is a symlink whose target matches REGEXP (anchored).
func cmdLinkTo(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: linkto LINK REGEXP")
	}
	target, err := os.Readlink(ts.MkAbs(args[0]))
	ok := err == nil && regexp.MustCompile("^(?:"+args[1]+")$").MatchString(target)
	if ok == neg {
		ts.Fatalf("linkto %s: target %q (err %v), want match %v for %q", args[0], target, err, !neg, args[1])
	}
}

// noproc PATTERN: no running process has PATTERN in its command line.
func cmdNoProc(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: noproc PATTERN")
	}
	if pids := findProcs(args[0]); len(pids) > 0 {
		ts.Fatalf("noproc %q: still running: %v", args[0], pids)
	}
}

// httpapp ADDRFILE ROOT: serve, on 127.0.0.1, the files of ROOT/current/public as a web
// server in front of the deploy root would (the symlink resolved on every request), until
// the script ends, and write the address to ADDRFILE. A file named "status" in public/
// holds the status code of every answer (default 200). It stands for the app a health
// check checks.
func cmdHTTPApp(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: httpapp ADDRFILE ROOT")
	}
	public := filepath.Join(ts.MkAbs(args[1]), "current", "public")
	serveHTTP(ts, args[0], func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusOK
		if b, err := os.ReadFile(filepath.Join(public, "status")); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				status = n
			}
		}
		body, err := os.ReadFile(filepath.Join(public, filepath.Clean("/"+r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		w.Write(body)
	})
}

// serveHTTP serves handler on 127.0.0.1 until the script ends, and writes the address to
// addrFile.
func serveHTTP(ts *testscript.TestScript, addrFile string, handler http.HandlerFunc) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ts.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(l)
	ts.Defer(func() { srv.Close() })
	if err := os.WriteFile(ts.MkAbs(addrFile), []byte(l.Addr().String()+"\n"), 0o644); err != nil {
		ts.Fatalf("write %s: %v", addrFile, err)
	}
}

// webhook ADDRFILE DIR SECRET: receive notifications on 127.0.0.1 until the script ends, and
// write the address to ADDRFILE. Each POST whose X-Slipway-Signature is the HMAC-SHA256 of
// its body under SECRET ("-": none expected) is answered 200 and saved whole as
// DIR/EVENT.json (the newest of each event), with its delivery id appended to
// DIR/deliveries; a wrong or missing signature is answered 401 and saved as DIR/bad. While
// DIR/down exists, every request is answered 503.
func cmdWebhook(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: webhook ADDRFILE DIR SECRET")
	}
	dir := ts.MkAbs(args[1])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		ts.Fatalf("webhook: %v", err)
	}
	secret := args[2]
	var mu sync.Mutex // the files are written one request at a time
	serveHTTP(ts, args[0], func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := os.Stat(filepath.Join(dir, "down")); err == nil {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if secret != "-" {
			m := hmac.New(sha256.New, []byte(secret))
			m.Write(body)
			if want := "sha256=" + hex.EncodeToString(m.Sum(nil)); !hmac.Equal([]byte(r.Header.Get("X-Slipway-Signature")), []byte(want)) {
				os.WriteFile(filepath.Join(dir, "bad"), body, 0o644)
				http.Error(w, "bad signature", http.StatusUnauthorized)
				return
			}
		}
		event := filepath.Base(r.Header.Get("X-Slipway-Event"))
		os.WriteFile(filepath.Join(dir, event+".json"), append(body, '\n'), 0o644)
		f, err := os.OpenFile(filepath.Join(dir, "deliveries"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%s %s\n", event, r.Header.Get("X-Slipway-Delivery"))
			f.Close()
		}
	})
}

// waitnoproc PATTERN: wait until no process's command line contains PATTERN: processes the
// kernel ends as a consequence of another's death (a PID namespace whose init died) are gone
// a moment after it, not at once.
func cmdWaitNoProc(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitnoproc PATTERN")
	}
	deadline := time.Now().Add(waitFor)
	for {
		pids := findProcs(args[0])
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitnoproc %q: still running after %s: %v", args[0], waitFor, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killssh PORT: SIGKILL every ssh client connected to PORT, as a pusher whose
// connection dies would (killing git alone leaves its ssh child connected).
func cmdKillSSH(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: killssh PORT")
	}
	pids := findProcs("-p " + args[0] + " ")
	if len(pids) == 0 {
		ts.Fatalf("killssh: no ssh client on port %s", args[0])
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// countdir DIR N: DIR has exactly N entries.
func cmdCountDir(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: countdir DIR N")
	}
	want, err := strconv.Atoi(args[1])
	if err != nil {
		ts.Fatalf("countdir: %v", err)
	}
	entries, err := os.ReadDir(ts.MkAbs(args[0]))
	if err != nil {
		ts.Fatalf("countdir: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if (len(entries) == want) == neg {
		ts.Fatalf("countdir %s: %d entries %v, want %d", args[0], len(entries), names, want)
	}
}

// findProcs returns the pids of processes (not this one) whose NUL-separated command line,
// joined with spaces, contains pattern.
func findProcs(pattern string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		line := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(line, pattern) {
			pids = append(pids, pid)
		}
	}
	return pids
}
