// Package authkeys reads OpenSSH authorized_keys files, the one way slipway learns who may
// connect: each key's comment is its user's name. The configuration checks the file with
// it (every problem as file:line) and the git server authenticates against what it returns.
package authkeys

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode"

	gossh "golang.org/x/crypto/ssh"
)

// Key is one authorized public key.
type Key struct {
	Name string // the user's name: the key's comment in authorized_keys
	Key  gossh.PublicKey
}

// Fingerprint is the key's SHA256 fingerprint, "SHA256:...", as ssh-keygen -l shows it.
func (k Key) Fingerprint() string { return gossh.FingerprintSHA256(k.Key) }

// Parse reads an OpenSSH authorized_keys file: every key, with its comment as the
// pusher's Name. Several keys may share a name (one person, several machines). It reports
// every problem at once, each as "<file>:<line>: <problem>", joined with errors.Join:
// a line that is not a key, a key without a comment, a key listed twice, a certificate, and
// options before the key type (command=, restrict, ...), which slipway would not honour.
// Blank lines and lines starting with '#' are skipped. With problems, it still returns the
// keys that parsed, for callers that may go on without the bad lines.
func Parse(path string) ([]Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read authorized keys: %w", err)
	}
	var (
		keys  []Key
		errs  []error
		first = map[string]int{} // marshalled key -> line it was first seen on
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s:%d: %s", path, n, fmt.Sprintf(format, args...)))
		}
		pk, comment, options, _, err := gossh.ParseAuthorizedKey([]byte(line))
		switch {
		case err != nil:
			// The parser's message may quote the key's bytes, newlines included: escaped,
			// it stays one line of the problem list.
			msg := strconv.Quote(err.Error())
			fail("not a public key: %s", msg[1:len(msg)-1])
			continue
		case len(options) > 0:
			fail("key options are not supported (%.60s): slipway would ignore them; remove them", strings.Join(options, ","))
			continue
		}
		if _, ok := pk.(*gossh.Certificate); ok {
			fail("certificates are not supported; list the plain public key")
			continue
		}
		name := strings.TrimSpace(comment)
		if name == "" {
			fail("key has no comment: the comment is the pusher's name (add one after the key)")
			continue
		}
		if strings.IndexFunc(name, unicode.IsControl) >= 0 {
			fail("key comment %.60q holds control characters", name)
			continue
		}
		m := string(pk.Marshal())
		if prev, ok := first[m]; ok {
			fail("duplicate key (also on line %d)", prev)
			continue
		}
		first[m] = n
		keys = append(keys, Key{Name: name, Key: pk})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", path, err))
	}
	return keys, errors.Join(errs...)
}
