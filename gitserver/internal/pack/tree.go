package pack

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/go-git/go-git/v5/plumbing"
)

// TreeError is a tree of a pushed pack that git's fsck refuses (receive.fsckObjects): an
// entry that names .git or one of its disguises, ".", "..", an empty name, a name with a
// slash, a .gitmodules that is a symbolic link, an entry twice, entries out of git's order,
// or bytes that are not a tree. It wraps ErrBad.
type TreeError struct {
	Tree    plumbing.Hash // the tree's id
	Entry   string        // the entry's name as in the tree; "" for a tree that does not parse
	Problem string        // what is wrong with it, e.g. "appears twice"
	ID      string        // git fsck's name for the problem, e.g. "hasDotgit"
}

// Error says which tree, which entry (quoted, control characters escaped) and what is wrong:
// `bad pack: tree 1a2b3c4: entry "a.txt": appears twice (duplicateEntries)`.
func (e *TreeError) Error() string {
	id := e.Tree.String()[:7]
	if e.ID == "badTree" {
		return fmt.Sprintf("%v: tree %s: %s (%s)", ErrBad, id, e.Problem, e.ID)
	}
	return fmt.Sprintf("%v: tree %s: entry %s: %s (%s)", ErrBad, id, quoteName(e.Entry), e.Problem, e.ID)
}

func (e *TreeError) Unwrap() error { return ErrBad }

// quoteName quotes a name from a tree for a one-line message: Go syntax, so that control
// characters, invisible ones and bytes that are not UTF-8 show as escapes; at most 60 bytes
// of it.
func quoteName(name string) string {
	const most = 60
	if len(name) <= most {
		return fmt.Sprintf("%q", name)
	}
	n := most
	for n > 0 && !utf8.RuneStart(name[n]) {
		n--
	}
	return fmt.Sprintf("%q...", name[:n])
}

// maxEntryName bounds the name of a tree entry, as git's fsck (largePathname) does: no
// filesystem takes longer ones, and the check holds no more than three names in memory.
const maxEntryName = 4096

// hashLen is the length of an object id in a tree entry.
const hashLen = len(plumbing.ZeroHash)

// Tree modes, as git writes them.
const (
	modeTypeMask = 0o170000
	modeDir      = 0o040000
	modeSymlink  = 0o120000
)

// treeChecker applies git's fsck rules for trees (fsck.c, fsck_tree) to a tree object as
// it is written to it, in pieces of any size, with memory bounded by maxEntryName whatever
// the tree's size. Entries are `<octal mode> SP <name> NUL <20-byte id>`. Duplicates are
// found in git's tree order, which it checks: a directory sorts as if its name ended in '/'.
// So a file "a" and a directory "a" may stand apart ("a", "a-b", "a.c", "a/"): the files
// that a later directory could still repeat are kept as a stack of prefixes of the last one.
type treeChecker struct {
	state int    // which part of an entry comes next
	mode  uint32 // of the entry being read
	modeN int    // digits of the mode read so far
	name  []byte // of the entry being read
	long  bool   // the name is longer than maxEntryName
	idN   int    // bytes of the entry's object id read so far

	prev     []byte // name of the previous entry; nil before the first
	prevMode uint32
	// files are the files that a later directory could repeat: the lengths of prefixes of
	// candidate, which is the last one pushed, in increasing order.
	files     []int
	candidate []byte

	problem *TreeError // the first problem found; later bytes are ignored
}

const (
	inMode = iota
	inName
	inID
)

// Write checks the next bytes of the tree. It never fails: a problem is kept for check.
func (c *treeChecker) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && c.problem == nil {
		switch c.state {
		case inMode:
			b := p[0]
			p = p[1:]
			switch {
			case b == ' ' && c.modeN > 0:
				c.state = inName
			case b >= '0' && b <= '7':
				c.mode = c.mode<<3 + uint32(b-'0') // wraps as git's unsigned int does
				c.modeN++
			default:
				c.fail("", "malformed mode in a tree entry", "badTree")
			}
		case inName:
			i := bytes.IndexByte(p, 0)
			part := p
			if i >= 0 {
				part = p[:i]
			}
			if room := maxEntryName + 1 - len(c.name); room > 0 {
				c.name = append(c.name, part[:min(len(part), room)]...)
			}
			if len(c.name) > maxEntryName {
				c.long = true
			}
			if i < 0 {
				p = nil
				break
			}
			p = p[i+1:]
			c.state, c.idN = inID, 0
		case inID:
			k := min(len(p), hashLen-c.idN)
			c.idN += k
			p = p[k:]
			if c.idN == hashLen {
				c.entry()
				c.state, c.mode, c.modeN, c.name, c.long = inMode, 0, 0, c.name[:0], false
			}
		}
	}
	return n, nil
}

