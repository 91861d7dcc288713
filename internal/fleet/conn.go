package fleet

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Dialer opens connections to targets with one identity and one known_hosts file.
type Dialer struct {
	signer    ssh.Signer
	hostKeys  ssh.HostKeyCallback
	hostAlgos func(addr string) []string
	timeout   time.Duration
}

// NewDialer reads the private key slipway presents (target_identity) and the known_hosts
// file its targets' keys must be in (target_known_hosts). timeout bounds the connection and
// the SSH handshake.
func NewDialer(identityFile, knownHostsFile string, timeout time.Duration) (*Dialer, error) {
	key, err := os.ReadFile(identityFile)
	if err != nil {
		return nil, fmt.Errorf("target_identity: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("target_identity %s: %w", identityFile, err)
	}
	cb, err := knownhosts.New(knownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("target_known_hosts: %w", err)
	}
	return &Dialer{signer: signer, hostKeys: cb, timeout: timeout, hostAlgos: knownAlgorithms(cb)}, nil
}

// knownAlgorithms returns, for an address, the host key algorithms of the keys known_hosts
// has for it, so that the server is asked for the key that can be checked (a host with an
// RSA and an ed25519 key, of which known_hosts has one, would otherwise show the other).
// known_hosts is asked with a key it cannot have: its error lists the keys it knows.
func knownAlgorithms(cb ssh.HostKeyCallback) func(addr string) []string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return func(string) []string { return nil }
	}
	probe, err := ssh.NewPublicKey(pub)
	if err != nil {
		return func(string) []string { return nil }
	}
	return func(addr string) []string {
		var ke *knownhosts.KeyError
		tcp, _ := net.ResolveTCPAddr("tcp", addr)
		if err := cb(addr, tcp, probe); !errors.As(err, &ke) {
			return nil
		}
		var algos []string
		for _, k := range ke.Want {
			switch t := k.Key.Type(); t {
			case ssh.KeyAlgoRSA:
				algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, t)
			default:
				algos = append(algos, t)
			}
		}
		return algos
	}
}

// Conn is an open connection to one target, for one deploy path.
type Conn struct {
	t      Target
	path   string // the deploy path on the target (absolute, clean)
	client *ssh.Client
	sftp   *sftp.Client
}

// Dial connects to t and opens its SFTP subsystem. A host key that known_hosts lacks, or
// that differs from the one it has, fails with the fingerprint the host showed.
func (d *Dialer) Dial(ctx context.Context, t Target, deployPath string) (*Conn, error) {
	if !filepath.IsAbs(deployPath) || filepath.Clean(deployPath) != deployPath {
		return nil, &errTarget{t, fmt.Errorf("deploy path %q is not absolute and clean", deployPath)}
	}
	cfg := &ssh.ClientConfig{
		User:              t.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(d.signer)},
		HostKeyCallback:   d.checkHostKey,
		HostKeyAlgorithms: d.hostAlgos(t.Addr()),
		Timeout:           d.timeout,
	}
	dialer := net.Dialer{Timeout: d.timeout}
	nc, err := dialer.DialContext(ctx, "tcp", t.Addr())
	if err != nil {
		return nil, &errTarget{t, fmt.Errorf("unreachable: %w", err)}
	}
	// The handshake is bounded too: a host that accepts and then says nothing is down.
	if err := nc.SetDeadline(time.Now().Add(d.timeout)); err != nil {
		nc.Close()
		return nil, &errTarget{t, err}
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, t.Addr(), cfg)
	if err != nil {
		nc.Close()
		return nil, &errTarget{t, err}
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		sc.Close()
		return nil, &errTarget{t, err}
	}
	client := ssh.NewClient(sc, chans, reqs)
	sf, err := sftp.NewClient(client)
	if err != nil {
		client.Close()
		return nil, &errTarget{t, fmt.Errorf("sftp: %w", err)}
	}
	if _, ok := sf.HasExtension("posix-rename@openssh.com"); !ok {
		// Without it, current cannot be replaced in one step: better no deploy than a
		// moment with no current, or a half-swapped fleet.
		sf.Close()
		client.Close()
		return nil, &errTarget{t, errors.New("its sftp server lacks posix-rename@openssh.com (OpenSSH's sftp-server has it), so current cannot be swapped atomically there")}
	}
	c := &Conn{t: t, path: deployPath, client: client, sftp: sf}
	go func() { // the connection ends with the deploy that opened it
		<-ctx.Done()
		c.Close()
	}()
	return c, nil
}

