package gitserver

import (
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
)

func TestRefusedCommandsRealSSH(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	for _, tc := range []struct {
		args []string // remote command; none = shell
		want string
	}{
		{nil, "slipway: no shell here"},
		{[]string{"git-upload-archive 'myapp/production.git'"}, `slipway: unknown command "git-upload-archive"`},
		{[]string{"status"}, `slipway: unknown command "status"`}, // no Commander
		{[]string{"scp", "-t", "/"}, `slipway: unknown command "scp"`},
		{[]string{"sh -c id"}, `slipway: unknown command "sh"`},
		{[]string{"git-receive-pack '../x'"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack '-x'"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack '--upload-pack=touch /tmp/x'"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack 'a/b/c'"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack '/myapp/production.git.git'"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack 'myapp/../production'"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack 'a' 'b'"}, "expected exactly one argument"},
		{[]string{"git-receive-pack"}, "missing repository argument"},
		{[]string{"git-receive-pack ''"}, "slipway: invalid repository"},
		{[]string{"git-receive-pack 'myapp/" + strings.Repeat("a", 200) + "'"}, "slipway: invalid repository"},
		{[]string{strings.Repeat("x", 64*1024)}, "slipway: command is longer than"},
	} {
		args := append([]string{"-T"}, tc.args...)
		_, stderr, err := h.ssh(h.alice, args...)
		if exitCode(err) != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("ssh %q: exit %d, stderr %q; want exit 1 and %q", tc.args, exitCode(err), stderr, tc.want)
		}
		if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("ssh %q: more than one line on stderr: %q", tc.args, stderr)
		}
	}
	if r, _ := d.counts(); r != 0 {
		t.Errorf("Reserve called %d times for refused commands", r)
	}
}

func TestRefusedCommandsInProcess(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	c := h.client()
	for _, cmd := range []string{
		"git-receive-pack 'myapp/prod\x00uction'",
		"git-receive-pack 'myapp/prod\nuction'",
		"git-receive-pack 'myapp/production'; id",
		"git-receive-pack 'myapp/$(id)'",
		"git-receive-pack 'myapp/`id`'",
		"git-receive-pack 'myapp/prоduction'", // Cyrillic о
		"env",
	} {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		sess.Stderr = &stderr
		err = sess.Run(cmd)
		if exitCode(err) != 1 || !strings.HasPrefix(stderr.String(), "slipway: ") {
			t.Errorf("%q: exit %d, stderr %q", cmd, exitCode(err), stderr.String())
		}
	}

	// No PTY, no port forwarding, no subsystems.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 40, 80, nil); err == nil {
		t.Error("PTY granted")
	}
	if err := sess.RequestSubsystem("sftp"); err == nil {
		t.Error("sftp subsystem granted")
	}
	if err := sess.Close(); err != nil {
		t.Error(err)
	}
	if conn, err := c.Dial("tcp", h.addr); err == nil {
		_ = conn.Close() // failing already: it should not exist
		t.Error("port forwarding granted")
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("remote port forwarding granted")
	}
}

// TestPackWithStdinKeptOpen drives receive-pack like libgit2 does: the client sends the pack
// and then keeps its side open while it waits for the report.
func TestPackWithStdinKeptOpen(t *testing.T) {
	t.Parallel()
	for _, sideBand := range []bool{true, false} {
		t.Run(fmt.Sprintf("sideband=%v", sideBand), func(t *testing.T) {
			t.Parallel()
			d := &fakeDeployer{}
			h := start(t, d, nil)
			work := h.work()
			head := h.git(work, "rev-parse", "HEAD")
			pack := gitPack(t, h, work, head)

			g := h.rawGit("git-receive-pack '/myapp/production.git'")
			sess, stdin, out, stderr, ar := g.sess, g.stdin, g.out, g.stderr, g.adv
			for _, c := range []string{"report-status", "delete-refs", "ofs-delta", "side-band-64k", "no-thin", "push-options", "quiet", "agent"} {
				if !ar.Capabilities.Supports(capability.Capability(c)) {
					t.Errorf("capability %s not advertised: %s", c, ar.Capabilities)
				}
			}
			caps := "report-status push-options"
			if sideBand {
				caps += " side-band-64k"
			}
			e := pktline.NewEncoder(stdin)
			for _, err := range []error{
				e.EncodeString(fmt.Sprintf("%s %s refs/heads/main\x00%s", plumbing.ZeroHash, head, caps)),
				e.Flush(),
				e.EncodeString("message=from libgit2"),
				e.Flush(),
			} {
				if err != nil {
					t.Fatal(err)
				}
			}
			if _, err := stdin.Write(pack); err != nil { // and stdin stays open
				t.Fatal(err)
			}

			done := make(chan struct{})
			var (
				report string
				rerr   error
			)
			go func() {
				defer close(done)
				report, rerr = readReport(out, sideBand)
			}()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Fatal("no report while stdin stays open")
			}
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !strings.Contains(report, "unpack ok\n") || !strings.Contains(report, "ok refs/heads/main\n") {
				t.Errorf("report = %q", report)
			}
			if err := sess.Wait(); err != nil {
				t.Errorf("session: %v", err)
			}
			if !sideBand && !strings.Contains(stderr.String(), "deploying "+head) {
				t.Errorf("deploy output without sideband not on stderr: %q", stderr.String())
			}
			if p := d.got(); len(p) != 1 || p[0].Options[0] != "message=from libgit2" {
				t.Errorf("pushes = %+v", p)
			}
			if got := h.serverRef("refs/heads/main"); got != head {
				t.Errorf("main = %q, want %q", got, head)
			}
		})
	}
}

