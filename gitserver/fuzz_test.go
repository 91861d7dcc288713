package gitserver

// Fuzz targets for every parser of what a client sends: the update request and its
// pkt-lines, push options, the wait= option, the SSH command line, ref names and the
// sanitizer of text shown to clients. Their seed corpora are in testdata/fuzz; CI runs each
// for a few seconds (FUZZ_TARGETS.txt).

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	shlex "github.com/anmitsu/go-shlex"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"

	"github.com/slipway/slipway/internal/reponame"
)

// FuzzDecodeUpdateRequest: what decodeUpdateRequest accepts is well-formed commands that
// encode back to the same request, and that go-git's own decoder, where it accepts the
// input too (and the ref names are UTF-8), reads the same way.
func FuzzDecodeUpdateRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := &limitedReader{r: bytes.NewReader(data), n: maxRequestBytes, err: errRequestTooLarge}
		req, err := decodeUpdateRequest(lim)
		if err != nil {
			return
		}
		if len(req.Commands) == 0 {
			t.Fatal("accepted a request without commands")
		}
		for _, c := range req.Commands {
			if c.Name == "" || strings.ContainsFunc(string(c.Name), func(r rune) bool { return r <= ' ' || r == 0x7f }) {
				t.Fatalf("accepted ref name %q", c.Name)
			}
			if c.Old.IsZero() && c.New.IsZero() {
				t.Fatal("accepted a command with two zero values")
			}
		}
		// Encoded again, as git sends it, it decodes to the same.
		var buf bytes.Buffer
		e := pktline.NewEncoder(&buf)
		for i, c := range req.Commands {
			line := fmt.Sprintf("%s %s %s", c.Old, c.New, c.Name)
			if i == 0 {
				line += "\x00" + req.Capabilities.String()
			}
			if err := e.EncodeString(line); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Flush(); err != nil {
			t.Fatal(err)
		}
		again, err := decodeUpdateRequest(&buf)
		if err != nil {
			t.Fatalf("re-encoded request refused: %v", err)
		}
		if commands(again) != commands(req) || again.Capabilities.String() != req.Capabilities.String() {
			t.Fatalf("round trip: %s %q, want %s %q", commands(again), again.Capabilities, commands(req), req.Capabilities)
		}
		// go-git's Sscanf turns bytes that are not UTF-8 into U+FFFD; git and we keep them.
		if !utf8.ValidString(commands(req)) {
			return
		}
		theirs := packp.NewReferenceUpdateRequest()
		if theirs.Decode(bytes.NewReader(data)) == nil && commands(theirs) != commands(req) {
			t.Fatalf("go-git reads %s, we read %s", commands(theirs), commands(req))
		}
	})
}

func commands(req *packp.ReferenceUpdateRequest) string {
	var b strings.Builder
	for _, c := range req.Commands {
		fmt.Fprintf(&b, "%s %s %s;", c.Old, c.New, c.Name)
	}
	return b.String()
}

// FuzzReadPushOptions: accepted options are at most maxPushOptions, hold no newline or
// NUL, and read back the same once encoded again.
func FuzzReadPushOptions(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		opts, err := readPushOptions(&limitedReader{r: bytes.NewReader(data), n: maxRequestBytes, err: errRequestTooLarge})
		if err != nil {
			return
		}
		if len(opts) > maxPushOptions {
			t.Fatalf("%d options", len(opts))
		}
		var buf bytes.Buffer
		e := pktline.NewEncoder(&buf)
		for _, o := range opts {
			if strings.ContainsAny(o, "\n\x00") {
				t.Fatalf("option %q holds a newline or a NUL", o)
			}
			if err := e.EncodeString(o); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Flush(); err != nil {
			t.Fatal(err)
		}
		again, err := readPushOptions(&buf)
		if err != nil || !slices.Equal(again, opts) {
			t.Fatalf("round trip: %q, %v; want %q", again, err, opts)
		}
	})
}

// FuzzWaitOption: the wait is the last wait= option's duration, within [0, maxWait]; no
// wait option means no wait and no error.
func FuzzWaitOption(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		opts := strings.Split(s, "\n")
		wait, err := waitOption(opts)
		if err != nil {
			return
		}
		if wait < 0 || wait > maxWait {
			t.Fatalf("wait %v", wait)
		}
		last := ""
		for _, o := range opts {
			if v, ok := strings.CutPrefix(o, "wait="); ok {
				last = v
			}
		}
		if last == "" {
			if wait != 0 {
				t.Fatalf("wait %v without a wait= option", wait)
			}
			return
		}
		d, perr := time.ParseDuration(last)
		if perr != nil || wait != min(d, maxWait) {
			t.Fatalf("wait %v for wait=%s (%v, %v)", wait, last, d, perr)
		}
	})
}