// checkHostKey is known_hosts, with errors that say what to do.
func (d *Dialer) checkHostKey(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := d.hostKeys(hostname, remote, key)
	var ke *knownhosts.KeyError
	if errors.As(err, &ke) {
		fp := ssh.FingerprintSHA256(key)
		if len(ke.Want) == 0 {
			return fmt.Errorf("host key %s %s is not in target_known_hosts", key.Type(), fp)
		}
		return fmt.Errorf("host key changed: it shows %s %s, target_known_hosts has %s", key.Type(), fp, ssh.FingerprintSHA256(ke.Want[0].Key))
	}
	return err
}

// Close ends the connection.
func (c *Conn) Close() error {
	c.sftp.Close()
	return c.client.Close()
}

// Exec runs command with /bin/sh -c on the target, in directory dir, with env ("K=V") added
// to the login environment, writing its output (stdout and stderr) to out. The script goes
// on stdin, so no value of env shows in the target's process list. Ending ctx kills it.
func (c *Conn) Exec(ctx context.Context, dir string, env []string, command string, out io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "cd %s || exit 1\n", shellQuote(dir))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if !validName(k) {
			continue
		}
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	fmt.Fprintf(&b, "exec /bin/sh -c %s\n", shellQuote(command))
	s, err := c.client.NewSession()
	if err != nil {
		return c.fail(err)
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = strings.NewReader(b.String()), out, out
	done := make(chan error, 1)
	go func() { done <- s.Run("/bin/sh -s") }()
	select {
	case err = <-done:
	case <-ctx.Done():
		s.Signal(ssh.SIGKILL)
		s.Close()
		return c.fail(ctx.Err())
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return c.fail(fmt.Errorf("exit status %d", ee.ExitStatus()))
	}
	return c.fail(lost(err))
}

// lost says what a session that ended with no exit status means: the host, or the
// connection to it, went away.
func lost(err error) error {
	var em *ssh.ExitMissingError
	if errors.As(err, &em) || errors.Is(err, io.EOF) {
		return errors.New("the connection to the host was lost")
	}
	return err
}

// DialContext opens a TCP connection from the target to addr (host:port as the target
// resolves it): a health check's URL of 127.0.0.1 is the target's own. It needs the
// target's sshd to allow TCP forwarding (OpenSSH's default).
func (c *Conn) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.client.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("from %s: %w", c.t.Host, err)
	}
	return conn, nil
}

