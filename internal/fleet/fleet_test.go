package fleet

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/slipway/slipway/internal/fleet/fleettest"
)

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]string{
		"deploy@web1":          "deploy@web1",
		"deploy@web2:2200":     "deploy@web2:2200",
		"deploy@web2:22":       "deploy@web2",
		"root@127.0.0.2:2022":  "root@127.0.0.2:2022",
		"deploy@[::1]:2200":    "deploy@[::1]:2200",
		"deploy@[2001:db8::1]": "deploy@2001:db8::1",
	} {
		got, err := ParseTarget(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "web1", "@web1", "deploy@", "deploy@web1:0", "deploy@web1:99999", "deploy@web1:x",
		"-oProxyCommand=x@web1", "deploy@-oProxyCommand", "de ploy@web1", "deploy@web 1", "deploy@::1"} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) = nil error", bad)
		}
	}
}

// host is one real OpenSSH sshd on its own loopback address, as a target.
type host struct {
	t        Target
	hostKey  ssh.PublicKey
	deploy   string // its deploy path
	sshd     *exec.Cmd
	confFile string
}

// keys is the identity slipway uses and the known_hosts its targets are checked against.
type keys struct {
	identity   string
	authorized string
	knownHosts string
}

func newKeys(t *testing.T) *keys {
	t.Helper()
	dir := t.TempDir()
	k := &keys{identity: filepath.Join(dir, "id"), authorized: filepath.Join(dir, "authorized_keys"), knownHosts: filepath.Join(dir, "known_hosts")}
	pub := writeKey(t, k.identity)
	if err := os.WriteFile(k.authorized, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.knownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// writeKey writes a new private key in OpenSSH's format and returns its public key.
func writeKey(t *testing.T, file string) ssh.PublicKey {
	t.Helper()
	pub, err := fleettest.WriteKey(file)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// startHost starts sshd on ip (127.0.0.N) as root, authorizing k, with its own deploy path.
// sshd needs root (to log root in) and its privilege separation directory; CI has both
// (.ci/run makes /run/sshd).
func startHost(t *testing.T, k *keys, ip string, known bool) *host {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	if _, err := os.Stat(sshd); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run as root with OpenSSH's sshd (.ci/run installs openssh-server): %v", err)
		}
		t.Skip("needs root and sshd (openssh-server)")
	}
	if _, err := os.Stat("/run/sshd"); err != nil {
		t.Fatalf("sshd needs /run/sshd (.ci/run makes it): %v", err)
	}
	dir := t.TempDir()
	h := &host{deploy: filepath.Join(dir, "deploy")}
	h.hostKey = writeKey(t, filepath.Join(dir, "host_key"))
	port, err := fleettest.FreePort(ip)
	if err != nil {
		t.Fatal(err)
	}
	h.confFile = filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(h.confFile, []byte(fleettest.SSHDConfig(ip, port, filepath.Join(dir, "host_key"), k.authorized)), 0o600); err != nil {
		t.Fatal(err)
	}
	h.sshd = exec.Command(sshd, "-D", "-e", "-f", h.confFile)
	h.sshd.Stderr = os.Stderr
	if err := h.sshd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.stop() })
	h.t = Target{User: "root", Host: ip, Port: port}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", h.t.Addr(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd on %s: %v", h.t.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if known {
		k.know(t, h)
	}
	return h
}

func (h *host) stop() {
	if h.sshd != nil && h.sshd.Process != nil {
		h.sshd.Process.Kill()
		h.sshd.Wait()
		h.sshd = nil
	}
}

// know adds h's host key to the known_hosts.
func (k *keys) know(t *testing.T, h *host) {
	t.Helper()
	f, err := os.OpenFile(k.knownHosts, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(h.t.Addr())}, h.hostKey))
}