// check returns the first problem of the tree written so far, as a whole tree whose id is
// tree; nil if git's fsck accepts it.
func (c *treeChecker) check(tree plumbing.Hash) *TreeError {
	if c.problem == nil && (c.state != inMode || c.modeN > 0) {
		c.fail("", "cannot be parsed as a tree: it ends inside an entry", "badTree")
	}
	if c.problem != nil {
		c.problem.Tree = tree
	}
	return c.problem
}

func (c *treeChecker) fail(entry, problem, id string) {
	if c.problem == nil {
		c.problem = &TreeError{Entry: entry, Problem: problem, ID: id}
	}
}

// entry checks the entry just read, c.name with c.mode, alone and against the ones before.
func (c *treeChecker) entry() {
	name, mode := c.name, c.mode
	if c.long {
		c.fail(string(name[:maxEntryName]), fmt.Sprintf("longer than %d bytes", maxEntryName), "largePathname")
		return
	}
	if why, id := entryProblem(name, mode); why != "" {
		c.fail(string(name), why, id)
		return
	}
	if c.prev != nil {
		switch order(c.prevMode, c.prev, mode, name) {
		case orderDup:
			c.fail(string(name), "appears twice", "duplicateEntries")
			return
		case orderWrong:
			c.fail(string(name), "out of git's order", "treeNotSorted")
			return
		}
	}
	isDir := mode&modeTypeMask == modeDir
	for len(c.files) > 0 {
		f := c.candidate[:c.files[len(c.files)-1]]
		if isDir && bytes.Equal(name, f) {
			c.fail(string(name), "appears twice", "duplicateEntries")
			return
		}
		if len(name) > len(f) && bytes.HasPrefix(name, f) && name[len(f)] < '/' {
			break // f may still come back as a directory
		}
		c.files = c.files[:len(c.files)-1]
	}
	if !isDir {
		c.candidate = append(c.candidate[:0], name...)
		c.files = append(c.files, len(name))
	}
	c.prev = append(c.prev[:0], name...)
	c.prevMode = mode
}

const dotGit = "is .git, or reads as .git on some filesystems"

// entryProblem says what git's fsck refuses in one entry named name with mode (empty names,
// ".", "..", slashes, .git and its disguises, a symbolic link named .gitmodules), and git's
// name for it; "" if nothing.
func entryProblem(name []byte, mode uint32) (problem, id string) {
	s := string(name)
	switch {
	case s == "":
		return "empty name", "emptyName"
	case s == ".":
		return `"." is not a file name`, "hasDot"
	case s == "..":
		return `".." is not a file name`, "hasDotdot"
	case bytes.IndexByte(name, '/') >= 0:
		return "a name with a slash", "fullPathname"
	case isHFSDotGit(s) || isNTFSDotGit(s):
		return dotGit, "hasDotgit"
	}
	gitmodules := isHFSDotGitmodules(s) || isNTFSDotGitmodules(s)
	// NTFS takes a backslash for a directory separator: each part after one is a name too.
	for rest := s; ; {
		i := strings.IndexByte(rest, '\\')
		if i < 0 {
			break
		}
		rest = rest[i+1:]
		if isNTFSDotGit(rest) {
			return dotGit, "hasDotgit"
		}
		gitmodules = gitmodules || isNTFSDotGitmodules(rest)
	}
	if gitmodules && mode&modeTypeMask == modeSymlink {
		return ".gitmodules is a symbolic link", "gitmodulesSymlink"
	}
	return "", ""
}

// Results of order.
const (
	orderOK = iota
	orderWrong
	orderDup
)

// order compares two consecutive entries of a tree the way git's fsck does (verify_ordered):
// by name, with a directory's name read as if it ended in '/'.
func order(mode1 uint32, name1 []byte, mode2 uint32, name2 []byte) int {
	n := min(len(name1), len(name2))
	switch bytes.Compare(name1[:n], name2[:n]) {
	case -1:
		return orderOK
	case 1:
		return orderWrong
	}
	if len(name1) == len(name2) {
		return orderDup
	}
	next := func(name []byte, mode uint32) byte {
		if len(name) > n {
			return name[n]
		}
		if mode&modeTypeMask == modeDir {
			return '/'
		}
		return 0
	}
	if next(name1, mode1) < next(name2, mode2) {
		return orderOK
	}
	return orderWrong
}

