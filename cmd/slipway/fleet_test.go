package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/slipway/slipway/internal/fleet/fleettest"
)

// Fleet targets for the scripts: real OpenSSH sshd, one per loopback address (127.0.0.2,
// 127.0.0.3, ...), each in its own mount namespace where $WORK/hosts/NAME is bind-mounted
// on $WORK/deploy, so that every target sees its own deploy root at the environment's
// path, as separate servers would. They need root (unshare, mount, and sshd logging root
// in) and sshd's /run/sshd; CI has both (.ci/run).
//
//	fleethost [FLAGS] NAME IP   start target NAME on IP; $NAME_PORT is its port. The
//	                            slipway identity ($WORK/fleet/id) is authorized there and its
//	                            host key goes into $WORK/fleet/known_hosts. $WORK/hosts/NAME
//	                            is its deploy root. Flags:
//	    -unknown                its host key is not put into known_hosts
//	    -tmpfs SIZE             its deploy root is a tmpfs of SIZE (a disk that fills up),
//	                            seen from outside at $NAME_ROOT$WORK/deploy
//	    -slowtar                its tar writes $WORK/fleet/NAME/tar-started and then waits
//	                            (for a script to kill the host mid-transfer)
//	fleethost stop NAME         kill every process of the host (a host that dies)
var (
	fleetMu    sync.Mutex // scripts run in parallel
	fleetHosts = map[*testscript.TestScript]map[string]*exec.Cmd{}
)

func cmdFleetHost(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: fleethost [-unknown] NAME IP | fleethost stop NAME")
	}
	if args[0] == "stop" {
		fleetMu.Lock()
		cmd := fleetHosts[ts][args[1]]
		delete(fleetHosts[ts], args[1])
		fleetMu.Unlock()
		if cmd == nil {
			ts.Fatalf("fleethost stop: no host %s", args[1])
		}
		stopHost(cmd)
		return
	}
	known, tmpfs, slowTar := true, "", false
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "-unknown":
			known = false
		case "-slowtar":
			slowTar = true
		case "-tmpfs":
			if len(args) < 2 {
				ts.Fatalf("fleethost -tmpfs SIZE")
			}
			tmpfs, args = args[1], args[1:]
		default:
			ts.Fatalf("fleethost: unknown flag %s", args[0])
		}
		args = args[1:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: fleethost [-unknown] [-tmpfs SIZE] [-slowtar] NAME IP")
	}
	name, ip := args[0], args[1]
	if os.Geteuid() != 0 {
		ts.Fatalf("fleethost needs root (unshare --mount, sshd logging root in)")
	}
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		ts.Fatalf("fleethost: %v (.ci/run installs openssh-server)", err)
	}
	if _, err := os.Stat("/run/sshd"); err != nil {
		ts.Fatalf("fleethost: sshd needs /run/sshd (.ci/run makes it): %v", err)
	}
	work := ts.Getenv("WORK")
	keys := filepath.Join(work, "fleet")
	hostDir := filepath.Join(keys, name)
	root := filepath.Join(work, "hosts", name)
	deploy := filepath.Join(work, "deploy")
	for _, d := range []string{hostDir, root, deploy} {
		ts.Check(os.MkdirAll(d, 0o755))
	}
	identity := filepath.Join(keys, "id")
	if _, err := os.Stat(identity); err != nil {
		pub := writeKeyFile(ts, identity)
		ts.Check(os.WriteFile(filepath.Join(keys, "authorized_keys"), ssh.MarshalAuthorizedKey(pub), 0o600))
		ts.Check(os.WriteFile(filepath.Join(keys, "known_hosts"), nil, 0o600))
	}
	hostKey := writeKeyFile(ts, filepath.Join(hostDir, "host_key"))
	port, err := fleettest.FreePort(ip)
	ts.Check(err)
	conf := filepath.Join(hostDir, "sshd_config")
	ts.Check(os.WriteFile(conf, []byte(fleettest.SSHDConfig(ip, port, filepath.Join(hostDir, "host_key"), filepath.Join(keys, "authorized_keys"))), 0o600))
	// unshare execs sh, which execs sshd; every process of the host is in its namespace.
	var script strings.Builder
	if tmpfs != "" {
		fmt.Fprintf(&script, "mount -t tmpfs -o size=%s tmpfs %s && ", tmpfs, root)
	}
	if slowTar {
		tar, err := exec.LookPath("tar")
		ts.Check(err)
		real := filepath.Join(hostDir, "tar.real")
		b, err := os.ReadFile(tar)
		ts.Check(err)
		ts.Check(os.WriteFile(real, b, 0o755))
		wrapper := filepath.Join(hostDir, "tar.slow")
		ts.Check(os.WriteFile(wrapper, []byte(fmt.Sprintf("#!/bin/sh\ntouch %s/tar-started\nsleep 600\nexec %s \"$@\"\n", hostDir, real)), 0o755))
		fmt.Fprintf(&script, "mount --bind %s %s && ", wrapper, tar)
	}
	fmt.Fprintf(&script, "mount --bind %s %s && exec %s -D -e -f %s", root, deploy, sshd, conf)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	log, err := os.Create(filepath.Join(hostDir, "sshd.log"))
	ts.Check(err)
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	ts.Check(cmd.Start())
	fleetMu.Lock()
	if fleetHosts[ts] == nil {
		fleetHosts[ts] = map[string]*exec.Cmd{}
		ts.Defer(func() {
			fleetMu.Lock()
			hosts := fleetHosts[ts]
			delete(fleetHosts, ts)
			fleetMu.Unlock()
			for _, c := range hosts {
				stopHost(c)
			}
		})
	}
	fleetHosts[ts][name] = cmd
	fleetMu.Unlock()
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	deadline := time.Now().Add(waitFor)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(hostDir, "sshd.log"))
			ts.Fatalf("fleethost %s: sshd on %s: %v\n%s", name, addr, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if known {
		f, err := os.OpenFile(filepath.Join(keys, "known_hosts"), os.O_APPEND|os.O_WRONLY, 0)
		ts.Check(err)
		fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostKey))
		ts.Check(f.Close())
	}
	ts.Setenv(name+"_PORT", strconv.Itoa(port))
	ts.Setenv(name+"_ROOT", fmt.Sprintf("/proc/%d/root", cmd.Process.Pid))
}

// stopHost kills every process in the host's mount namespace: sshd, the sessions it
// started (which are not all in its process group), the commands they run.
func stopHost(cmd *exec.Cmd) {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if err == nil && ns != own { // never the machine's own namespace
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == cmd.Process.Pid {
				continue
			}
			if other, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && other == ns {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
}

// writeKeyFile writes a new private key in OpenSSH's format; it returns the public key.
func writeKeyFile(ts *testscript.TestScript, file string) ssh.PublicKey {
	pub, err := fleettest.WriteKey(file)
	ts.Check(err)
	return pub
}