func (k *keys) dialer(t *testing.T) *Dialer {
	t.Helper()
	d, err := NewDialer(k.identity, k.knownHosts, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

const (
	sha1 = "1111111111111111111111111111111111111111"
	sha2 = "2222222222222222222222222222222222222222"
)

// release writes a local release tree: files, an executable, a symlink inside, and a link
// into shared/ as slipway makes them.
func release(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{"index.html": body, "lib/app.js": "app\n", "bin/run": "#!/bin/sh\necho run\n"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "bin/run"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"lib/main.js": "app.js", ".env": "../../shared/.env"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPrepareActivate(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.2", true)
	ctx := context.Background()
	if err := os.MkdirAll(filepath.Join(h.deploy, "shared"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.deploy, "shared", ".env"), []byte("APP=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if live, err := c.Live(); err != nil || live != "" {
		t.Fatalf("Live on a new host = %q, %v", live, err)
	}
	sent, err := c.Prepare(ctx, sha1, release(t, "one\n"), Plan{SharedFiles: []string{".env"}, SharedDirs: []string{"storage"}})
	if err != nil || sent.Bytes == 0 || sent.Kept {
		t.Fatalf("Prepare = %+v, %v", sent, err)
	}
	rel := filepath.Join(h.deploy, "releases", sha1)
	if b, err := os.ReadFile(filepath.Join(rel, "index.html")); err != nil || string(b) != "one\n" {
		t.Errorf("index.html = %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(rel, "bin/run")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/run mode = %v, %v", fi.Mode(), err)
	}
	if l, _ := os.Readlink(filepath.Join(rel, "lib/main.js")); l != "app.js" {
		t.Errorf("lib/main.js -> %q", l)
	}
	if b, err := os.ReadFile(filepath.Join(rel, ".env")); err != nil || string(b) != "APP=1\n" {
		t.Errorf(".env through shared/ = %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(h.deploy, "shared", "storage")); err != nil || !fi.IsDir() {
		t.Errorf("shared/storage was not made: %v", err)
	}
	if sent, err := c.Prepare(ctx, sha1, release(t, "other\n"), Plan{}); err != nil || sent.Bytes != 0 || !sent.Kept {
		t.Errorf("Prepare of a release the host keeps = %+v, %v; want nothing sent", sent, err)
	}

	prev, known, err := c.Activate(sha1)
	if err != nil || prev != "" || !known {
		t.Fatalf("Activate = %q, %v, %v", prev, known, err)
	}
	if l, _ := os.Readlink(filepath.Join(h.deploy, "current")); l != "releases/"+sha1 {
		t.Errorf("current -> %q", l)
	}
	if _, err := c.Prepare(ctx, sha2, release(t, "two\n"), Plan{SharedFiles: []string{".env"}}); err != nil {
		t.Fatal(err)
	}
	if prev, known, err = c.Activate(sha2); err != nil || prev != sha1 || !known {
		t.Fatalf("Activate 2 = %q, %v, %v", prev, known, err)
	}
	if live, _ := c.Live(); live != sha2 {
		t.Errorf("Live = %q", live)
	}
	if err := c.Restore(sha1); err != nil {
		t.Fatal(err)
	}
	if live, _ := c.Live(); live != sha1 {
		t.Errorf("Live after Restore = %q", live)
	}
	if err := c.Discard(ctx, sha1); err != nil { // live: kept
		t.Fatal(err)
	}
	if _, err := os.Stat(rel); err != nil {
		t.Errorf("Discard removed the live release: %v", err)
	}
	if err := c.Discard(ctx, sha2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.deploy, "releases", sha2)); !os.IsNotExist(err) {
		t.Errorf("Discard left releases/%s: %v", sha2[:7], err)
	}
	if err := c.Restore(""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(h.deploy, "current")); !os.IsNotExist(err) {
		t.Errorf("Restore(\"\") left current: %v", err)
	}
}

// A shared file the target lacks fails the prepare, naming it, and leaves nothing behind.
func TestPrepareMissingShared(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.3", true)
	ctx := context.Background()
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Prepare(ctx, sha1, release(t, "one\n"), Plan{SharedFiles: []string{".env"}})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.3: ") || !strings.Contains(err.Error(), "shared/.env is missing") {
		t.Fatalf("Prepare = %v; want the host and the missing shared file named", err)
	}
	if got, ok := HostOf(err); !ok || got != h.t {
		t.Errorf("HostOf = %v, %v", got, ok)
	}
	entries, _ := os.ReadDir(filepath.Join(h.deploy, "releases"))
	if len(entries) != 0 {
		t.Errorf("releases/ after a failed prepare: %v", entries)
	}
}

// Host keys are checked strictly: unknown and changed keys fail, naming the fingerprint.
func TestHostKeys(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.4", false)
	ctx := context.Background()
	_, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err == nil || !strings.Contains(err.Error(), "is not in target_known_hosts") || !strings.Contains(err.Error(), ssh.FingerprintSHA256(h.hostKey)) {
		t.Fatalf("Dial to an unknown host = %v", err)
	}
	// known_hosts has another key for it: the host's key changed.
	other := writeKey(t, filepath.Join(t.TempDir(), "other"))
	if err := os.WriteFile(k.knownHosts, []byte(knownhosts.Line([]string{knownhosts.Normalize(h.t.Addr())}, other)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err == nil || !strings.Contains(err.Error(), "host key changed") || !strings.Contains(err.Error(), ssh.FingerprintSHA256(other)) {
		t.Fatalf("Dial with a changed key = %v", err)
	}
	k.know(t, h)
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatalf("Dial once known_hosts has its key too: %v", err)
	}
	c.Close()
	// A host that is down.
	h.stop()
	if _, err := k.dialer(t).Dial(ctx, h.t, h.deploy); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("Dial to a stopped sshd = %v", err)
	}
}

// A release sends only what differs from the one the target has live; the rest is copied
// there and checked. A file changed there since (the app wrote into its release) fails the
// check, and is sent. With Link, the unchanged files are hard links. Where the copy fails,
// everything is sent.
func TestPrepareDelta(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.5", true)
	ctx := context.Background()
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB, unchanged from release to release
	mk := func(index string) (string, *Manifest) {
		dir := release(t, index)
		if err := os.WriteFile(filepath.Join(dir, "lib/big.bin"), []byte(big), 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := BuildManifest(dir)
		if err != nil {
			t.Fatal(err)
		}
		return dir, m
	}
	dir1, m1 := mk("one\n")
	first, err := c.Prepare(ctx, sha1, dir1, Plan{Manifest: m1})
	if err != nil || first.Copied != 0 || first.Bytes < 1<<20 {
		t.Fatalf("first Prepare = %+v, %v", first, err)
	}
	if _, _, err := c.Activate(sha1); err != nil {
		t.Fatal(err)
	}
	dir2, m2 := mk("two\n")
	second, err := c.Prepare(ctx, sha2, dir2, Plan{Manifest: m2, Base: m1, BaseSHA: sha1})
	if err != nil || second.Fallback != "" {
		t.Fatalf("delta Prepare = %+v, %v", second, err)
	}
	if second.Copied != 3 || second.Bytes > 64<<10 {
		t.Errorf("delta Prepare = %+v; want 3 files copied there (app.js, run, big.bin) and far less than 1 MiB sent", second)
	}
	rel := filepath.Join(h.deploy, "releases", sha2)
	for name, want := range map[string]string{"index.html": "two\n", "lib/app.js": "app\n", "lib/big.bin": big} {
		if b, err := os.ReadFile(filepath.Join(rel, name)); err != nil || string(b) != want {
			t.Errorf("%s: %d bytes, %v", name, len(b), err)
		}
	}
	if fi, err := os.Stat(filepath.Join(rel, "bin/run")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/run copied there: mode %v, %v", fi.Mode(), err)
	}
	if l, _ := os.Readlink(filepath.Join(rel, "lib/main.js")); l != "app.js" {
		t.Errorf("lib/main.js -> %q", l)
	}

	// The app wrote into its live release on the target: that file is not what the
	// manifest says, so it is sent again, over the copy, which is never written through.
	appJS := filepath.Join(h.deploy, "releases", sha1, "lib/app.js")
	if err := os.WriteFile(appJS, []byte("changed there\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sha3 := "3333333333333333333333333333333333333333"
	dir3, m3 := mk("three\n")
	third, err := c.Prepare(ctx, sha3, dir3, Plan{Manifest: m3, Base: m1, BaseSHA: sha1})
	if err != nil || third.Fallback != "" || third.Copied != 2 || third.Changed != 1 || third.Bytes > 64<<10 {
		t.Fatalf("Prepare over a changed base = %+v, %v; want 2 files copied, lib/app.js sent again", third, err)
	}
	if b, _ := os.ReadFile(filepath.Join(h.deploy, "releases", sha3, "lib/app.js")); string(b) != "app\n" {
		t.Errorf("lib/app.js = %q: the target's change was copied", b)
	}

	// With release_files = "link", the unchanged files are hard links to the live
	// release's; one the app changed there is sent, and the live one keeps its change.
	sha4 := "4444444444444444444444444444444444444444"
	dir4, m4 := mk("four\n")
	fourth, err := c.Prepare(ctx, sha4, dir4, Plan{Manifest: m4, Base: m1, BaseSHA: sha1, Link: true})
	if err != nil || fourth.Fallback != "" || fourth.Copied != 2 || fourth.Changed != 1 {
		t.Fatalf("Prepare with Link = %+v, %v", fourth, err)
	}
	same := func(name string) bool {
		a, err1 := os.Stat(filepath.Join(h.deploy, "releases", sha1, name))
		b, err2 := os.Stat(filepath.Join(h.deploy, "releases", sha4, name))
		return err1 == nil && err2 == nil && os.SameFile(a, b)
	}
	if !same("lib/big.bin") || !same("bin/run") {
		t.Errorf("with Link, lib/big.bin and bin/run are not the live release's files")
	}
	if same("lib/app.js") {
		t.Errorf("with Link, lib/app.js, changed there, was linked")
	}
	if b, _ := os.ReadFile(appJS); string(b) != "changed there\n" {
		t.Errorf("the live release's lib/app.js = %q: sending it again wrote through the link", b)
	}

	// A file of the live release gone there: the copy fails, and everything is sent.
	if err := os.Remove(filepath.Join(h.deploy, "releases", sha1, "lib/big.bin")); err != nil {
		t.Fatal(err)
	}
	sha5 := "5555555555555555555555555555555555555555"
	dir5, m5 := mk("five\n")
	fifth, err := c.Prepare(ctx, sha5, dir5, Plan{Manifest: m5, Base: m1, BaseSHA: sha1})
	if err != nil || fifth.Fallback == "" || fifth.Copied != 0 || fifth.Bytes < 1<<20 {
		t.Fatalf("Prepare over a base with a file gone = %+v, %v; want everything sent, and why", fifth, err)
	}
	if b, _ := os.ReadFile(filepath.Join(h.deploy, "releases", sha5, "lib/big.bin")); string(b) != big {
		t.Errorf("lib/big.bin: %d bytes", len(b))
	}
}

// Commands run on the target in the given directory with the given environment, and TCP
// connections open from the target (a health check's URL of 127.0.0.1 is the target's own).
func TestExecAndDial(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.6", true)
	ctx := context.Background()
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := t.TempDir()
	var out strings.Builder
	err = c.Exec(ctx, dir, []string{"GREETING=it's here", "BAD-NAME=x", "SECRET=s3cret"}, `pwd; echo "$GREETING"; ps -eo args | grep -c s3cre[t]; exit 3`, &out)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Exec = %v; want exit status 3", err)
	}
	if want := dir + "\nit's here\n0\n"; out.String() != want {
		t.Errorf("output = %q, want %q (the secret must not be in any process's arguments)", out.String(), want)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if conn, err := l.Accept(); err == nil {
			conn.Write([]byte("hello from the target side\n"))
			conn.Close()
		}
	}()
	conn, err := c.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b := make([]byte, 64)
	n, _ := conn.Read(b)
	if string(b[:n]) != "hello from the target side\n" {
		t.Errorf("read %q through the target", b[:n])
	}
}

// Dial refuses a target whose SFTP server cannot replace current in one rename (no
// posix-rename@openssh.com), before anything is sent. OpenSSH's sftp-server has the
// extension, so the target here is an SSH server in this process serving pkg/sftp's SFTP
// server, which is told which extensions to offer; with posix-rename, the same server is
// accepted.
func TestDialRefusesWithoutPosixRename(t *testing.T) {
	k := newKeys(t)
	addr, hostKey := sftpOnlyServer(t, k)
	if err := os.WriteFile(k.knownHosts, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	target := Target{User: "deploy", Host: host, Port: n}
	ctx := context.Background()
	defer sftp.SetSFTPExtensions("hardlink@openssh.com", "posix-rename@openssh.com", "statvfs@openssh.com")

	if err := sftp.SetSFTPExtensions("statvfs@openssh.com"); err != nil {
		t.Fatal(err)
	}
	_, err := k.dialer(t).Dial(ctx, target, "/srv/app")
	if err == nil || !strings.Contains(err.Error(), "lacks posix-rename@openssh.com") {
		t.Fatalf("Dial to an sftp server without posix-rename = %v", err)
	}
	if h, ok := HostOf(err); !ok || h != target {
		t.Errorf("HostOf(%v) = %q, %v: the error must name the host", err, h, ok)
	}

	if err := sftp.SetSFTPExtensions("posix-rename@openssh.com", "statvfs@openssh.com"); err != nil {
		t.Fatal(err)
	}
	c, err := k.dialer(t).Dial(ctx, target, "/srv/app")
	if err != nil {
		t.Fatalf("Dial to the same server with posix-rename = %v", err)
	}
	c.Close()
}

// sftpOnlyServer is an SSH server on 127.0.0.1 that lets k's identity in and serves the
// sftp subsystem (pkg/sftp's server, read-only, in a temporary directory) and nothing
// else. It returns its address and host key.
func sftpOnlyServer(t *testing.T, k *keys) (string, ssh.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	hostPub := writeKey(t, filepath.Join(dir, "host_key"))
	b, err := os.ReadFile(filepath.Join(dir, "host_key"))
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	authorized, err := os.ReadFile(k.authorized)
	if err != nil {
		t.Fatal(err)
	}
	allowed, _, _, _, err := ssh.ParseAuthorizedKey(authorized)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		if string(key.Marshal()) != string(allowed.Marshal()) {
			return nil, fmt.Errorf("unknown key")
		}
		return nil, nil
	}}
	cfg.AddHostKey(hostSigner)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go serveSFTPOnly(nc, cfg, dir)
		}
	}()
	return l.Addr().String(), hostPub
}

func serveSFTPOnly(nc net.Conn, cfg *ssh.ServerConfig, dir string) {
	defer nc.Close()
	_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "sessions only")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			return
		}
		go func() {
			for req := range creqs {
				ok := req.Type == "subsystem" && len(req.Payload) > 4 && string(req.Payload[4:]) == "sftp"
				req.Reply(ok, nil)
				if !ok {
					continue
				}
				srv, err := sftp.NewServer(ch, sftp.WithServerWorkingDirectory(dir), sftp.ReadOnly())
				if err != nil {
					ch.Close()
					return
				}
				go func() {
					srv.Serve()
					ch.Close()
				}()
			}
		}()
	}
}