// isHFSDotGit and isHFSDotGitmodules are git's is_hfs_dotgit and is_hfs_dotgitmodules
// (utf8.c): the name reads as .git or .gitmodules to HFS+, which ignores some invisible code
// points and folds case.
func isHFSDotGit(name string) bool        { return isHFSDot(name, "git") }
func isHFSDotGitmodules(name string) bool { return isHFSDot(name, "gitmodules") }

func isHFSDot(name, needle string) bool {
	if nextHFSChar(&name) != '.' {
		return false
	}
	for i := 0; i < len(needle); i++ {
		c := nextHFSChar(&name)
		if c > 127 || toLower(byte(c)) != needle[i] {
			return false
		}
	}
	c := nextHFSChar(&name)
	return c == 0 || c == '/'
}

// nextHFSChar returns the next code point of *s that HFS+ does not ignore, and moves past
// it: 0 at the end, and for bytes that are not UTF-8 (as git's pick_one_utf8_char, which
// also refuses U+FFFE and U+FFFF), after which it returns 0 for good.
func nextHFSChar(s *string) rune {
	for {
		if *s == "" {
			return 0
		}
		r, size := utf8.DecodeRuneInString(*s)
		if r == utf8.RuneError && size <= 1 || r == 0xfffe || r == 0xffff {
			*s = ""
			return 0
		}
		*s = (*s)[size:]
		switch r {
		case 0x200c, 0x200d, 0x200e, 0x200f, // zero width (non-)joiner, left-to-right and right-to-left marks
			0x202a, 0x202b, 0x202c, 0x202d, 0x202e, // directional embeddings and overrides
			0x206a, 0x206b, 0x206c, 0x206d, 0x206e, 0x206f, // deprecated format characters
			0xfeff: // zero width no-break space
			continue
		}
		return r
	}
}

// isNTFSDotGit is git's is_ntfs_dotgit (path.c): the name reads as .git to NTFS, which
// drops trailing spaces and periods, knows the short name GIT~1 and takes ':' for an
// alternate data stream.
func isNTFSDotGit(name string) bool {
	var rest string
	switch {
	case len(name) >= 4 && name[0] == '.' && equalFold(name[1:4], "git"):
		rest = name[4:]
	case len(name) >= 5 && equalFold(name[:3], "git") && name[3] == '~' && name[4] == '1':
		rest = name[5:]
	default:
		return false
	}
	for i := 0; i < len(rest); i++ {
		switch rest[i] {
		case '\\', '/', ':':
			return true
		case '.', ' ':
		default:
			return false
		}
	}
	return true
}

// isNTFSDotGitmodules is git's is_ntfs_dotgitmodules (path.c, is_ntfs_dot_generic with
// "gitmodules" and its short-name prefix "gi7eba"): .gitmodules, its 8.3 short names
// GITMOD~1 to GITMOD~4, and the fall-back short names GI7EBA~N, each with trailing spaces and
// periods, or a ':' stream, after it.
func isNTFSDotGitmodules(name string) bool {
	const long, short = "gitmodules", "gi7eba"
	at := func(i int) byte { // the C string's byte i: 0 at and past the end
		if i < len(name) {
			return name[i]
		}
		return 0
	}
	onlySpacesAndPeriods := func(i int) bool {
		for ; ; i++ {
			switch at(i) {
			case 0, ':':
				return true
			case ' ', '.':
			default:
				return false
			}
		}
	}
	if len(name) >= 1+len(long) && name[0] == '.' && equalFold(name[1:1+len(long)], long) {
		return onlySpacesAndPeriods(1 + len(long))
	}
	if len(name) >= 8 && equalFold(name[:6], long[:6]) && name[6] == '~' && name[7] >= '1' && name[7] <= '4' {
		return onlySpacesAndPeriods(8)
	}
	sawTilde := false
	i := 0
	for ; i < 8; i++ {
		c := at(i)
		switch {
		case c == 0:
			return false
		case sawTilde:
			if c < '0' || c > '9' {
				return false
			}
		case c == '~':
			i++
			if c := at(i); c < '1' || c > '9' {
				return false
			}
			sawTilde = true
		case i >= 6, c&0x80 != 0, toLower(c) != short[i]:
			return false
		}
	}
	return onlySpacesAndPeriods(i)
}

func toLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// equalFold compares an ASCII needle with s, ignoring ASCII case only (strncasecmp in the C
// locale).
func equalFold(s, needle string) bool {
	if len(s) != len(needle) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if toLower(s[i]) != needle[i] {
			return false
		}
	}
	return true
}
