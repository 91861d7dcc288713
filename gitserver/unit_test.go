package gitserver

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/rs/zerolog"
)

func TestParseCommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw              string
		service, repo    string // repo "" = repoFromPath fails
		parseErrContains string
	}{
		{raw: "git-receive-pack '/myapp/production.git'", service: serviceReceivePack, repo: "myapp/production"},
		{raw: "git-receive-pack 'myapp/production.git'", service: serviceReceivePack, repo: "myapp/production"},
		{raw: "git receive-pack '/myapp/production'", service: serviceReceivePack, repo: "myapp/production"},
		{raw: "git-receive-pack myapp/production", service: serviceReceivePack, repo: "myapp/production"},
		{raw: "git-upload-pack '/myapp/production.git'", service: serviceUploadPack, repo: "myapp/production"},
		{raw: "git-receive-pack '../x'", service: serviceReceivePack},
		{raw: "git-receive-pack '//myapp/production'", service: serviceReceivePack},
		{raw: "git-receive-pack '-x'", service: serviceReceivePack},
		{raw: "git-receive-pack 'myapp/production.git/'", service: serviceReceivePack},
		{raw: "", parseErrContains: "no shell"},
		{raw: "git-receive-pack", parseErrContains: "missing repository"},
		{raw: "git-receive-pack 'a' 'b'", parseErrContains: "exactly one argument"},
		{raw: "git-receive-pack a b", parseErrContains: "exactly one argument"},
		{raw: "git-receive-pack 'a", parseErrContains: "exactly one argument"},
		{raw: "git-receive-pack \"a/b\"", parseErrContains: "exactly one argument"},
		{raw: "git-receive-pack my\u00a0app/x", parseErrContains: "exactly one argument"}, // go-shlex splits there
		{raw: "git-upload-archive 'a/b'", parseErrContains: "unknown command"},
		{raw: "git", parseErrContains: "unknown command"},
		{raw: "scp -t /", parseErrContains: "unknown command"},
		{raw: strings.Repeat("x", 5000), parseErrContains: "longer than"},
		{raw: "status\x01", parseErrContains: "control characters"},
		{raw: "git-receive-pack 'a/b\tc'", parseErrContains: "control characters"},
		{raw: "status \xff", parseErrContains: "UTF-8"},
	} {
		service, path, err := parseCommand(tc.raw)
		if tc.parseErrContains != "" {
			if err == nil || !strings.Contains(err.Error(), tc.parseErrContains) {
				t.Errorf("parseCommand(%q) = %v, want error with %q", tc.raw, err, tc.parseErrContains)
			}
			continue
		}
		if err != nil || service != tc.service {
			t.Errorf("parseCommand(%q) = %q, %v; want %q", tc.raw, service, err, tc.service)
			continue
		}
		repo, err := repoFromPath(path)
		if repo != tc.repo || (err == nil) != (tc.repo != "") {
			t.Errorf("repoFromPath(%q) = %q, %v; want %q", path, repo, err, tc.repo)
		}
	}
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"build: exit status 1\nmore":  "build: exit status 1",
		"a\x1b[31mred\x1b[0m\tb\x00c": "a[31mred[0mbc",
		"  padded  ":                  "padded",
		"bad \xff utf8":               "bad ? utf8",
		strings.Repeat("é", 150):      strings.Repeat("é", 100),
	} {
		if got := oneLine(in, 200); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHostKeyStable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := Config{HostKeyPath: filepath.Join(dir, "data", "host_key"), ReposDir: filepath.Join(dir, "repos")}
	log := zerolog.New(zerolog.NewTestWriter(t))
	s1, err := New(cfg, &fakeDeployer{}, log)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cfg.HostKeyPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("host key mode %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(cfg.HostKeyPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Errorf("host key is not an OpenSSH PEM key: %.40q", data)
	}
	s2, err := New(cfg, &fakeDeployer{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := s1.HostKeyFingerprint(), s2.HostKeyFingerprint(); a != b || !strings.HasPrefix(a, "SHA256:") {
		t.Errorf("fingerprints %q and %q", a, b)
	}
	if s1.signer.PublicKey().Type() != "ssh-ed25519" {
		t.Errorf("host key type %s", s1.signer.PublicKey().Type())
	}
	// OpenSSH reads it and sees the same fingerprint.
	out, err := exec.Command("ssh-keygen", "-l", "-f", cfg.HostKeyPath).Output()
	if err != nil || !strings.Contains(string(out), s1.HostKeyFingerprint()) {
		t.Errorf("ssh-keygen -l: %v, %q; want %s", err, out, s1.HostKeyFingerprint())
	}
	entries, err := os.ReadDir(filepath.Dir(cfg.HostKeyPath))
	if err != nil || len(entries) != 1 {
		t.Errorf("temporary files left next to the host key: %v", entries)
	}

	if err := os.WriteFile(filepath.Join(dir, "garbage"), []byte("nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.HostKeyPath = filepath.Join(dir, "garbage")
	if _, err := New(cfg, &fakeDeployer{}, log); err == nil {
		t.Error("New accepted a garbage host key")
	}
}

func TestShellWordsProblem(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		`status --json`:              "",
		`rollback 'a b' "c\"d" e\ f`: "",
		`say 'it\'`:                  "", // no escapes inside single quotes
		`say "a\\"`:                  "",
		`say 'a`:                     "command has an unclosed quote",
		`say "a\"`:                   "command has an unclosed quote",
		`say a\`:                     "command ends with a backslash",
	} {
		if got := shellWordsProblem(raw); got != want {
			t.Errorf("shellWordsProblem(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestWaitOption(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts []string
		want time.Duration
		err  string
	}{
		{nil, 0, ""},
		{[]string{"message=hi", "waiting=no"}, 0, ""},
		{[]string{"wait=2m"}, 2 * time.Minute, ""},
		{[]string{"wait=2m", "wait=90s"}, 90 * time.Second, ""},
		{[]string{"wait=0"}, 0, ""},
		{[]string{"wait=48h"}, time.Hour, ""},
		{[]string{"wait=5"}, 0, `"5" is not a duration`},
		{[]string{"wait=-5s"}, 0, "negative"},
		{[]string{"wait="}, 0, "not a duration"},
		{[]string{"wait"}, 0, "give a duration"},
	} {
		got, err := waitOption(tc.opts)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("waitOption(%q) = %v, %v; want %v, %q", tc.opts, got, err, tc.want, tc.err)
		}
	}
}

func TestCipherOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := New(Config{HostKeyPath: filepath.Join(dir, "hk"), ReposDir: dir}, &fakeDeployer{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	got := s.ssh.ServerConfigCallback(nil).Ciphers
	want := []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ciphers %q, want %q", got, want)
	}
}

func TestWrongBranch(t *testing.T) {
	t.Parallel()
	mainRef := plumbing.NewBranchReferenceName("main")
	commit := plumbing.NewHash(strings.Repeat("ab", 20))
	long := strings.Repeat("x", maxReasonLen)
	for _, tc := range []struct {
		repo   string
		ref    string
		newSHA plumbing.Hash
		deploy plumbing.ReferenceName
		want   string
	}{
		{"myapp/production", "refs/heads/feature", commit, mainRef,
			"only refs/heads/main deploys here; to deploy it: git push production feature:main"},
		{"myapp/staging", "refs/heads/fix/login-2", commit, plumbing.NewBranchReferenceName("release"),
			"only refs/heads/release deploys here; to deploy it: git push staging fix/login-2:release"},
		// No suggestion for a tag, a deletion, a name a shell would read otherwise, or a
		// suggestion longer than an ng reason may be.
		{"myapp/production", "refs/tags/v1", commit, mainRef, "only refs/heads/main deploys here"},
		{"myapp/production", "refs/heads/feature", plumbing.ZeroHash, mainRef, "only refs/heads/main deploys here"},
		{"myapp/production", "refs/heads/a;b", commit, mainRef, "only refs/heads/main deploys here"},
		{"myapp/production", "refs/heads/" + long, commit, mainRef, "only refs/heads/main deploys here"},
	} {
		cmd := &packp.Command{Name: plumbing.ReferenceName(tc.ref), New: tc.newSHA}
		got := wrongBranch(tc.repo, cmd, tc.deploy)
		if got != tc.want {
			t.Errorf("wrongBranch(%q, %s) = %q, want %q", tc.repo, tc.ref, got, tc.want)
		}
		if len(got) > maxReasonLen {
			t.Errorf("wrongBranch(%q, %s) is %d bytes, more than %d", tc.repo, tc.ref, len(got), maxReasonLen)
		}
	}
}

func TestReadPushOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		lines []string // pkt-lines; "" is a flush
		want  string   // options joined by "|"
		err   string
	}{
		{[]string{"message=deploy\n", ""}, "message=deploy", ""},
		{[]string{"wait=5m", "skip-tests", ""}, "wait=5m|skip-tests", ""},
		{[]string{""}, "", ""},
		{[]string{"message=a\nb", ""}, "", "newline or a NUL"},
		{[]string{"message=a\n\n", ""}, "", "newline or a NUL"},
		{[]string{"message=a\x00b", ""}, "", "newline or a NUL"},
		{[]string{"wait=5m"}, "", "unexpected EOF"},
	} {
		var in bytes.Buffer
		e := pktline.NewEncoder(&in)
		for _, l := range tc.lines {
			if l == "" {
				_ = e.Flush() // into a bytes.Buffer: no error
			} else {
				_ = e.EncodeString(l)
			}
		}
		opts, err := readPushOptions(&in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %q, %v; want an error with %q", tc.lines, opts, err, tc.err)
			}
			continue
		}
		if err != nil || strings.Join(opts, "|") != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.lines, opts, err, tc.want)
		}
	}
}