func TestCorruptPackReportsUnpackError(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	pack := gitPack(t, h, work, head)
	pack[len(pack)-30] ^= 0xff

	g := h.rawGit("git receive-pack 'myapp/production'")
	sess, stdin, out := g.sess, g.stdin, g.out
	e := pktline.NewEncoder(stdin)
	for _, err := range []error{
		e.EncodeString(fmt.Sprintf("%s %s refs/heads/main\x00report-status side-band-64k", plumbing.ZeroHash, head)),
		e.Flush(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stdin.Write(pack); err != nil {
		t.Fatal(err)
	}
	report, err := readReport(out, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(report, "unpack ") || strings.HasPrefix(report, "unpack ok") ||
		!strings.Contains(report, "ng refs/heads/main unpacker error\n") {
		t.Errorf("report = %q", report)
	}
	if len(d.got()) != 0 {
		t.Error("Deploy called for a corrupt pack")
	}
	if err := sess.Wait(); err != nil {
		t.Errorf("session: %v", err)
	}
}

// gitPack returns a pack of everything reachable from rev, made by git pack-objects.
func gitPack(t *testing.T, h *harness, dir, rev string) []byte {
	t.Helper()
	cmd := exec.Command("git", "pack-objects", "--stdout", "--revs", "-q")
	cmd.Dir, cmd.Env = dir, h.env(h.alice)
	cmd.Stdin = strings.NewReader(rev + "\n")
	pack, err := cmd.Output()
	if err != nil {
		t.Fatalf("pack-objects: %v", err)
	}
	return pack
}

// readReport reads the server's answer after the pack up to the final flush and returns the
// report-status text. With sideband it demultiplexes by hand: band 1 holds the report (and
// keepalives), band 2 progress, and the stream must end with a flush.
func readReport(r io.Reader, sideBand bool) (string, error) {
	var band1 bytes.Buffer
	src := r
	if sideBand {
		sc := pktline.NewScanner(r)
		for {
			if !sc.Scan() {
				return "", fmt.Errorf("sideband stream ended without a flush: %v", sc.Err())
			}
			b := sc.Bytes()
			if len(b) == 0 {
				break
			}
			switch b[0] {
			case 1:
				band1.Write(b[1:])
			case 2:
			default:
				return "", fmt.Errorf("band %d: %q", b[0], b[1:])
			}
		}
		src = &band1
	}
	var report strings.Builder
	sc := pktline.NewScanner(src)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			return report.String(), nil
		}
		report.Write(sc.Bytes())
	}
	return "", fmt.Errorf("report without its flush (%v): %q", sc.Err(), report.String())
}

// TestCiphersOpenSSH: the server offers AES-GCM first and keeps chacha20-poly1305 and AES-CTR;
// which one is used is OpenSSH's choice.
func TestCiphersOpenSSH(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	_, stderr, _ := h.ssh(h.alice, "-vv", "status") // refused (no Commander): the handshake is what counts
	if !strings.Contains(stderr, "ciphers stoc: aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr") {
		t.Errorf("server's cipher proposal not AES-GCM first:\n%s", stderr)
	}
	for _, c := range []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"} {
		_, stderr, _ := h.ssh(h.alice, "-v", "-c", c, "status") // refused, as above
		if !strings.Contains(stderr, "kex: server->client cipher: "+c) {
			t.Errorf("ssh -c %s: not negotiated:\n%s", c, stderr)
		}
	}
}

// TestAgentForwardingRefused: a request to forward the client's agent is answered no
// (gliderlabs answers yes), and the session goes on.
func TestAgentForwardingRefused(t *testing.T) {
	t.Parallel()
	h := start(t, &fakeDeployer{}, nil)
	sess, err := h.client().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	ok, err := sess.SendRequest("auth-agent-req@openssh.com", true, nil)
	if err != nil || ok {
		t.Errorf("agent forwarding request: ok=%v err=%v, want refused", ok, err)
	}
	out, err := sess.CombinedOutput("status")
	if exitCode(err) != 1 || !strings.Contains(string(out), `unknown command "status"`) {
		t.Errorf("session after the refusal: exit %d, %q", exitCode(err), out)
	}
}

