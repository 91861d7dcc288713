package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/crypto/ssh"

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
	fleetHosts = map[*testscript.TestScript]map[string]*fleettest.Host{}
)

func cmdFleetHost(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: fleethost [-unknown] [-tmpfs SIZE] [-slowtar] NAME IP | fleethost stop NAME")
	}
	if args[0] == "stop" {
		fleetMu.Lock()
		h := fleetHosts[ts][args[1]]
		delete(fleetHosts[ts], args[1])
		fleetMu.Unlock()
		if h == nil {
			ts.Fatalf("fleethost stop: no host %s", args[1])
		}
		h.Stop()
		return
	}
	known := true
	var o fleettest.HostOptions
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "-unknown":
			known = false
		case "-slowtar":
			o.SlowTar = true
		case "-tmpfs":
			if len(args) < 2 {
				ts.Fatalf("fleethost -tmpfs SIZE")
			}
			o.Tmpfs, args = args[1], args[1:]
		default:
			ts.Fatalf("fleethost: unknown flag %s", args[0])
		}
		args = args[1:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: fleethost [-unknown] [-tmpfs SIZE] [-slowtar] NAME IP")
	}
	name, ip := args[0], args[1]
	work := ts.Getenv("WORK")
	keys := filepath.Join(work, "fleet")
	ts.Check(os.MkdirAll(keys, 0o755))
	identity := filepath.Join(keys, "id")
	if _, err := os.Stat(identity); err != nil {
		pub, err := fleettest.WriteKey(identity)
		ts.Check(err)
		ts.Check(os.WriteFile(filepath.Join(keys, "authorized_keys"), ssh.MarshalAuthorizedKey(pub), 0o600))
		ts.Check(os.WriteFile(filepath.Join(keys, "known_hosts"), nil, 0o600))
	}
	h, err := fleettest.StartHost(name, ip, filepath.Join(keys, name), filepath.Join(work, "hosts", name),
		filepath.Join(work, "deploy"), filepath.Join(keys, "authorized_keys"), o)
	if err != nil {
		ts.Fatalf("fleethost %s: %v (CI: .ci/run installs openssh-server and makes /run/sshd)", name, err)
	}
	fleetMu.Lock()
	if fleetHosts[ts] == nil {
		fleetHosts[ts] = map[string]*fleettest.Host{}
		ts.Defer(func() {
			fleetMu.Lock()
			hosts := fleetHosts[ts]
			delete(fleetHosts, ts)
			fleetMu.Unlock()
			for _, h := range hosts {
				h.Stop()
			}
		})
	}
	fleetHosts[ts][name] = h
	fleetMu.Unlock()
	if known {
		f, err := os.OpenFile(filepath.Join(keys, "known_hosts"), os.O_APPEND|os.O_WRONLY, 0)
		ts.Check(err)
		fmt.Fprintln(f, h.KnownHostsLine())
		ts.Check(f.Close())
	}
	ts.Setenv(name+"_PORT", strconv.Itoa(h.Port))
	ts.Setenv(name+"_ROOT", fmt.Sprintf("/proc/%d/root", h.Pid()))
}
