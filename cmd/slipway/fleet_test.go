package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
//	fleethost [-unknown] NAME IP   start target NAME on IP; $NAME_PORT is its port. The
//	                               slipway identity ($WORK/fleet/id) is authorized there and
//	                               its host key goes into $WORK/fleet/known_hosts (not with
//	                               -unknown). $WORK/hosts/NAME is its deploy root.
//	fleethost stop NAME            stop it (a host that is down)
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
	known := true
	if args[0] == "-unknown" {
		known, args = false, args[1:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: fleethost [-unknown] NAME IP")
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
	// unshare execs sh, which execs sshd: one process, whose group is the host.
	script := fmt.Sprintf("mount --bind %s %s && exec %s -D -e -f %s", root, deploy, sshd, conf)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script)
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
}

func stopHost(cmd *exec.Cmd) {
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
}

// writeKeyFile writes a new private key in OpenSSH's format; it returns the public key.
func writeKeyFile(ts *testscript.TestScript, file string) ssh.PublicKey {
	pub, err := fleettest.WriteKey(file)
	ts.Check(err)
	return pub
}
