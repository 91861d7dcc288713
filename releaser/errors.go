package releaser

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"
)

// Two audiences read the releaser's errors: the operator's log gets the whole chain, server
// paths included, and the pusher gets Reason's text, which never holds a server path. The
// typed errors below are the failures a pusher can act on or should know about; their own
// Error is safe to show.

// CorruptError is a state file under .slipway/ that does not parse: a disk fault, or a hand
// edit. The readers of that file return it, wrapped, and so do Recover and the deploy steps
// that need the file, until the operator moves the file away or restores it; see the
// package doc for what each file's damage stops. Its Error names the file relative to the
// deploy root, says what is wrong and what to do, and is safe to show a pusher.
type CorruptError struct {
	File string // relative to the deploy root, e.g. ".slipway/releases.json"
	Err  error  // what is wrong with the content, e.g. a *json.SyntaxError
}

func (e *CorruptError) Error() string {
	what := "damaged"
	if e.Err != nil {
		what += " (" + safeText(e.Err.Error(), 200) + ")"
	}
	return fmt.Sprintf("%s is %s: %s", e.File, what, corruptAdvice(e.File))
}

// Unwrap returns what is wrong with the content.
func (e *CorruptError) Unwrap() error { return e.Err }

// corruptAdvice says what an operator does about the damaged file name.
func corruptAdvice(name string) string {
	switch name {
	case stateFile:
		return "move it away (slipway then keeps only the live release) or restore it from a backup"
	case journalFile:
		return "move it away (the deploy history then starts over) or restore it from a backup"
	case freezeFile:
		return "deploys stay refused until it is moved away (which unfreezes the environment) or restored"
	}
	return "move it away or restore it from a backup"
}

// The state files, relative to the deploy root, as CorruptError names them.
const (
	stateFile   = ".slipway/releases.json"
	journalFile = ".slipway/history.jsonl"
	freezeFile  = ".slipway/freeze.json"
)

// TreeError is a tree entry that Materialize refuses, found before it writes anything: a
// name git itself refuses (".git" in any case or disguise, ".", "..", a control character,
// a slash), a name longer than a directory entry can be, a tree nested too deep, a
// duplicate, a symlink target too long, a tree object that does not parse. Its Error is safe to show
// a pusher: `tree entry "a/.git": reserved name`, the path quoted with Go's escapes (control
// characters as \n, \x01) and shortened in the middle if it is long.
type TreeError struct {
	Path    string // the entry's slash-separated path in the tree, as stored: any bytes; "" for the commit's tree itself
	Problem string // what is wrong with it, e.g. "reserved name"
}

func (e *TreeError) Error() string {
	if e.Path == "" {
		return "the commit's tree: " + e.Problem
	}
	return "tree entry " + quotePath(e.Path) + ": " + e.Problem
}

// LimitError is a release refused before checkout for its size: over a limit of the
// configuration, or more than the filesystem holding releases/ has free. Its Error names
// the limit and both figures, and is safe to show a pusher, e.g. "the release is 12.3 GiB,
// over max_release_size (10 GiB)".
type LimitError struct {
	// Limit is what the release is over: "max_release_size" (Figure and Max in bytes),
	// "max_release_files" (files, directories and symlinks), "free space" (Figure: the
	// bytes the release needs, its size plus 10%; Max: what the filesystem has free) or
	// "free inodes" (likewise, in inodes).
	Limit  string
	Figure int64
	Max    int64
}

func (e *LimitError) Error() string {
	switch e.Limit {
	case limitSize:
		fig, limit := bytesPair(e.Figure, e.Max)
		return fmt.Sprintf("the release is %s, over %s (%s)", fig, e.Limit, limit)
	case limitFiles:
		return fmt.Sprintf("the release has %s files and directories, over %s (%s)", commas(e.Figure), e.Limit, commas(e.Max))
	case limitSpace:
		fig, free := bytesPair(e.Figure, e.Max)
		return fmt.Sprintf("the release needs %s of disk (its size plus 10%%), and the disk holding the releases has %s free", fig, free)
	case limitInodes:
		return fmt.Sprintf("the release needs %s inodes (its files and directories plus 10%%), and the disk holding the releases has %s free", commas(e.Figure), commas(e.Max))
	}
	return fmt.Sprintf("the release is over %s: %d > %d", e.Limit, e.Figure, e.Max)
}

// The limits of a LimitError.
const (
	limitSize   = "max_release_size"
	limitFiles  = "max_release_files"
	limitSpace  = "free space"
	limitInodes = "free inodes"
)

