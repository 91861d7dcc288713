package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// transport is what OpenSSH's client (the one git push uses) negotiates with a server, and
// what a connection that runs one command costs.
type transport struct {
	kex, cipher string
	connectMS   []float64
}

var (
	sshKex    = regexp.MustCompile(`kex: algorithm: (\S+)`)
	sshCipher = regexp.MustCompile(`kex: client->server cipher: (\S+)`)
)

// probeSSH connects n times with the pusher's ssh to user@127.0.0.1:port and runs "true"
// (slipway refuses it after the session is open, which is as far as a push's setup goes).
func (b *bench) probeSSH(ctx context.Context, user string, port, n int) transport {
	var t transport
	args := []string{"-v", "-F", "/dev/null", "-i", b.key, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-p", fmt.Sprint(port), user + "@127.0.0.1", "true"}
	for i := 0; i < n; i++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := command(cctx, b.env, "", "ssh", args...)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		took := time.Since(start)
		cancel()
		if _, ok := err.(*exec.ExitError); err != nil && !ok {
			continue
		}
		if m := sshKex.FindSubmatch(out); m != nil {
			t.kex = string(m[1])
		}
		if m := sshCipher.FindSubmatch(out); m != nil {
			t.cipher = string(m[1])
		}
		t.connectMS = append(t.connectMS, float64(took)/float64(time.Millisecond))
	}
	return t
}

// slipwayPort is the port of the running slipway.
func (s *slipwayServer) port() int {
	var p int
	if i := strings.LastIndexByte(s.addr, ':'); i >= 0 {
		fmt.Sscan(s.addr[i+1:], &p)
	}
	return p
}
