package authkeys

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

func TestParse(t *testing.T) {
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
	keys, err := Parse(good)
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
	keys, err = Parse(bad)
	if err == nil {
		t.Fatal("Parse accepted a bad file")
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
	if _, err := Parse(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// newKey makes an ed25519 key pair in dir with ssh-keygen, commented name.
func newKey(t *testing.T, dir, name string) (path string, key Key) {
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
	return path, Key{Name: comment, Key: pk}
}
