// Package fleettest makes what tests of fleets need to run real OpenSSH sshd as targets on
// loopback addresses: keys in OpenSSH's format and an sshd configuration that authorizes one
// key, listens on one address only and logs nothing but errors.
package fleettest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
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