// repoPattern is what an environment name is, independently of reponame's code.
var repoPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// FuzzParseCommand: a command parseCommand accepts splits, the way gliderlabs' Session.Command
// splits it (go-shlex, POSIX), into the same words; the repository it names is a valid
// environment name and a local path.
func FuzzParseCommand(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw string) {
		service, path, err := parseCommand(raw)
		if err != nil {
			return
		}
		if service != serviceReceivePack && service != serviceUploadPack {
			t.Fatalf("service %q", service)
		}
		words, err := shlex.Split(raw, true)
		if err != nil {
			t.Fatalf("accepted %q, which the shell lexer refuses: %v", raw, err)
		}
		want := []string{service, path}
		if strings.HasPrefix(raw, "git ") {
			want = []string{"git", strings.TrimPrefix(service, "git-"), path}
		}
		if path == "" { // '': go-shlex drops an empty word (a shell keeps it); refused below
			want = want[:len(want)-1]
		}
		if !slices.Equal(words, want) {
			t.Fatalf("%q: parsed %q, the shell lexer says %q", raw, want, words)
		}
		repo, err := repoFromPath(path)
		if err != nil {
			return
		}
		if reponame.Problem(repo) != "" || !repoPattern.MatchString(repo) || len(repo) > reponame.MaxLen ||
			!filepath.IsLocal(repo) || filepath.Clean(repo) != repo {
			t.Fatalf("repoFromPath(%q) = %q", path, repo)
		}
		if !slices.Contains([]string{repo, "/" + repo, repo + ".git", "/" + repo + ".git"}, path) {
			t.Fatalf("repoFromPath(%q) = %q, not the same name", path, repo)
		}
	})
}

// FuzzShellWordsProblem: shellWordsProblem refuses exactly what go-shlex, which splits an
// operator command for gliderlabs, cannot split.
func FuzzShellWordsProblem(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw string) {
		// go-shlex takes time quadratic in a word's length (8s for 256 KiB of letters): the
		// server lexes a command only once checkCommandLine has bounded it.
		if checkCommandLine(raw) != nil {
			return
		}
		_, err := shlex.Split(raw, true)
		if problem := shellWordsProblem(raw); (problem == "") != (err == nil) {
			t.Fatalf("%q: shellWordsProblem %q, go-shlex %v", raw, problem, err)
		}
	})
}

// FuzzValidateRef: a ref name validateRef accepts is one git's check-ref-format accepts
// (checked by gitRefOK, written from git's rules), and its short name is no option.
func FuzzValidateRef(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		ref := plumbing.ReferenceName(name)
		if validateRef(ref) != nil {
			return
		}
		if name != "HEAD" && !gitRefOK(name) {
			t.Fatalf("accepted %q, which git refuses", name)
		}
		if strings.HasPrefix(ref.Short(), "-") {
			t.Fatalf("accepted %q, whose short name %q reads as an option", name, ref.Short())
		}
	})
}

// gitRefOK is git's check_refname_format (refs.c) without --allow-onelevel or refspec
// patterns: at least two components, none empty, none starting with '.' or ending with
// ".lock", no "..", "@{", control character, space or any of ~^:?*[\, not "@", not ending
// with '.'.
func gitRefOK(name string) bool {
	if name == "@" || strings.HasSuffix(name, ".") || strings.Contains(name, "..") || strings.Contains(name, "@{") {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f || strings.IndexByte(" ~^:?*[\\", c) >= 0 {
			return false
		}
	}
	parts := strings.Split(name, "/")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || p[0] == '.' || strings.HasSuffix(p, ".lock") {
			return false
		}
	}
	return true
}

// FuzzOneLine: what oneLine makes of any text is one line of valid UTF-8, without control
// characters, within its bound.
func FuzzOneLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string, n uint8) {
		out := oneLine(s, int(n))
		if len(out) > int(n) || !utf8.ValidString(out) || strings.TrimSpace(out) != out {
			t.Fatalf("oneLine(%q, %d) = %q", s, n, out)
		}
		for _, r := range out {
			if isControl(r) {
				t.Fatalf("oneLine(%q, %d) = %q holds a control character", s, n, out)
			}
		}
	})
}
