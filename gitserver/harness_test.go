package gitserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/slipway/slipway/internal/authkeys"
)

// fakeDeployer is a Deployer whose behaviour each test sets; it records what it was given.
// Like the real one, it lets one push at a time reserve the environment: a Reserve while
// another holds it waits up to its wait, then fails with ErrBusy.
type fakeDeployer struct {
	branch     string // default "main"
	reserveErr error
	inspectErr error
	deploy     func(ctx context.Context, p Push, out io.Writer) error
	waiting    chan time.Duration // if set, gets the wait of every Reserve that has to wait

	mu       sync.Mutex
	sem      chan struct{} // held while reserved; made on first use
	holder   string        // who holds sem
	live     string        // what Reserve and Inspect report as the live commit
	reserves int
	releases int
	inspects []string // who asked
	waits    []time.Duration
	pushes   []Push
}

func (d *fakeDeployer) target() Target {
	branch := d.branch
	if branch == "" {
		branch = "main"
	}
	return Target{Branch: branch, Live: d.live}
}

func (d *fakeDeployer) Reserve(ctx context.Context, repo, pusher string, wait time.Duration) (Target, func(), error) {
	d.mu.Lock()
	d.reserves++
	d.waits = append(d.waits, wait)
	if d.sem == nil {
		d.sem = make(chan struct{}, 1)
	}
	sem, holder := d.sem, d.holder
	d.mu.Unlock()
	if d.reserveErr != nil {
		return Target{}, nil, d.reserveErr
	}
	busy := fmt.Errorf("%s is %w: %s is deploying since 12:00:01", repo, ErrBusy, holder)
	select {
	case sem <- struct{}{}:
	default:
		if wait <= 0 {
			return Target{}, nil, busy
		}
		if d.waiting != nil {
			d.waiting <- wait
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case sem <- struct{}{}:
		case <-t.C:
			return Target{}, nil, busy
		case <-ctx.Done():
			return Target{}, nil, ctx.Err()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.holder = pusher
	var once sync.Once
	return d.target(), func() {
		once.Do(func() {
			d.mu.Lock()
			d.releases++
			d.holder = ""
			d.mu.Unlock()
			<-sem
		})
	}, nil
}

func (d *fakeDeployer) Inspect(repo, who string) (Target, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inspects = append(d.inspects, who)
	if d.inspectErr != nil {
		return Target{}, d.inspectErr
	}
	return d.target(), nil
}

func (d *fakeDeployer) Deploy(ctx context.Context, p Push, out io.Writer) error {
	d.mu.Lock()
	d.pushes = append(d.pushes, p)
	d.mu.Unlock()
	if d.deploy != nil {
		return d.deploy(ctx, p, out)
	}
	_, _ = fmt.Fprintf(out, "deploying %s\n", p.NewSHA) // tests check what the pusher sees
	return nil
}

func (d *fakeDeployer) got() []Push {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Push(nil), d.pushes...)
}

// hold reserves the environment as who, the way a running deploy does, until the returned
// func is called.
func (d *fakeDeployer) hold(t *testing.T, who string) (release func()) {
	t.Helper()
	_, release, err := d.Reserve(t.Context(), "myapp/production", who, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return release
}

func (d *fakeDeployer) counts() (reserves, releases int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reserves, d.releases
}

// harness is a Server on 127.0.0.1:0 with one authorized key (alice), driven by the real
// git and ssh in a hermetic HOME.
type harness struct {
	t        *testing.T
	srv      *Server
	d        *fakeDeployer
	addr     string
	port     string
	dir      string
	reposDir string
	home     string
	alice    string // private key path
	aliceKey authkeys.Key
	logs     *logBuffer // the server's log lines, also written to the test's log

	stopOnce sync.Once
	served   chan error
}

func start(t *testing.T, d *fakeDeployer, tweak func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, d: d, dir: dir, reposDir: filepath.Join(dir, "repos"), home: filepath.Join(dir, "home")}
	if err := os.MkdirAll(h.home, 0o700); err != nil {
		t.Fatal(err)
	}
	h.alice, h.aliceKey = newKey(t, h.home, "alice")
	cfg := Config{
		HostKeyPath: filepath.Join(dir, "data", "ssh_host_ed25519_key"),
		Keys:        []authkeys.Key{h.aliceKey},
		ReposDir:    h.reposDir,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	h.logs = &logBuffer{}
	log := zerolog.New(io.MultiWriter(zerolog.NewTestWriter(t), h.logs)).Level(zerolog.InfoLevel)
	srv, err := New(cfg, d, log)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.srv, h.addr = srv, l.Addr().String()
	_, h.port, _ = net.SplitHostPort(h.addr) // the listener's own address: host:port
	h.served = make(chan error, 1)
	go func() { h.served <- srv.Serve(l) }()
	t.Cleanup(func() { _ = h.stop(5 * time.Second) }) // a test that needs a clean stop checks its own
	return h
}

// stop shuts the server down (once) and checks that Serve returned ErrServerClosed.
func (h *harness) stop(grace time.Duration) (err error) {
	h.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		err = h.srv.Shutdown(ctx)
		if serr := <-h.served; !errors.Is(serr, ErrServerClosed) {
			h.t.Errorf("Serve returned %v, want ErrServerClosed", serr)
		}
	})
	return err
}

