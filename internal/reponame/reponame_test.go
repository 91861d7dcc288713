package reponame

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
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
		err := Validate(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