// LinkedFileError is a file of a new release written with LinkFiles (release_files =
// "link") that shares its inode with the live release, and that the build changed after
// checkout: its content or its mode, and so the live release's file too, since both are
// one inode. CheckLinked returns it, before the swap; nothing links that inode again. Its
// Error names the path relative to the release, quoted as TreeError quotes one, and is
// safe to show a pusher.
type LinkedFileError struct {
	Path string // slash-separated, relative to the release: the first changed file found
	More int    // how many other shared files were changed too
}

func (e *LinkedFileError) Error() string {
	s := quotePath(e.Path) + ` was changed in place by the build, and it is shared with the live release (release_files = "link"), whose file changed with it`
	switch {
	case e.More == 1:
		s += "; so was 1 other shared file"
	case e.More > 1:
		s += fmt.Sprintf("; so were %s other shared files", commas(int64(e.More)))
	}
	return s
}

// SwapError is Activate's failure to point current at the new release, from the creation
// of the temporary link to the sync of the deploy root. Unless only the sync failed, the
// release live before stays live.
type SwapError struct {
	Err error
}

func (e *SwapError) Error() string { return "swap current: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *SwapError) Unwrap() error { return e.Err }

// Reason returns the text a pusher may be told about err, and true, if err (or an error it
// wraps) is one the releaser knows to be safe to show and worth showing: a *CorruptError,
// *TreeError, *LimitError, *MissingSharedError, *LockedError, *LinkedFileError, *SwapError,
// ErrDestroyed, or a full disk or quota (ENOSPC, EDQUOT) anywhere, the deploy lock included.
// Otherwise it returns "", false: err may hold server paths, and only the operator's log
// gets it.
func Reason(err error) (string, bool) {
	var (
		ce *CorruptError
		te *TreeError
		le *LimitError
		me *MissingSharedError
		lk *LockedError
		se *SwapError
		lf *LinkedFileError
	)
	switch {
	case err == nil:
		return "", false
	case errors.As(err, &ce):
		return ce.Error(), true
	case errors.As(err, &te):
		return te.Error(), true
	case errors.As(err, &le):
		return le.Error(), true
	case errors.As(err, &me):
		return "shared file " + quotePath("shared/"+me.Name) + " does not exist: create it on the server", true
	case errors.As(err, &lk):
		return lk.Error(), true
	case errors.As(err, &lf):
		return lf.Error(), true
	case errors.Is(err, ErrDestroyed):
		return ErrDestroyed.Error(), true
	}
	var errno syscall.Errno
	hasErrno := errors.As(err, &errno)
	switch {
	case errors.As(err, &se) && hasErrno:
		return "cannot swap current: " + errno.Error() + " on the server", true
	case errors.Is(err, syscall.ENOSPC):
		return "the server's disk is full (no space left on device)", true
	case errors.Is(err, syscall.EDQUOT):
		return "the server's disk quota is exceeded", true
	}
	return "", false
}

// maxShown is how many bytes of a name a message shows; a longer one is cut in the middle.
const maxShown = 120

// quotePath quotes p for a message: Go's escapes for control characters and invalid UTF-8,
// and the middle cut out if p is longer than maxShown bytes ("a/b…/z", with its length).
func quotePath(p string) string {
	if len(p) <= maxShown {
		return strconv.Quote(p)
	}
	head, tail := p[:maxShown/2], p[len(p)-maxShown/2:]
	for len(head) > 0 && !utf8.RuneStart(p[len(head)]) {
		head = head[:len(head)-1]
	}
	for len(tail) > 0 && !utf8.RuneStart(tail[0]) {
		tail = tail[1:]
	}
	return strconv.Quote(head+"…"+tail) + fmt.Sprintf(" (%d bytes)", len(p))
}

// safeText is s with control characters, other unprintable ones and invalid UTF-8 escaped
// as Go does (\x00, \u200b), cut to about n bytes: for a parser's message, which may quote
// bytes of the damaged file.
func safeText(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unicode.IsPrint(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
		i += size
		if i < len(s) && b.Len() >= n {
			b.WriteString("…")
		}
	}
	return b.String()
}

// commas writes n in decimal with thousands separators: 1,200,000.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// bytesPair formats a figure and the limit it is compared with in binary units ("12.3 GiB",
// "10 GiB"); if the two would read the same, in exact bytes instead.
func bytesPair(fig, limit int64) (string, string) {
	f, l := iec(fig), iec(limit)
	if strings.Replace(f, ".0 ", " ", 1) == strings.Replace(l, ".0 ", " ", 1) {
		return commas(fig) + " bytes", commas(limit) + " bytes"
	}
	return f, l
}

// iec formats n bytes in binary units: "512 bytes", "10 GiB" when exact, else one
// decimal, "12.3 GiB".
func iec(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(1024), 0
	for n/div >= 1024 && exp < len(units)-1 {
		div *= 1024
		exp++
	}
	if n%div == 0 {
		return fmt.Sprintf("%d %ciB", n/div, units[exp])
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), units[exp])
}