// newKey makes an ed25519 key pair with ssh-keygen, commented name.
func newKey(t *testing.T, dir, name string) (path string, key authkeys.Key) {
	t.Helper()
	path = filepath.Join(dir, "id_"+name)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pk, comment, _, _, err := gossh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return path, authkeys.Key{Name: comment, Key: pk}
}

func (h *harness) env(key string) []string {
	return []string{
		"HOME=" + h.home,
		"PATH=" + os.Getenv("PATH"),
		"LANG=C",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.com",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.com",
		"GIT_SSH_COMMAND=" + h.sshCommand(key),
	}
}

func (h *harness) sshCommand(key string) string {
	return "ssh -F /dev/null -i " + key + " -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes" +
		" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
}

// exec runs a command in dir with the hermetic environment and key; it never hangs a test.
func (h *harness) exec(dir, key string, name string, args ...string) (stdout, stderr string, err error) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = h.env(key)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		h.t.Fatalf("%s %s: timed out\nstderr: %s", name, strings.Join(args, " "), e.String())
	}
	return o.String(), e.String(), err
}

// git runs a local git command that must succeed and returns its trimmed stdout.
func (h *harness) git(dir string, args ...string) string {
	h.t.Helper()
	out, errOut, err := h.exec(dir, h.alice, "git", args...)
	if err != nil {
		h.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return strings.TrimSpace(out)
}

// push runs git push in dir as alice and returns its stderr.
func (h *harness) push(dir string, args ...string) (string, error) {
	h.t.Helper()
	_, errOut, err := h.exec(dir, h.alice, "git", append([]string{"push"}, args...)...)
	return errOut, err
}

func (h *harness) url(repo string) string {
	return "ssh://git@127.0.0.1:" + h.port + "/" + repo
}

// work makes a local repository on branch main with one commit, whose remote "production"
// is myapp/production on the server.
func (h *harness) work() string {
	h.t.Helper()
	dir := filepath.Join(h.dir, fmt.Sprintf("work%d", time.Now().UnixNano()))
	h.git(h.dir, "init", "-q", "-b", "main", dir)
	h.commit(dir, "a.txt", "hello\n")
	h.git(dir, "remote", "add", "production", h.url("myapp/production"))
	return dir
}

// commit writes file and commits it; it returns the new commit's id.
func (h *harness) commit(dir, file, content string) string {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.git(dir, "add", file)
	h.git(dir, "commit", "-q", "-m", "edit "+file)
	return h.git(dir, "rev-parse", "HEAD")
}

// serverRef returns the value of ref in the server's myapp/production repo, "" if none.
func (h *harness) serverRef(ref string) string {
	h.t.Helper()
	out, _, err := h.exec(h.dir, h.alice, "git", "--git-dir", filepath.Join(h.reposDir, "myapp", "production.git"),
		"rev-parse", "--verify", "-q", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// fsckServer runs git fsck with flags on the server's myapp/production repo, and fails the
// test (going on) if git finds anything.
func (h *harness) fsckServer(flags ...string) {
	h.t.Helper()
	repo := filepath.Join(h.reposDir, "myapp", "production.git")
	if _, errOut, err := h.exec(h.dir, h.alice, "git", append([]string{"--git-dir", repo, "fsck"}, flags...)...); err != nil {
		h.t.Errorf("git fsck on the server repo: %v\n%s", err, errOut)
	}
}

// ssh runs the real ssh client against the server with a remote command.
func (h *harness) ssh(key string, args ...string) (stdout, stderr string, err error) {
	h.t.Helper()
	argv := append(strings.Fields(h.sshCommand(key))[1:], "-p", h.port, "git@127.0.0.1")
	return h.exec(h.dir, key, "ssh", append(argv, args...)...)
}

// client dials the server in-process with x/crypto/ssh as alice.
func (h *harness) client() *gossh.Client {
	h.t.Helper()
	pem, err := os.ReadFile(h.alice)
	if err != nil {
		h.t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(pem)
	if err != nil {
		h.t.Fatal(err)
	}
	c, err := gossh.Dial("tcp", h.addr, &gossh.ClientConfig{
		User:            "git",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = c.Close() }) // the test is over; the server may have closed it first
	return c
}

// rawGit is a git command driven by hand over an SSH session as alice, already past the
// ref advertisement: for what the real git client will not send.
type rawGit struct {
	sess   *gossh.Session
	stdin  io.WriteCloser
	out    *bufio.Reader // the session's stdout, after the advertisement
	stderr *bytes.Buffer
	adv    *packp.AdvRefs
}

// rawGit starts command (e.g. "git-receive-pack 'myapp/production'") and reads the
// advertisement. The session is closed when the test ends.
func (h *harness) rawGit(command string) *rawGit {
	h.t.Helper()
	sess, err := h.client().NewSession()
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = sess.Close() }) // the test is over; the server may have closed it first
	stdin, err := sess.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	g := &rawGit{sess: sess, stdin: stdin, out: bufio.NewReader(stdout), stderr: &bytes.Buffer{}, adv: packp.NewAdvRefs()}
	sess.Stderr = g.stderr
	if err := sess.Start(command); err != nil {
		h.t.Fatal(err)
	}
	if err := g.adv.Decode(g.out); err != nil {
		h.t.Fatalf("advertisement: %v", err)
	}
	return g
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	var se *gossh.ExitError
	if errors.As(err, &se) {
		return se.ExitStatus()
	}
	if err != nil {
		return -1
	}
	return 0
}

// logBuffer keeps what a server logs, for tests that check it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the log lines whose message is msg, decoded.
func (b *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(b.buf.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}