// validName reports whether k is a shell variable name.
func validName(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		if r != '_' && (r < 'A' || r > 'Z') && (r < 'a' || r > 'z') && (i == 0 || r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// Watchdog closes c if stop is not called within d: an SFTP request to a host that stopped
// answering would otherwise wait for TCP to give up, many minutes later.
func (c *Conn) Watchdog(d time.Duration) (stop func()) {
	t := time.AfterFunc(d, func() { c.Close() })
	return func() { t.Stop() }
}

// Target is the host c is connected to.
func (c *Conn) Target() Target { return c.t }

func (c *Conn) fail(err error) error {
	if err == nil {
		return nil
	}
	return &errTarget{c.t, err}
}

func (c *Conn) releases() string          { return path.Join(c.path, "releases") }
func (c *Conn) release(sha string) string { return path.Join(c.releases(), sha) }

// Release is releases/<sha> on the target (the same path as on the slipway host).
func (c *Conn) Release(sha string) string { return c.release(sha) }

// run runs a POSIX shell script on the target, with stdin, and returns its output; a
// failure carries the script's last lines of stderr.
func (c *Conn) run(ctx context.Context, script string, stdin io.Reader) (string, error) {
	s, err := c.client.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdin, s.Stdout, s.Stderr = stdin, &limited{w: &stdout, left: 64 << 10}, &limited{w: &stderr, left: 64 << 10}
	done := make(chan error, 1)
	go func() { done <- s.Run("/bin/sh -c " + shellQuote(script)) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		s.Signal(ssh.SIGKILL)
		s.Close()
		return "", ctx.Err()
	}
	if err != nil {
		err = lost(err)
		if msg := telling(stderr.String()); msg != "" {
			return "", fmt.Errorf("%s (%w)", msg, err)
		}
		return "", err
	}
	return stdout.String(), nil
}

// telling is the line of a failed command's stderr that says most: one naming a failure
// of the system (a full disk, a denied permission), else the first, which is where tools
// such as tar say what went wrong before their summary.
func telling(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	for _, l := range lines {
		for _, s := range []string{"No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system"} {
			if strings.Contains(l, s) {
				return strings.TrimSpace(l)
			}
		}
	}
	return strings.TrimSpace(lines[0])
}

// Live is the release current names on the target, "" if it has none.
func (c *Conn) Live() (string, error) {
	l, err := c.sftp.ReadLink(path.Join(c.path, "current"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", c.fail(fmt.Errorf("read current: %w", err))
	}
	sha, ok := strings.CutPrefix(l, "releases/")
	if !ok || !validSHA(sha) {
		return "", c.fail(fmt.Errorf("current points to %q, not a release", l))
	}
	return sha, nil
}

// Has reports whether the target keeps releases/<sha>, complete (a prepared release is
// renamed there only once whole).
func (c *Conn) Has(sha string) (bool, error) {
	fi, err := c.sftp.Lstat(c.release(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, c.fail(err)
	}
	return fi.IsDir(), nil
}

// Plan is what Prepare needs besides the release's directory.
type Plan struct {
	SharedFiles []string // must exist in the target's shared/
	SharedDirs  []string // made in the target's shared/ if missing
	// Manifest is the new release's; Base, that of BaseSHA, the release the target has
	// live. With both, the files Base has unchanged are copied on the target from
	// releases/<BaseSHA> (a reflink where its filesystem can) and checked against their
	// sha256 there, instead of sent; those the check finds changed there are sent. Without,
	// or if the copy fails, everything is sent.
	Manifest *Manifest
	Base     *Manifest
	BaseSHA  string
	// Link hard-links the unchanged files instead of copying them (release_files =
	// "link"): the releases on the target then share those inodes, which only their
	// read-only mode (the release's own, sent with it) protects.
	Link bool
}

// Sent is what Prepare did for a target.
type Sent struct {
	Bytes  int64 // sent over the connection
	Copied int   // files copied (or linked) there from the release it had live, not sent
	// Changed is how many files of the release it had live differed there from what was
	// sent (the app wrote into its release): those were sent again.
	Changed int
	Kept    bool // the target kept the release from before: nothing was sent
	// Fallback is why the copy of unchanged files failed and everything was sent; "" if not.
	Fallback string
}

// Prepare writes the local release dir as releases/<sha> on the target: into a temporary
// directory, renamed into place once whole, so a release the target has is always complete.
// Shared files must exist in the target's shared/ (as on the slipway host); shared dirs are
// made there if missing. The release's links into shared/ travel as the symlinks they are.
func (c *Conn) Prepare(ctx context.Context, sha, dir string, p Plan) (Sent, error) {
	var sent Sent
	if !validSHA(sha) {
		return sent, c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	if ok, err := c.Has(sha); err != nil {
		return sent, err
	} else if ok {
		sent.Kept = true
		return sent, nil
	}
	tmp := path.Join(c.releases(), ".tmp-"+sha)
	var setup strings.Builder
	fmt.Fprintf(&setup, "set -e\numask 022\nmkdir -p %s\n", shellQuote(c.releases()))
	for _, f := range p.SharedFiles {
		fmt.Fprintf(&setup, "[ -e %s ] || { echo 'shared/%s is missing: create it on this host' >&2; exit 3; }\n",
			shellQuote(path.Join(c.path, "shared", f)), strings.ReplaceAll(f, "'", ""))
	}
	for _, d := range p.SharedDirs {
		fmt.Fprintf(&setup, "mkdir -p %s\n", shellQuote(path.Join(c.path, "shared", d)))
	}
	fmt.Fprintf(&setup, "rm -rf %s\nmkdir %s\n", shellQuote(tmp), shellQuote(tmp))

	// Each session costs a round trip and a process on the target: the setup goes with the
	// copy of unchanged files if there are any, else with the tar.
	skip := map[string]bool{}
	var unchanged []Entry
	if p.Manifest != nil && p.Base != nil && validSHA(p.BaseSHA) {
		unchanged = p.Manifest.Unchanged(p.Base)
	}
	var resend []string
	if len(unchanged) > 0 {
		changed, n, err := c.copyUnchanged(ctx, setup.String(), tmp, p.BaseSHA, unchanged, p.Link)
		sent.Bytes += n
		var se *setupError
		switch {
		case errors.As(err, &se):
			return sent, c.fail(fmt.Errorf("prepare releases/%s: %w", sha[:7], se.err))
		case err != nil && ctx.Err() != nil:
			return sent, c.fail(ctx.Err())
		case err != nil:
			sent.Fallback = err.Error()
			if _, err := c.run(ctx, fmt.Sprintf("rm -rf %s && mkdir %s", shellQuote(tmp), shellQuote(tmp)), nil); err != nil {
				return sent, c.fail(fmt.Errorf("prepare releases/%s: %w", sha[:7], err))
			}
		default:
			for _, e := range unchanged {
				skip[e.Path] = !changed[e.Path]
			}
			for f := range changed {
				resend = append(resend, shellQuote(path.Join(tmp, f)))
			}
			sent.Copied, sent.Changed = len(unchanged)-len(changed), len(changed)
		}
		setup.Reset()
		setup.WriteString("set -e\n")
	}
	if len(resend) > 0 { // a copy, or a link to the live release's file: never written through
		slices.Sort(resend)
		fmt.Fprintf(&setup, "rm -f -- %s\n", strings.Join(resend, " "))
	}

	script := setup.String() + fmt.Sprintf("tar -x -f - -C %s\nmv %s %s\n", shellQuote(tmp), shellQuote(tmp), shellQuote(c.release(sha)))
	pr, pw := io.Pipe()
	counted := &counter{r: pr}
	go func() { pw.CloseWithError(writeTar(ctx, pw, dir, skip)) }()
	_, err := c.run(ctx, script, counted)
	pr.CloseWithError(errors.New("the target stopped reading"))
	sent.Bytes += counted.n
	if err != nil {
		return sent, c.fail(fmt.Errorf("prepare releases/%s: %w", sha[:7], err))
	}
	return sent, nil
}

// copyUnchanged runs setup (a script that makes tmp; its failure is a *setupError), then
// copies (or, with link, hard-links) files from releases/<base> into tmp on the target and
// checks each against its sha256 there. The target's copy of a release may have been
// written to since it was sent (an app writing into its own directory): changed holds the
// files that differ, which the caller sends. It needs GNU cp and sha256sum, as Linux
// distributions have; anywhere else it fails, and Prepare sends everything.
func (c *Conn) copyUnchanged(ctx context.Context, setup, tmp, base string, files []Entry, link bool) (changed map[string]bool, sent int64, err error) {
	var list, sums bytes.Buffer
	known := make(map[string]bool, len(files))
	for _, e := range files {
		list.WriteString(e.Path)
		list.WriteByte(0)
		fmt.Fprintf(&sums, "%s  %s\n", e.Sum, e.Path)
		known[e.Path] = true
	}
	sent = int64(list.Len() + sums.Len())
	const copyFailed = 10
	how := "--reflink=auto"
	if link {
		how = "-l"
	}
	copyScript := setup + fmt.Sprintf("(cd %s && xargs -0 cp %s -p --parents -t %s --) || exit %d\n",
		shellQuote(c.release(base)), how, shellQuote(tmp), copyFailed)
	if _, err := c.run(ctx, copyScript, &list); err != nil {
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != copyFailed {
			return nil, sent, &setupError{err}
		}
		return nil, sent, fmt.Errorf("copy unchanged files: %w", err)
	}
	// sha256sum names each file that differs ("path: FAILED") and exits 1; any other
	// outcome (no sha256sum, a name it had to escape) is a failed copy.
	out, err := c.run(ctx, fmt.Sprintf("cd %s && { sha256sum --quiet --strict -c - || echo \"exit $?\"; }", shellQuote(tmp)), &sums)
	if err != nil {
		return nil, sent, fmt.Errorf("check the unchanged files copied: %w", err)
	}
	changed = map[string]bool{}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if out == "" {
		return changed, sent, nil
	}
	if lines[len(lines)-1] != "exit 1" {
		return nil, sent, fmt.Errorf("check the unchanged files copied: sha256sum said %q", telling(out))
	}
	for _, l := range lines[:len(lines)-1] {
		f, ok := strings.CutSuffix(l, ": FAILED")
		if !ok {
			f, ok = strings.CutSuffix(l, ": FAILED open or read")
		}
		if !ok || !known[f] {
			return nil, sent, fmt.Errorf("check the unchanged files copied: sha256sum said %q", l)
		}
		changed[f] = true
	}
	if len(changed) == 0 {
		return nil, sent, fmt.Errorf("check the unchanged files copied: sha256sum failed and named no file")
	}
	return changed, sent, nil
}

// setupError is a failure of Prepare's setup (a shared file missing, the disk), which
// sending everything would not mend.
type setupError struct{ err error }

func (e *setupError) Error() string { return e.err.Error() }
func (e *setupError) Unwrap() error { return e.err }

// Activate points current at releases/<sha> on the target with one rename
// (posix-rename@openssh.com), and returns the release it named before ("" if none).
func (c *Conn) Activate(sha string) (previous string, err error) {
	if !validSHA(sha) {
		return "", c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	previous, err = c.Live()
	if err != nil {
		return "", err
	}
	if err := c.swap("releases/" + sha); err != nil {
		return previous, err
	}
	return previous, nil
}

// Restore points current back at previous ("" removes it: the target had none).
func (c *Conn) Restore(previous string) error {
	if previous == "" {
		if err := c.sftp.Remove(path.Join(c.path, "current")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return c.fail(fmt.Errorf("remove current: %w", err))
		}
		return nil
	}
	if !validSHA(previous) {
		return c.fail(fmt.Errorf("%q is not a commit", previous))
	}
	return c.swap("releases/" + previous)
}

func (c *Conn) swap(target string) error {
	tmp := path.Join(c.path, ".current.tmp")
	if err := c.sftp.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return c.fail(fmt.Errorf("swap current: %w", err))
	}
	if err := c.sftp.Symlink(target, tmp); err != nil {
		return c.fail(fmt.Errorf("swap current: %w", err))
	}
	if err := c.sftp.PosixRename(tmp, path.Join(c.path, "current")); err != nil {
		return c.fail(fmt.Errorf("swap current (posix-rename@openssh.com): %w", err))
	}
	return nil
}

// Discard removes releases/<sha> from the target, and what a cut-short Prepare left, unless
// current names it.
func (c *Conn) Discard(ctx context.Context, sha string) error {
	if !validSHA(sha) {
		return c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	if live, err := c.Live(); err != nil {
		return err
	} else if live == sha {
		return nil
	}
	_, err := c.run(ctx, fmt.Sprintf("rm -rf %s %s", shellQuote(c.release(sha)), shellQuote(path.Join(c.releases(), ".tmp-"+sha))), nil)
	return c.fail(err)
}

// Prune removes every release of the target that keep does not name and current does not
// name, and what cut-short prepares left.
func (c *Conn) Prune(ctx context.Context, keep []string) error {
	live, err := c.Live()
	if err != nil {
		return err
	}
	entries, err := c.sftp.ReadDir(c.releases())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return c.fail(fmt.Errorf("list releases: %w", err))
	}
	var gone []string
	for _, e := range entries {
		name := e.Name()
		sha := strings.TrimPrefix(name, ".tmp-")
		if !validSHA(sha) || sha == live || (name == sha && slices.Contains(keep, sha)) {
			continue
		}
		gone = append(gone, shellQuote(path.Join(c.releases(), name)))
	}
	if len(gone) == 0 {
		return nil
	}
	_, err = c.run(ctx, "rm -rf "+strings.Join(gone, " "), nil)
	return c.fail(err)
}

// writeTar writes dir as a tar stream: directories, regular files with their modes (but
// those skip names, which the target has), and symlinks as they are. Anything else (a
// socket a build left) is skipped.
func writeTar(ctx context.Context, w io.Writer, dir string, skip map[string]bool) error {
	tw := tar.NewWriter(w)
	err := walkRelease(dir, func(rel, p string, fi fs.FileInfo, link string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		regular := fi.Mode().IsRegular()
		if regular && skip[rel] {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = rel
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !regular {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close() // read only: closing it loses nothing
		n, err := io.Copy(tw, f)
		if err == nil && n != h.Size {
			err = fmt.Errorf("%s changed while it was sent", rel)
		}
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// counter counts what is read through it.
type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// limited keeps the first left bytes written to it and drops the rest.
type limited struct {
	w    io.Writer
	left int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.left > 0 {
		k := min(len(p), l.left)
		l.w.Write(p[:k])
		l.left -= k
	}
	return len(p), nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func validSHA(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