// Prune keeps the live release and those named, and removes every other release and all
// that cut-short prepares left (their directories and their sha256 lists), also for the
// live release; a name that is no release is none of its business.
func TestPrune(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.7", true)
	ctx := context.Background()
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sha3 := strings.Repeat("3", 40)
	sha4 := strings.Repeat("4", 40)
	releases := filepath.Join(h.deploy, "releases")
	for _, d := range []string{sha1, sha2, sha3, ".tmp-" + sha4, ".tmp-" + sha1, "notasha"} {
		if err := os.MkdirAll(filepath.Join(releases, d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(releases, ".tmp-"+sha4+".sums"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("releases/"+sha1, filepath.Join(h.deploy, "current")); err != nil {
		t.Fatal(err)
	}
	if err := c.Prune(ctx, []string{sha2}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(releases)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{sha1, sha2, "notasha"}; !slices.Equal(left, want) {
		t.Errorf("after Prune: %v, want %v", left, want)
	}
}

// A rebuild of the live release: the live build is set aside (current names a hard-linked
// copy, the same files) while the new one takes the release's path; Activate makes it
// live. Unhold puts the old build back, before or after Activate, and after a rebuild cut
// short with the copy live.
func TestPrepareRebuild(t *testing.T) {
	k := newKeys(t)
	h := startHost(t, k, "127.0.0.8", true)
	ctx := context.Background()
	c, err := k.dialer(t).Dial(ctx, h.t, h.deploy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	build := func(body string) (string, *Manifest) {
		dir := release(t, body)
		m, err := BuildManifest(dir)
		if err != nil {
			t.Fatal(err)
		}
		return dir, m
	}
	served := func() (link, index string) {
		link, _ = os.Readlink(filepath.Join(h.deploy, "current"))
		b, _ := os.ReadFile(filepath.Join(h.deploy, "current", "index.html"))
		return link, string(b)
	}
	left := func() []string {
		entries, _ := os.ReadDir(filepath.Join(h.deploy, "releases"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	hold := ".hold-" + sha1
	dir1, m1 := build("old\n")
	if _, err := c.Prepare(ctx, sha1, dir1, Plan{Manifest: m1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Activate(sha1); err != nil {
		t.Fatal(err)
	}

	dir2, m2 := build("new\n")
	sent, err := c.PrepareRebuild(ctx, sha1, dir2, Plan{Manifest: m2, Base: m1})
	if err != nil || sent.Copied != 2 {
		t.Fatalf("PrepareRebuild = %+v, %v; want app.js and run copied from the old build", sent, err)
	}
	if link, index := served(); link != "releases/"+hold || index != "old\n" {
		t.Errorf("while rebuilt: current -> %s serving %q; want the copy of the old build", link, index)
	}
	if b, _ := os.ReadFile(filepath.Join(h.deploy, "releases", sha1, "index.html")); string(b) != "new\n" {
		t.Errorf("releases/<sha>/index.html = %q, want the new build", b)
	}
	if live, _ := c.Live(); live != sha1 {
		t.Errorf("Live = %q while held", live)
	}
	if _, _, err := c.Activate(sha1); err != nil {
		t.Fatal(err)
	}
	if err := c.DropHold(ctx, sha1); err != nil {
		t.Fatal(err)
	}
	if link, index := served(); link != "releases/"+sha1 || index != "new\n" {
		t.Errorf("activated: current -> %s serving %q", link, index)
	}
	if names := left(); !slices.Equal(names, []string{sha1}) {
		t.Errorf("after DropHold: %v", names)
	}

	// Undone before Activate, after Activate, and after a rebuild cut short with the copy
	// live: the build live before is back, whole, at its path.
	for _, tc := range []struct {
		name      string
		activated bool
		cutShort  bool
	}{{"before activate", false, false}, {"after activate", true, false}, {"cut short", false, true}} {
		dir3, m3 := build("newer\n")
		if _, err := c.PrepareRebuild(ctx, sha1, dir3, Plan{Manifest: m3, Base: m2}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.cutShort { // the next rebuild finds the copy live, and keeps it
			if _, err := c.PrepareRebuild(ctx, sha1, dir3, Plan{Manifest: m3, Base: m2}); err != nil {
				t.Fatalf("%s: again: %v", tc.name, err)
			}
		}
		if tc.activated {
			if _, _, err := c.Activate(sha1); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Unhold(ctx, sha1, tc.activated); err != nil {
			t.Fatalf("%s: Unhold: %v", tc.name, err)
		}
		if link, index := served(); link != "releases/"+sha1 || index != "new\n" {
			t.Errorf("%s: current -> %s serving %q; want the build live before", tc.name, link, index)
		}
		if names := left(); !slices.Equal(names, []string{sha1}) {
			t.Errorf("%s: left %v", tc.name, names)
		}
	}
}
