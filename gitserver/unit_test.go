package gitserver

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/storage/filesystem"
	"github.com/rs/zerolog"
)

func TestValidateRepo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"myapp/production", true},
		{"My.App_2/prod-eu.1", true},
		{"a/b", true},
		{"a/b.gitx", true},
		{strings.Repeat("a", 50) + "/" + strings.Repeat("b", 49), true},
		{strings.Repeat("a", 50) + "/" + strings.Repeat("b", 50), false},
		{"", false},
		{"myapp", false},
		{"myapp/", false},
		{"/production", false},
		{"a/b/c", false},
		{"../x", false},
		{"./x", false},
		{"a/..", false},
		{"a/.", false},
		{"a/.hidden", false},
		{"-app/prod", false},
		{"app/-prod", false},
		{"_app/prod", false},
		{"app/prod.git", false},
		{"app.git/prod", false},
		{"app/prod.git.git", false},
		{"app name/prod", false},
		{"app\x00/prod", false},
		{"app/pr\nod", false},
		{"%2e%2e/x", false},
		{"app\\x/prod", false},
		{"аpp/prod", false}, // Cyrillic а
		{"/app/prod", false},
	} {
		err := ValidateRepo(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateRepo(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

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

func TestParseKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, alice := newKey(t, dir, "alice")
	alicePub, _ := os.ReadFile(filepath.Join(dir, "id_alice.pub"))
	bobPub := func() string {
		newKey(t, dir, "bob")
		b, _ := os.ReadFile(filepath.Join(dir, "id_bob.pub"))
		return strings.TrimSpace(string(b))
	}()
	carolPub := func() string {
		newKey(t, dir, "carol")
		b, _ := os.ReadFile(filepath.Join(dir, "id_carol.pub"))
		return strings.TrimSpace(string(b))
	}()
	fields := strings.Fields(carolPub)

	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# team\n\n"+string(alicePub)+fields[0]+" "+fields[1]+" alice laptop\n"), 0o644)
	keys, err := ParseKeys(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].Name != "alice" || keys[1].Name != "alice laptop" ||
		string(keys[0].Key.Marshal()) != string(alice.Key.Marshal()) {
		t.Errorf("keys = %+v", keys)
	}

	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte(strings.Join([]string{
		string(bytes.TrimSpace(alicePub)), // 1: fine
		"not a key at all",                // 2
		fields[0] + " " + fields[1],       // 3: no comment
		`command="echo hi" ` + bobPub,     // 4: options
		"restrict " + bobPub,              // 5: options
		string(bytes.TrimSpace(alicePub)), // 6: duplicate of 1
		"",
		bobPub, // 8: fine
	}, "\n")), 0o644)
	keys, err = ParseKeys(bad)
	if err == nil {
		t.Fatal("ParseKeys accepted a bad file")
	}
	// The good lines (1 and 8) still come back, for callers that go on without the bad ones.
	if len(keys) != 2 || keys[0].Name != "alice" || keys[1].Name != "bob" {
		t.Errorf("keys parsed beside the problems = %+v, want alice and bob", keys)
	}
	for _, want := range []string{
		bad + ":2: not a public key",
		bad + ":3: key has no comment",
		bad + ":4: key options are not supported",
		bad + ":5: key options are not supported",
		bad + ":6: duplicate key (also on line 1)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 5 {
		t.Errorf("%d problems reported, want 5:\n%v", n, err)
	}
	if _, err := ParseKeys(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
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
	data, _ := os.ReadFile(cfg.HostKeyPath)
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
	entries, _ := os.ReadDir(filepath.Dir(cfg.HostKeyPath))
	if len(entries) != 1 {
		t.Errorf("temporary files left next to the host key: %v", entries)
	}

	os.WriteFile(filepath.Join(dir, "garbage"), []byte("nope"), 0o600)
	cfg.HostKeyPath = filepath.Join(dir, "garbage")
	if _, err := New(cfg, &fakeDeployer{}, log); err == nil {
		t.Error("New accepted a garbage host key")
	}
}

// buildPack makes a version-2 pack of whole (non-delta) objects by hand.
func buildPack(t *testing.T, objs []plumbing.ObjectType, data [][]byte) []byte {
	t.Helper()
	raw := make([]rawObject, len(objs))
	for i, typ := range objs {
		raw[i] = rawObject{typ: typ, data: data[i]}
	}
	return rawPack(raw...)
}

func TestCopyPackStopsAtTrailer(t *testing.T) {
	t.Parallel()
	pack := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject, plumbing.BlobObject},
		[][]byte{[]byte("hello\n"), bytes.Repeat([]byte("big blob "), 10000)})
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(pack), strings.NewReader("AFTER")))
	var out bytes.Buffer
	p, err := copyPack(&out, r)
	if err != nil || len(p.objects) != 2 {
		t.Fatalf("copyPack = %v, %v", p, err)
	}
	if !bytes.Equal(out.Bytes(), pack) {
		t.Error("copied bytes differ from the pack")
	}
	if rest, _ := io.ReadAll(r); string(rest) != "AFTER" {
		t.Errorf("copyPack read past the trailer: left %q", rest)
	}
}

func TestCopyPackRejectsBadPacks(t *testing.T) {
	t.Parallel()
	good := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject}, [][]byte{[]byte("hello world\n")})
	flip := func(i int) []byte {
		p := bytes.Clone(good)
		p[i] ^= 0x01
		return p
	}
	// A blob that declares 3 bytes but inflates to 12.
	lying := bytes.Clone(good)
	lying[12] = byte(plumbing.BlobObject)<<4 | 3
	sum := sha1.Sum(lying[:len(lying)-20])
	copy(lying[len(lying)-20:], sum[:])

	for name, p := range map[string][]byte{
		"empty":       nil,
		"truncated":   good[:len(good)-5],
		"checksum":    flip(len(good) - 1),
		"signature":   flip(0),
		"version":     flip(7),
		"zlib data":   flip(len(good) - 25),
		"lying size":  lying,
		"bad type":    append(append([]byte{}, good[:12]...), 0x50, 0x00),
		"zero offset": append(append([]byte{}, good[:12]...), 0x60, 0x00),
	} {
		_, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(p)))
		if !errors.Is(err, errPack) {
			t.Errorf("%s: err = %v, want errPack", name, err)
		}
	}
}

func TestStorePack(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "r.git")
	if err := createRepo(dir, plumbing.NewBranchReferenceName("main")); err != nil {
		t.Fatal(err)
	}
	blob := []byte("stored blob\n")
	pack := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject}, [][]byte{blob})
	n, err := storePack(dir, bufio.NewReader(bytes.NewReader(pack)), func() {})
	if err != nil || n != 1 {
		t.Fatalf("storePack = %d, %v", n, err)
	}
	st := filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault())
	h := plumbing.ComputeHash(plumbing.BlobObject, blob)
	if _, err := st.EncodedObject(plumbing.BlobObject, h); err != nil {
		t.Errorf("stored blob not found: %v", err)
	}

	// An empty pack stores nothing; a bad one leaves nothing behind.
	storePack(dir, bufio.NewReader(bytes.NewReader(buildPack(t, nil, nil))), func() {})
	bad := bytes.Clone(pack)
	bad[len(bad)-1] ^= 1
	if _, err := storePack(dir, bufio.NewReader(bytes.NewReader(bad)), func() {}); !errors.Is(err, errPack) {
		t.Errorf("bad pack: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "objects", "pack"))
	if len(entries) != 2 {
		t.Errorf("objects/pack holds %v, want one .idx and one .pack", entries)
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
