package reponame

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// namePattern is an environment name, written independently of Problem.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// FuzzProblem: Problem accepts exactly the names of namePattern of at most MaxLen bytes
// whose parts do not end in ".git", and each is a clean local path. Its seed corpus is in
// testdata/fuzz; CI runs it for a few seconds (gitserver/FUZZ_TARGETS.txt).
func FuzzProblem(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		app, env, _ := strings.Cut(name, "/")
		want := namePattern.MatchString(name) && len(name) <= MaxLen &&
			!strings.HasSuffix(app, ".git") && !strings.HasSuffix(env, ".git")
		problem := Problem(name)
		if (problem == "") != want {
			t.Fatalf("Problem(%q) = %q; the pattern says valid: %v", name, problem, want)
		}
		if (Validate(name) == nil) != want {
			t.Fatalf("Validate(%q) = %v", name, Validate(name))
		}
		if want && (!filepath.IsLocal(name) || filepath.Clean(name) != name) {
			t.Fatalf("%q is valid but not a clean local path", name)
		}
	})
}
