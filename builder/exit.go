package builder

import (
	"fmt"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ExitError is what Run returns when the command did not succeed.
type ExitError struct {
	Name     string // Command.Name
	Code     int    // exit status; -1 if killed by a signal
	Signal   string // e.g. "killed" / "terminated", when ended by a signal
	TimedOut bool   // ended because Command.Timeout expired (Timeout is set)
	Timeout  time.Duration
	Canceled bool   // ended because ctx was cancelled (e.g. the pusher disconnected)
	Limit    string // the cgroup limit it reached, if one: "memory_max reached", "pids_max reached"
	Err      error  // underlying cause (ctx.Err() when Canceled); Unwrap returns it
}

// Error is short and safe to show the pusher: "build 1/2: exit status 2",
// "test 1/1: timed out after 30s", "build 1/1: cancelled", "build 1/1: killed by signal KILL".
// An exit status that sh sets when it could not run the command is explained after it:
// "build 1/2: exit status 127 (command not found)", "build 1/2: exit status 126 (not
// executable)"; "exit status N" always comes first, for scripts that look for it.
func (e *ExitError) Error() string {
	switch {
	case e.TimedOut:
		return fmt.Sprintf("%s: timed out after %s", e.Name, e.Timeout)
	case e.Canceled:
		return e.Name + ": cancelled"
	case e.Signal != "":
		return fmt.Sprintf("%s: killed by signal %s%s", e.Name, signalName(e.Signal), limitNote(e.Limit))
	}
	msg := fmt.Sprintf("%s: exit status %d", e.Name, e.Code)
	if meaning := shellStatus(e.Code); meaning != "" {
		msg += " (" + meaning + ")"
	}
	return msg + limitNote(e.Limit)
}

func limitNote(limit string) string {
	if limit == "" {
		return ""
	}
	return " (" + limit + ")"
}

// shellStatus is what sh means by an exit status it sets itself when it could not run the
// command at all (POSIX, "Command Search and Execution"); "" for any other status.
func shellStatus(code int) string {
	switch code {
	case 126:
		return "not executable"
	case 127:
		return "command not found"
	}
	return ""
}

// Unwrap returns the underlying cause.
func (e *ExitError) Unwrap() error { return e.Err }

// signalName turns a signal's description ("killed") into its short name ("KILL").
func signalName(desc string) string {
	for s := syscall.Signal(1); s < 65; s++ {
		if s.String() == desc {
			if name := unix.SignalName(s); name != "" {
				return strings.TrimPrefix(name, "SIG")
			}
		}
	}
	return desc
}

// SetupError is what Run returns when the command's box could not be made: a writable path
// that does not exist, limits the kernel refused, a Landlock ruleset it refused. The
// command did not run.
type SetupError struct {
	Name string // Command.Name
	Path string // the path concerned, if any
	Err  error
}

func (e *SetupError) Error() string {
	return fmt.Sprintf("%s: could not be set up: %v", e.Name, e.Err)
}

// Unwrap returns the underlying cause.
func (e *SetupError) Unwrap() error { return e.Err }
