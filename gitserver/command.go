package gitserver

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/slipway/slipway/internal/reponame"
)

// maxCommandLen bounds the SSH exec command: git's `git-receive-pack '/APP/ENV.git'`
// and an operator command with its arguments fit in far less.
const maxCommandLen = 4096

// Services a client may ask for in its exec request.
const (
	serviceReceivePack = "git-receive-pack"
	serviceUploadPack  = "git-upload-pack"
)

// unknownCommandError is a command that is not git's: an operator command if the server
// has a Commander, refused otherwise.
type unknownCommandError struct{ name string }

func (e *unknownCommandError) Error() string {
	return fmt.Sprintf("unknown command %q: only git-receive-pack and git-upload-pack are served", clip(e.name, 40))
}

// checkCommandLine refuses what no exec request may be: empty (a shell), longer than
// maxCommandLen, or holding control characters or invalid UTF-8. The error is meant for
// the client.
func checkCommandLine(raw string) error {
	if raw == "" {
		return errors.New("no shell here: this server serves git push and fetch (ssh://git@HOST:PORT/APP/ENV)")
	}
	if len(raw) > maxCommandLen {
		return fmt.Errorf("command is longer than %d bytes", maxCommandLen)
	}
	if !utf8.ValidString(raw) {
		return errors.New("command is not valid UTF-8")
	}
	for _, r := range raw {
		if isControl(r) {
			return errors.New("command holds control characters")
		}
	}
	return nil
}

func isControl(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0)
}

// parseCommand splits an SSH exec command of the form `git-receive-pack '<path>'` (or
// `git receive-pack '<path>'`, or upload-pack) into the service and the raw path argument.
// A command that is not one of these four is an *unknownCommandError; anything else wrong
// is an error whose text is meant for the client. No shell is involved: the path is one
// argument, single-quoted or free of quotes, backslashes and white space (Unicode's, which
// go-shlex splits on: gliderlabs' Session.Command must read the same words).
func parseCommand(raw string) (service, path string, err error) {
	if err := checkCommandLine(raw); err != nil {
		return "", "", err
	}
	name, rest, _ := strings.Cut(raw, " ")
	if name == "git" {
		var sub string
		sub, rest, _ = strings.Cut(rest, " ")
		name = "git-" + sub
	}
	switch name {
	case serviceReceivePack, serviceUploadPack:
	default:
		return "", "", &unknownCommandError{name: name}
	}
	if rest == "" {
		return "", "", fmt.Errorf("%s: missing repository argument", name)
	}
	arg := rest
	if arg[0] == '\'' {
		if len(arg) < 2 || arg[len(arg)-1] != '\'' || strings.Contains(arg[1:len(arg)-1], "'") {
			return "", "", fmt.Errorf("%s: expected exactly one argument, the repository", name)
		}
		arg = arg[1 : len(arg)-1]
	} else if strings.ContainsAny(arg, "'\"\\") || strings.ContainsFunc(arg, unicode.IsSpace) {
		return "", "", fmt.Errorf("%s: expected exactly one argument, the repository", name)
	}
	return name, arg, nil
}

// shellWordsProblem says why raw cannot be split into words the POSIX way (an unclosed
// quote, a trailing backslash), or "" if it can. gliderlabs' Session.Command splits with
// anmitsu/go-shlex and drops its error, which would silently close the quote or drop the
// backslash; this mirrors that lexer's error cases.
func shellWordsProblem(raw string) string {
	const (
		plain = iota
		single
		double
	)
	state, escaped := plain, false
	for _, r := range raw {
		switch {
		case escaped:
			escaped = false
		case state == single:
			if r == '\'' {
				state = plain
			}
		case r == '\\':
			escaped = true
		case state == double:
			if r == '"' {
				state = plain
			}
		case r == '\'':
			state = single
		case r == '"':
			state = double
		}
	}
	switch {
	case escaped:
		return "command ends with a backslash"
	case state != plain:
		return "command has an unclosed quote"
	}
	return ""
}

// repoFromPath turns the path argument of a git command into an environment name:
// "/APP/ENV.git", "APP/ENV.git", "/APP/ENV" and "APP/ENV" all name APP/ENV.
func repoFromPath(path string) (string, error) {
	name := strings.TrimPrefix(path, "/")
	name = strings.TrimSuffix(name, ".git")
	if problem := reponame.Problem(name); problem != "" {
		return "", fmt.Errorf("invalid repository %q: %s", clip(path, 120), problem)
	}
	return name, nil
}

// clip shortens s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// oneLine makes text from outside (a deployer's error, a wire error) safe for a single
// protocol line: the first line only, control characters dropped, invalid UTF-8 replaced,
// at most n bytes.
func oneLine(s string, n int) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "?") {
		if isControl(r) {
			continue
		}
		b.WriteRune(r)
	}
	return strings.TrimSpace(clip(b.String(), n))
}
