// Package reponame checks environment names, "APP/ENV": the name a git remote uses
// (ssh://git@HOST/APP/ENV), the `repo` key of the configuration, and a relative path on
// disk. The configuration and the git server check names with this one rule.
//
// Invariant: a name Validate accepts is two path elements, each starting with a letter or
// digit and holding only letters, digits, '.', '_' and '-', neither ending in ".git", at
// most MaxLen bytes in all, so it is safe to join to a directory.
package reponame

import (
	"fmt"
	"strings"
)

// MaxLen bounds an environment name, so that a name is also a sane path.
const MaxLen = 100

// Validate returns an error saying what is wrong with name, or nil.
func Validate(name string) error {
	if problem := Problem(name); problem != "" {
		return fmt.Errorf("invalid repo name %.120q: %s", name, problem)
	}
	return nil
}

// Problem says what is wrong with name, or "" if nothing is.
func Problem(name string) string {
	if len(name) > MaxLen {
		return fmt.Sprintf("longer than %d bytes", MaxLen)
	}
	app, env, ok := strings.Cut(name, "/")
	if !ok || app == "" || env == "" || strings.Contains(env, "/") {
		return "must be APP/ENV"
	}
	for _, p := range []string{app, env} {
		if !isAlnum(p[0]) {
			return fmt.Sprintf("%.40q must start with a letter or digit", p)
		}
		for i := 1; i < len(p); i++ {
			if c := p[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
				return fmt.Sprintf("%.40q may hold only letters, digits, '.', '_' and '-'", p)
			}
		}
		if strings.HasSuffix(p, ".git") {
			return fmt.Sprintf("%q must not end in .git", p)
		}
	}
	return ""
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