// TestUpdateLineTrailingTextRefused: an update command with text after the ref name is a
// malformed request, refused before any pack is read; it does not update the ref it starts
// with (go-git's decoder would take `refs/heads/main` and drop the rest).
func TestUpdateLineTrailingTextRefused(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	head := h.git(work, "rev-parse", "HEAD")
	pack := gitPack(t, h, work, head)

	g := h.rawGit("git-receive-pack 'myapp/production'")
	e := pktline.NewEncoder(g.stdin)
	for _, err := range []error{
		e.EncodeString(fmt.Sprintf("%s %s refs/heads/main garbage\x00report-status side-band-64k", plumbing.ZeroHash, head)),
		e.Flush(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The server may have ended the session before the pack: a failed write is expected.
	_, _ = g.stdin.Write(pack)
	_ = g.stdin.Close()
	err := g.sess.Wait()
	if exitCode(err) != 1 || !strings.Contains(g.stderr.String(), "slipway: bad push request: malformed command") {
		t.Errorf("exit %d, stderr %q; want 1 and a malformed command", exitCode(err), g.stderr.String())
	}
	if p := d.got(); len(p) != 0 {
		t.Errorf("Deploy called: %+v", p)
	}
	if got := h.serverRef("refs/heads/main"); got != "" {
		t.Errorf("main = %s, want no branch", got)
	}
}

func TestDecodeUpdateRequest(t *testing.T) {
	t.Parallel()
	const (
		a = "1111111111111111111111111111111111111111"
		b = "2222222222222222222222222222222222222222"
		z = "0000000000000000000000000000000000000000"
	)
	pkts := func(lines ...string) []byte {
		var buf bytes.Buffer
		e := pktline.NewEncoder(&buf)
		for _, l := range lines {
			if l == "" {
				_ = e.Flush() // into a bytes.Buffer: no error
				continue
			}
			_ = e.EncodeString(l)
		}
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name string
		in   []byte
		cmds string // "old new ref" per command, "; "-joined; "" = refused
		caps string
		err  string
	}{
		{"one", pkts(z+" "+a+" refs/heads/main\x00report-status side-band-64k", ""), z + " " + a + " refs/heads/main", "report-status side-band-64k", ""},
		{"two and LF", pkts(a+" "+b+" refs/heads/main\x00report-status", b+" "+z+" refs/heads/x\n", ""), a + " " + b + " refs/heads/main; " + b + " " + z + " refs/heads/x", "report-status", ""},
		{"upper-case hex", pkts(strings.ToUpper("abcdef"+a[6:])+" "+b+" refs/heads/main\x00", ""), "abcdef" + a[6:] + " " + b + " refs/heads/main", "", ""},
		{"no capabilities", pkts(a+" "+b+" refs/heads/main", ""), a + " " + b + " refs/heads/main", "", ""},
		{"shallow", pkts("shallow "+a, a+" "+b+" refs/heads/main\x00report-status", ""), a + " " + b + " refs/heads/main", "report-status", ""},
		{"trailing text", pkts(z+" "+a+" refs/heads/main garbage\x00report-status", ""), "", "", "malformed command"},
		{"trailing text, second", pkts(z+" "+a+" refs/heads/x\x00report-status", a+" "+b+" refs/heads/main x", ""), "", "", "malformed command"},
		{"tab", pkts(z+" "+a+" refs/heads/main\tx\x00", ""), "", "", "malformed command"},
		{"NUL later", pkts(z+" "+a+" refs/heads/x\x00", a+" "+b+" refs/heads/main\x00x", ""), "", "", "malformed command"},
		{"two spaces", pkts(z+"  "+a+" refs/heads/main\x00", ""), "", "", "malformed command"},
		{"no ref", pkts(z+" "+a+" \x00", ""), "", "", "malformed command"},
		{"short id", pkts(z[1:]+" "+a+"0 refs/heads/main\x00", ""), "", "", "malformed command"},
		{"not hex", pkts(strings.Replace(a, "1", "g", 1)+" "+b+" refs/heads/main\x00", ""), "", "", "not hex"},
		{"both zero", pkts(z+" "+z+" refs/heads/main\x00", ""), "", "", "both values are zero"},
		{"no commands", pkts(""), "", "", "no commands"},
		{"no flush", pkts(z + " " + a + " refs/heads/main\x00"), "", "", "unexpected EOF"},
		{"bad shallow", pkts("shallow xyz", ""), "", "", "shallow"},
	} {
		req, err := decodeUpdateRequest(bytes.NewReader(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var cmds []string
		for _, c := range req.Commands {
			cmds = append(cmds, c.Old.String()+" "+c.New.String()+" "+string(c.Name))
		}
		if got := strings.Join(cmds, "; "); got != tc.cmds {
			t.Errorf("%s: commands %q, want %q", tc.name, got, tc.cmds)
		}
		if got := req.Capabilities.String(); got != tc.caps {
			t.Errorf("%s: capabilities %q, want %q", tc.name, got, tc.caps)
		}
	}
}
