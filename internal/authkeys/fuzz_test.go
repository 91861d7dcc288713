package authkeys

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	gossh "golang.org/x/crypto/ssh"
)

// FuzzParse: whatever an authorized_keys file holds, Parse returns only plain public keys,
// each once, named by a trimmed comment without control characters, each of which reads
// back the same from its own authorized_keys line; and every problem names the file.
// Its seed corpus is in testdata/fuzz; CI runs it for a few seconds
// (gitserver/FUZZ_TARGETS.txt).
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "authorized_keys")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		keys, err := Parse(path)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, path+":") {
					t.Fatalf("problem %q does not name the file", line)
				}
			}
		}
		if lines := bytes.Count(content, []byte("\n")) + 1; len(keys) > lines {
			t.Fatalf("%d keys from %d lines", len(keys), lines)
		}
		seen := map[string]bool{}
		for _, k := range keys {
			if k.Key == nil || k.Name == "" || strings.TrimSpace(k.Name) != k.Name || strings.IndexFunc(k.Name, unicode.IsControl) >= 0 {
				t.Fatalf("key %+v", k)
			}
			if _, ok := k.Key.(*gossh.Certificate); ok {
				t.Fatal("a certificate")
			}
			m := string(k.Key.Marshal())
			if seen[m] {
				t.Fatalf("key %s twice", k.Fingerprint())
			}
			seen[m] = true
			line := append(bytes.TrimSpace(gossh.MarshalAuthorizedKey(k.Key)), " "+k.Name...)
			pk, comment, options, _, err := gossh.ParseAuthorizedKey(line)
			if err != nil || len(options) != 0 || comment != k.Name || !bytes.Equal(pk.Marshal(), k.Key.Marshal()) {
				t.Fatalf("%q reads back as %v %q %q, %v", line, pk, comment, options, err)
			}
		}
	})
}
