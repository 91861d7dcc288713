// Package fleettest runs real OpenSSH sshd as fleet targets on loopback addresses, for the
// tests and the benchmark: keys in OpenSSH's format, an sshd configuration that authorizes
// one key, listens on one address only and logs nothing but errors, and hosts each in its
// own mount namespace, seeing its own deploy root at the path they all share.
package fleettest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// WriteKey writes a new ed25519 private key, unencrypted, in OpenSSH's format, and returns
// its public key.
func WriteKey(file string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

// FreePort returns a TCP port of ip that was free a moment ago.
func FreePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("listen on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// SSHDConfig is the configuration of a target's sshd: ip:port, hostKey, root logging in
// with the keys of authorizedKeys only, OpenSSH's own sftp-server where it is installed.
func SSHDConfig(ip string, port int, hostKey, authorizedKeys string) string {
	sftpServer := "internal-sftp"
	if _, err := os.Stat("/usr/lib/openssh/sftp-server"); err == nil {
		sftpServer = "/usr/lib/openssh/sftp-server" // what a target runs
	}
	return strings.Join([]string{
		"Port " + strconv.Itoa(port), "ListenAddress " + ip, "HostKey " + hostKey,
		"AuthorizedKeysFile " + authorizedKeys, "PidFile none", "UsePAM no", "StrictModes no",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
		"Subsystem sftp " + sftpServer, "LogLevel ERROR", "",
	}, "\n")
}

// Host is one target: sshd on its own loopback address, in its own mount namespace where
// Root is bind-mounted on Deploy, so that it sees its own deploy root at the path every
// host shares. It needs root, unshare and OpenSSH's sshd with /run/sshd.
type Host struct {
	Name    string
	IP      string
	Port    int
	HostKey ssh.PublicKey
	Dir     string // its sshd's files: host key, configuration, log
	Root    string // its deploy root, as this host's processes see it outside its namespace
	Deploy  string // the deploy path, as the target sees it
	cmd     *exec.Cmd
}

// HostOptions are a host's peculiarities, for the tests of failures.
type HostOptions struct {
	Tmpfs   string // its deploy root is a tmpfs of this size ("1m"): a disk that fills up
	SlowTar bool   // its tar touches Dir/tar-started, then waits: to kill the host mid-transfer
}

// StartHost starts target name on ip, authorizing authorizedKeys, its files in dir, its
// deploy root root seen at deploy.
func StartHost(name, ip, dir, root, deploy, authorizedKeys string, o HostOptions) (*Host, error) {
	const sshd = "/usr/sbin/sshd"
	if os.Geteuid() != 0 {
		return nil, errors.New("a target needs root (unshare --mount, sshd logging root in)")
	}
	if _, err := os.Stat(sshd); err != nil {
		return nil, fmt.Errorf("%w (apt-get install openssh-server)", err)
	}
	if _, err := os.Stat("/run/sshd"); err != nil {
		return nil, fmt.Errorf("sshd needs /run/sshd: %w", err)
	}
	for _, d := range []string{dir, root, deploy} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	h := &Host{Name: name, IP: ip, Dir: dir, Root: root, Deploy: deploy}
	var err error
	if h.HostKey, err = WriteKey(filepath.Join(dir, "host_key")); err != nil {
		return nil, err
	}
	if h.Port, err = FreePort(ip); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(SSHDConfig(ip, h.Port, filepath.Join(dir, "host_key"), authorizedKeys)), 0o600); err != nil {
		return nil, err
	}
	// unshare execs sh, which execs sshd; every process of the host is in its namespace.
	var script strings.Builder
	if o.Tmpfs != "" {
		fmt.Fprintf(&script, "mount -t tmpfs -o size=%s tmpfs %s && ", o.Tmpfs, root)
	}
	if o.SlowTar {
		tar, err := exec.LookPath("tar")
		if err != nil {
			return nil, err
		}
		b, err := os.ReadFile(tar)
		if err != nil {
			return nil, err
		}
		real, wrapper := filepath.Join(dir, "tar.real"), filepath.Join(dir, "tar.slow")
		if err := os.WriteFile(real, b, 0o755); err != nil {
			return nil, err
		}
		body := fmt.Sprintf("#!/bin/sh\ntouch %s/tar-started\nsleep 600\nexec %s \"$@\"\n", dir, real)
		if err := os.WriteFile(wrapper, []byte(body), 0o755); err != nil {
			return nil, err
		}
		fmt.Fprintf(&script, "mount --bind %s %s && ", wrapper, tar)
	}
	// Its own empty home, as a machine of its own would have: this machine's root may have
	// login scripts (bash reads ~/.bashrc for every SSH session) that would weigh on
	// every session of every target, and of the baselines of the benchmarks too.
	me, err := user.Current()
	if err != nil {
		return nil, err
	}
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	fmt.Fprintf(&script, "mount --bind %s %s && ", home, me.HomeDir) // sshd's, from /etc/passwd
	fmt.Fprintf(&script, "mount --bind %s %s && exec %s -D -e -f %s", root, deploy, sshd, conf)
	h.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script.String())
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	log, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	h.cmd.Stdout, h.cmd.Stderr = log, log
	if err := h.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := net.DialTimeout("tcp", h.Addr(), time.Second)
		if err == nil {
			c.Close()
			return h, nil
		}
		if time.Now().After(deadline) {
			h.Stop()
			b, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			return nil, fmt.Errorf("sshd on %s: %v\n%s", h.Addr(), err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is ip:port.
func (h *Host) Addr() string { return net.JoinHostPort(h.IP, strconv.Itoa(h.Port)) }

// Pid is the host's sshd (and namespace) process: /proc/PID/root sees its deploy root.
func (h *Host) Pid() int { return h.cmd.Process.Pid }

// KnownHostsLine is its line of a known_hosts file.
func (h *Host) KnownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize(h.Addr())}, h.HostKey)
}

// Stop kills every process in the host's mount namespace: sshd, the sessions it started
// (which are not all in its process group) and what they run.
func (h *Host) Stop() {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", h.Pid()))
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if err == nil && ns != own { // never the machine's own namespace
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == h.Pid() {
				continue
			}
			if other, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && other == ns {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	syscall.Kill(-h.Pid(), syscall.SIGKILL)
	h.cmd.Wait()
}
