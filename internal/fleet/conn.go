package fleet

import (
	"archive/tar"
	"bufio"
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

// run runs a POSIX shell script on the target, with stdin, and returns its output (the
// first 64 KiB); a failure carries the script's telling line of stderr.
func (c *Conn) run(ctx context.Context, script string, stdin io.Reader) (string, error) {
	var stdout bytes.Buffer
	err := c.session(ctx, script, func(w io.Writer, r *bufio.Reader) error {
		read := make(chan error, 1)
		go func() { // read while writing: a script that answers as it reads never stalls
			_, err := io.Copy(&limited{w: &stdout, left: 64 << 10}, r)
			read <- err
		}()
		if stdin != nil {
			if _, err := io.Copy(w, stdin); err != nil {
				return err
			}
		}
		if wc, ok := w.(io.Closer); ok {
			wc.Close()
		}
		return <-read
	})
	return stdout.String(), err
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

// Live is the release current names on the target, "" if it has none. A release set
// aside for its rebuild (releases/.hold-<sha>, PrepareRebuild) is still that release.
func (c *Conn) Live() (string, error) {
	sha, _, err := c.live()
	return sha, err
}

// live is Live, and whether current names the set-aside copy (releases/.hold-<sha>).
func (c *Conn) live() (sha string, held bool, err error) {
	l, err := c.sftp.ReadLink(path.Join(c.path, "current"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, c.fail(fmt.Errorf("read current: %w", err))
	}
	name, ok := strings.CutPrefix(l, "releases/")
	sha, held = strings.CutPrefix(name, holdPrefix)
	if !ok || !validSHA(sha) {
		return "", false, c.fail(fmt.Errorf("current points to %q, not a release", l))
	}
	return sha, held, nil
}

// holdPrefix names a live release's copy that serves while the release is rebuilt at its
// own path: releases/.hold-<sha>, as on the slipway host.
const holdPrefix = ".hold-"

func (c *Conn) hold(sha string) string { return path.Join(c.releases(), holdPrefix+sha) }

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
	// live (a directory of releases/: a sha, or .hold-<sha>). With both, the files Base has unchanged are copied on the target from
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
//
// It costs one session on the target: the sha256 of each unchanged file goes ahead over
// SFTP; the script made of the setup, the copy of unchanged files and their check says
// which files differ there, and then reads the tar of what is to be sent.
func (c *Conn) Prepare(ctx context.Context, sha, dir string, p Plan) (Sent, error) {
	if !validSHA(sha) {
		return Sent{}, c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	if ok, err := c.Has(sha); err != nil {
		return Sent{}, err
	} else if ok {
		return Sent{Kept: true}, nil
	}
	tmp := path.Join(c.releases(), ".tmp-"+sha)
	return c.prepare(ctx, sha, dir, p, fmt.Sprintf("mv %s %s\n", shellQuote(tmp), shellQuote(c.release(sha))))
}

// PrepareRebuild writes the local release dir as the new build of sha, the release the
// target has live, as the slipway host does for a redeploy: the new build is written
// into releases/.tmp-<sha>; the live build is set aside (releases/.hold-<sha>, a
// hard-linked copy that current is swapped to with one rename: the same files serve);
// and the new build takes releases/<sha>, not live yet. Activate(sha) makes it live, and
// DropHold then removes the copy; Unhold instead puts the old build back. p.Base is the
// old build's manifest. A target whose current names the copy already (a rebuild cut
// short) keeps it.
func (c *Conn) PrepareRebuild(ctx context.Context, sha, dir string, p Plan) (Sent, error) {
	if !validSHA(sha) {
		return Sent{}, c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	live, held, err := c.live()
	if err != nil {
		return Sent{}, err
	}
	if live != sha {
		return Sent{}, c.fail(fmt.Errorf("releases/%s is not live there", sha[:7]))
	}
	p.BaseSHA = sha
	if held {
		p.BaseSHA = holdPrefix + sha // the old build is there
	}
	tmp, hold := path.Join(c.releases(), ".tmp-"+sha), c.hold(sha)
	var finish string
	if !held {
		// cp -al: new directories, every file a hard link (GNU and BusyBox cp have it).
		finish = fmt.Sprintf("rm -rf %[1]s\ncp -al %[2]s %[1]s\n", shellQuote(hold), shellQuote(c.release(sha)))
	}
	sent, err := c.prepare(ctx, sha, dir, p, finish)
	if err != nil {
		return sent, err
	}
	if !held {
		if err := c.swap("releases/" + holdPrefix + sha); err != nil {
			return sent, err
		}
	}
	_, err = c.run(ctx, fmt.Sprintf("set -e\nrm -rf %[1]s\nmv %[2]s %[1]s\n", shellQuote(c.release(sha)), shellQuote(tmp)), nil)
	return sent, c.fail(err)
}

// Unhold undoes PrepareRebuild: the old build of sha goes back to releases/<sha>, live,
// and releases/.hold-<sha> goes. activated: Activate(sha) was called since (perhaps
// without an answer), so current is swapped back to the copy first.
//
// Which build releases/<sha> holds follows from what current names: once PrepareRebuild
// swapped current to the copy, the copy is the old build and whole; before, releases/<sha>
// still is the old build, and a copy is a leftover.
func (c *Conn) Unhold(ctx context.Context, sha string, activated bool) error {
	if !validSHA(sha) {
		return c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	tmp, hold := path.Join(c.releases(), ".tmp-"+sha), c.hold(sha)
	if activated {
		if err := c.swap("releases/" + holdPrefix + sha); err != nil {
			return err
		}
	}
	live, held, err := c.live()
	if err != nil {
		return err
	}
	if !held || live != sha {
		_, err := c.run(ctx, fmt.Sprintf("rm -rf %s %s", shellQuote(hold), shellQuote(tmp)), nil)
		return c.fail(err)
	}
	// current serves the old build from the copy while releases/<sha> is made of it again.
	if _, err := c.run(ctx, fmt.Sprintf("set -e\nrm -rf %[1]s\ncp -al %[2]s %[1]s\nrm -rf %[3]s\nmv %[1]s %[3]s\n",
		shellQuote(tmp), shellQuote(hold), shellQuote(c.release(sha))), nil); err != nil {
		return c.fail(fmt.Errorf("put back releases/%s: %w", sha[:7], err))
	}
	if err := c.swap("releases/" + sha); err != nil {
		return err
	}
	return c.DropHold(ctx, sha)
}

// DropHold removes releases/.hold-<sha>, unless current names it.
func (c *Conn) DropHold(ctx context.Context, sha string) error {
	if !validSHA(sha) {
		return c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	if live, held, err := c.live(); err != nil {
		return err
	} else if held && live == sha {
		return nil
	}
	_, err := c.run(ctx, "rm -rf "+shellQuote(c.hold(sha)), nil)
	return c.fail(err)
}

// prepare writes dir into releases/.tmp-<sha> on the target and runs finish, a shell
// script, once it is whole.
func (c *Conn) prepare(ctx context.Context, sha, dir string, p Plan, finish string) (Sent, error) {
	var sent Sent
	tmp := path.Join(c.releases(), ".tmp-"+sha)
	var script strings.Builder
	fmt.Fprintf(&script, "set -e\numask 022\nmkdir -p %s\n", shellQuote(c.releases()))
	for _, f := range p.SharedFiles {
		fmt.Fprintf(&script, "[ -e %s ] || { echo 'shared/%s is missing: create it on this host' >&2; exit 3; }\n",
			shellQuote(path.Join(c.path, "shared", f)), strings.ReplaceAll(f, "'", ""))
	}
	for _, d := range p.SharedDirs {
		fmt.Fprintf(&script, "mkdir -p %s\n", shellQuote(path.Join(c.path, "shared", d)))
	}
	fmt.Fprintf(&script, "rm -rf %s\nmkdir %s\n", shellQuote(tmp), shellQuote(tmp))

	var listed map[string]bool // the unchanged files the target copies from its live release
	if p.Manifest != nil && p.Base != nil && validSHA(strings.TrimPrefix(p.BaseSHA, holdPrefix)) {
		var sums bytes.Buffer
		listed = map[string]bool{}
		for _, e := range p.Manifest.Unchanged(p.Base) {
			if strings.ContainsAny(e.Path, "\n\\") { // sha256sum would escape its name: sent
				continue
			}
			fmt.Fprintf(&sums, "%s  %s\n", e.Sum, e.Path)
			listed[e.Path] = true
		}
		if len(listed) > 0 {
			file := tmp + ".sums"
			if err := c.upload(file, sums.Bytes()); err != nil {
				return sent, c.fail(fmt.Errorf("prepare releases/%s: send the unchanged files' sha256: %w", sha[:7], err))
			}
			sent.Bytes += int64(sums.Len())
			script.WriteString(copyScript(c.release(p.BaseSHA), tmp, file, p.Link))
		}
	}
	fmt.Fprintf(&script, "echo %s\ntar -x -f - -C %s\n%s", ready, shellQuote(tmp), finish)

	err := c.session(ctx, script.String(), func(stdin io.Writer, stdout *bufio.Reader) error {
		skip := map[string]bool{}
		if len(listed) > 0 {
			changed, fallback, err := readCopied(stdout, listed)
			if err != nil {
				return err
			}
			if fallback != "" {
				sent.Fallback = fallback
			} else {
				for f := range listed {
					skip[f] = !changed[f]
				}
				sent.Copied, sent.Changed = len(listed)-len(changed), len(changed)
			}
		}
		if line, err := readLine(stdout); err != nil || line != ready {
			return errNotReady
		}
		// A file sent over one copied there replaces it (tar unlinks it first): a link to
		// the live release's file is never written through.
		counted := &countingWriter{w: stdin}
		err := writeTar(ctx, counted, dir, skip)
		sent.Bytes += counted.n
		return err
	})
	if err != nil {
		return sent, c.fail(fmt.Errorf("prepare releases/%s: %w", sha[:7], err))
	}
	return sent, nil
}

// ready is what Prepare's script prints when it reads the tar.
const ready = "SLIPWAY-READY"

// errNotReady is a Prepare script that ended before it read the tar: its stderr says why.
var errNotReady = errors.New("the target did not take the release")

// copyScript copies (or, with link, hard-links) the files sums (a file on the target,
// sha256sum's format) lists from the release base into tmp, and checks each against its
// sha256: the target's copy of a release may have been written to since it was sent (an
// app writing into its own directory). It prints what sha256sum says of the files that
// differ, then COPIED; or, if the copy fails (no GNU cp), COPYFAILED and why, and empties
// tmp. The check needs GNU coreutils' sha256sum; without, it names no file and fails.
func copyScript(base, tmp, sums string, link bool) string {
	how := "--reflink=auto"
	if link {
		how = "-l"
	}
	return fmt.Sprintf(`s=%[3]s
if err=$( (cd %[1]s && cut -c67- "$s" | tr '\n' '\000' | xargs -0 cp %[4]s -p --parents -t %[2]s --) 2>&1 ); then
  (cd %[2]s && sha256sum --quiet --strict -c "$s") || echo "exit $?"
  echo COPIED
else
  printf 'COPYFAILED %%s\n' "$(printf '%%s' "$err" | tail -n 1)"
  rm -rf %[2]s && mkdir %[2]s
fi
rm -f "$s"
`, shellQuote(base), shellQuote(tmp), shellQuote(sums), how)
}

// readCopied reads copyScript's report: the files that differ there, or why the copy
// failed (fallback). Anything else it prints (no sha256sum, a name it had to escape) makes
// the copy untrusted: fallback.
func readCopied(r *bufio.Reader, listed map[string]bool) (changed map[string]bool, fallback string, err error) {
	changed = map[string]bool{}
	var status string
	for range len(listed) + 3 {
		line, err := readLine(r)
		if err != nil {
			return nil, "", errNotReady
		}
		if why, ok := strings.CutPrefix(line, "COPYFAILED "); ok {
			return nil, "copy unchanged files: " + why, nil
		}
		switch {
		case line == "COPIED" && status == "" && len(changed) == 0:
			return changed, "", nil
		case line == "COPIED" && status == "exit 1" && len(changed) > 0:
			return changed, "", nil
		case line == "COPIED":
			return nil, fmt.Sprintf("check the unchanged files copied: sha256sum failed (%s) and named no file", status), nil
		case strings.HasPrefix(line, "exit "):
			status = line
			continue
		}
		f, ok := strings.CutSuffix(line, ": FAILED")
		if !ok {
			f, ok = strings.CutSuffix(line, ": FAILED open or read")
		}
		if !ok || !listed[f] || status != "" {
			return nil, fmt.Sprintf("check the unchanged files copied: sha256sum said %q", line), drain(r)
		}
		changed[f] = true
	}
	return nil, "check the unchanged files copied: sha256sum said too much", drain(r)
}

// drain reads r to the COPIED line that ends copyScript's report.
func drain(r *bufio.Reader) error {
	for {
		line, err := readLine(r)
		if err != nil {
			return errNotReady
		}
		if line == "COPIED" {
			return nil
		}
	}
}

// readLine reads one line of what a Prepare script prints, without its newline. A line
// longer than r's buffer (64 KiB: a path is at most 4 KiB) is an error, not a growing
// string: the target's output is bounded like any input.
func readLine(r *bufio.Reader) (string, error) {
	b, err := r.ReadSlice('\n')
	if err != nil {
		return "", err
	}
	return string(b[:len(b)-1]), nil
}

// upload writes b to file on the target (mode 0600: the sha256 of a secret file is
// nobody else's business).
func (c *Conn) upload(file string, b []byte) error {
	f, err := c.sftp.Create(file)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// session runs script with /bin/sh -c on the target and talk, which writes its stdin and
// reads its stdout, at once; stdin is closed when talk returns. A failure carries the
// script's telling line of stderr.
func (c *Conn) session(ctx context.Context, script string, talk func(stdin io.Writer, stdout *bufio.Reader) error) error {
	s, err := c.client.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	var stderr bytes.Buffer
	s.Stderr = &limited{w: &stderr, left: 64 << 10}
	stdin, err := s.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := s.StdoutPipe()
	if err != nil {
		return err
	}
	if err := s.Start("/bin/sh -c " + shellQuote(script)); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		terr := talk(stdin, bufio.NewReaderSize(stdout, 64<<10))
		stdin.Close()
		io.Copy(io.Discard, stdout) // what the script prints after: Wait needs it read
		werr := s.Wait()
		if werr == nil && terr != nil {
			werr = terr
		}
		done <- werr
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		s.Signal(ssh.SIGKILL)
		s.Close()
		return ctx.Err()
	}
	if err != nil {
		err = lost(err)
		if msg := telling(stderr.String()); msg != "" {
			return fmt.Errorf("%s (%w)", msg, err)
		}
	}
	return err
}

// Activate points current at releases/<sha> on the target with one rename
// (posix-rename@openssh.com), and returns the release it named before ("" if none); known
// says whether previous was read, so that a failed Activate (perhaps only its answer was
// lost) may be undone with Restore(previous).
func (c *Conn) Activate(sha string) (previous string, known bool, err error) {
	if !validSHA(sha) {
		return "", false, c.fail(fmt.Errorf("%q is not a commit", sha))
	}
	previous, err = c.Live()
	if err != nil {
		return "", false, err
	}
	return previous, true, c.swap("releases/" + sha)
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
	tmp := path.Join(c.releases(), ".tmp-"+sha)
	_, err := c.run(ctx, fmt.Sprintf("rm -rf %s %s %s", shellQuote(c.release(sha)), shellQuote(tmp), shellQuote(tmp+".sums")), nil)
	return c.fail(err)
}

// Prune removes every release of the target that keep does not name and current does not
// name, and what cut-short prepares left. It runs under the environment's deploy lock: no
// Prepare runs beside it.
func (c *Conn) Prune(ctx context.Context, keep []string) error {
	live, held, err := c.live()
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
		sha, left := name, false // left: what a cut-short Prepare left, which is never kept
		if rest, ok := strings.CutPrefix(name, ".tmp-"); ok {
			sha, left = strings.TrimSuffix(rest, ".sums"), true
		}
		if rest, ok := strings.CutPrefix(name, holdPrefix); ok {
			sha, left = rest, !(held && rest == live) // the copy current serves from is kept
		}
		if !validSHA(sha) || (!left && (sha == live || slices.Contains(keep, sha))) {
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
		// Whole seconds and no atime or ctime: then most entries fit the 512 bytes of a
		// USTAR header, and only a long name or a huge file needs PAX records.
		h.ModTime, h.AccessTime, h.ChangeTime = h.ModTime.Truncate(time.Second), time.Time{}, time.Time{}
		h.Format = tar.FormatUnknown
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

// countingWriter counts what is written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
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
