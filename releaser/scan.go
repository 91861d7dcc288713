package releaser

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"golang.org/x/sys/unix"
)

// Before Materialize writes anything, it scans the commit's tree: every name is checked,
// and the release's size (files, directories and bytes) is summed from the tree objects and
// the blobs' headers, never their content, so that a tree over a limit, or bigger than the
// disk can take, is refused before checkout. A zip bomb (a blob of gigabytes of zeros in a
// pack of kilobytes) costs its header; a tree bomb (trees that hold the same subtree many
// times over) costs each distinct tree once, since each tree's sum is kept by its id.

// maxTreeDepth is how many directories deep a release may nest: deeper trees serve no app,
// and each level holds a directory open while the release is written. go-git's tree walker
// stops at 1024.
const maxTreeDepth = 1000

// maxName is the longest entry name Linux takes (NAME_MAX), in bytes.
const maxName = 255

// size is what a tree holds, all the way down.
type size struct {
	entries int64 // files, symlinks and directories (those of submodules included)
	bytes   int64 // content of the regular files and executables
}

func (s size) add(o size) size {
	return size{entries: addSat(s.entries, o.entries), bytes: addSat(s.bytes, o.bytes)}
}

// addSat adds two non-negative figures, stopping at the largest int64: a tree bomb's
// figures can overflow.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// treeSum is a tree's size and height: how many directories deep it nests below itself.
type treeSum struct {
	size
	height int
}

// scan is the check and sum of one release's tree.
type scan struct {
	ctx  context.Context
	objs storer.EncodedObjectStorer
	// base is the live release if the new one will hard-link its unchanged files from it
	// (LinkFiles): those take neither space nor inodes. nil: every file is written.
	base  *base
	trees map[plumbing.Hash]treeSum // the sums of the trees seen
	// linked is what the base provides: its files of the same path, blob and mode.
	linked size
}

// scanTree checks and sums the tree of a release. linkFrom, if not nil, is the base the
// release will hard-link its unchanged files from.
func scanTree(ctx context.Context, objs storer.EncodedObjectStorer, tree plumbing.Hash, linkFrom *base) (total, linked size, err error) {
	s := &scan{ctx: ctx, objs: objs, base: linkFrom, trees: map[plumbing.Hash]treeSum{}}
	sum, err := s.tree("", tree, 0)
	if err != nil {
		return size{}, size{}, err
	}
	return sum.size, s.linked, nil
}

// tree checks and sums the tree h at path, depth directories below the release's top.
func (s *scan) tree(path string, h plumbing.Hash, depth int) (treeSum, error) {
	if sum, ok := s.trees[h]; ok {
		if depth+sum.height > maxTreeDepth {
			return treeSum{}, tooDeep(path)
		}
		return sum, nil
	}
	if err := s.ctx.Err(); err != nil {
		return treeSum{}, err
	}
	t, err := object.GetTree(s.objs, h)
	if errors.Is(err, object.ErrMalformedTree) {
		return treeSum{}, &TreeError{Path: path, Problem: err.Error()}
	}
	if err != nil {
		return treeSum{}, fmt.Errorf("tree %s: %w", displayPath(path), err)
	}
	var sum treeSum
	names := make(map[string]bool, len(t.Entries))
	for _, e := range t.Entries {
		p := e.Name
		if path != "" {
			p = path + "/" + e.Name
		}
		if problem := nameProblem(e.Name); problem != "" {
			return treeSum{}, &TreeError{Path: p, Problem: problem}
		}
		if names[e.Name] {
			return treeSum{}, &TreeError{Path: p, Problem: "duplicate entry"}
		}
		names[e.Name] = true
		sum.entries = addSat(sum.entries, 1)
		switch e.Mode {
		case filemode.Dir:
			if depth+1 > maxTreeDepth {
				return treeSum{}, tooDeep(p)
			}
			sub, err := s.tree(p, e.Hash, depth+1)
			if err != nil {
				return treeSum{}, err
			}
			sum.size = sum.add(sub.size)
			sum.height = max(sum.height, sub.height+1)
		case filemode.Submodule: // an empty directory
		case filemode.Regular, filemode.Executable:
			n, err := s.objs.EncodedObjectSize(e.Hash)
			if err != nil {
				return treeSum{}, fmt.Errorf("%s: blob %s: %w", displayPath(p), e.Hash, err)
			}
			sum.bytes = addSat(sum.bytes, n)
			if s.base.has(p, e) {
				s.linked = s.linked.add(size{entries: 1, bytes: n})
			}
		case filemode.Symlink:
			n, err := s.objs.EncodedObjectSize(e.Hash)
			if err != nil {
				return treeSum{}, fmt.Errorf("%s: blob %s: %w", displayPath(p), e.Hash, err)
			}
			if n > maxSymlinkTarget {
				return treeSum{}, &TreeError{Path: p, Problem: fmt.Sprintf("symlink target longer than %d bytes", maxSymlinkTarget)}
			}
		default:
			return treeSum{}, &TreeError{Path: p, Problem: fmt.Sprintf("unsupported file mode %o", uint32(e.Mode))}
		}
	}
	s.trees[h] = sum
	return sum, nil
}

func tooDeep(path string) error {
	return &TreeError{Path: path, Problem: fmt.Sprintf("more than %d directories deep", maxTreeDepth)}
}

// displayPath is path for an error message of the operator's: quoted, shortened.
func displayPath(path string) string {
	if path == "" {
		return "(top)"
	}
	return quotePath(path)
}

// nameProblem says what is wrong with a tree entry's name, or "" if nothing is. It refuses
// what git's own checks refuse (verify_path, with the NTFS and HFS+ protections on, as
// go-git's tree walker has them): ".", "..", ".git" and the names that mean ".git" to
// some filesystem, in any part of a name split at backslashes; control characters; and,
// for a POSIX file name, a slash, an empty name, and more than 255 bytes.
func nameProblem(name string) string {
	switch {
	case name == "":
		return "empty name"
	case strings.ContainsRune(name, '/'):
		return "slash in the name"
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "control character in the name"
	case len(name) > maxName:
		return fmt.Sprintf("name longer than %d bytes", maxName)
	}
	for part := range strings.SplitSeq(name, `\`) {
		if part == "." || part == ".." || isDotGit(part) {
			return "reserved name"
		}
	}
	return ""
}

// isDotGit reports whether a name is ".git" in any case, or a name some filesystem takes
// for it: git's 8.3 short name "git~1", ".git" with trailing dots, spaces or an NTFS
// stream (".git.", ".git::$INDEX_ALLOCATION"), or with code points HFS+ ignores inside.
func isDotGit(name string) bool {
	ntfs := name
	if i := strings.IndexByte(ntfs, ':'); i >= 0 {
		ntfs = ntfs[:i]
	}
	ntfs = strings.ToLower(strings.TrimRight(ntfs, ". "))
	if ntfs == ".git" || ntfs == "git~1" {
		return true
	}
	hfs := strings.Map(func(r rune) rune {
		if hfsIgnored(r) {
			return -1
		}
		return r
	}, name)
	return strings.EqualFold(hfs, ".git") && isASCII(hfs)
}

func isASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r > unicode.MaxASCII })
}

// hfsIgnored reports whether HFS+ ignores r in names (git's utf8.c, next_hfs_char).
func hfsIgnored(r rune) bool {
	switch r {
	case 0x200c, 0x200d, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e,
		0x206a, 0x206b, 0x206c, 0x206d, 0x206e, 0x206f, 0xfeff:
		return true
	}
	return false
}

// checkLimits refuses a release of size total over the limits of the configuration.
func (r *Releaser) checkLimits(total size) error {
	if r.maxFiles > 0 && total.entries > r.maxFiles {
		return &LimitError{Limit: limitFiles, Figure: total.entries, Max: r.maxFiles}
	}
	if r.maxSize > 0 && total.bytes > r.maxSize {
		return &LimitError{Limit: limitSize, Figure: total.bytes, Max: r.maxSize}
	}
	return nil
}

// checkSpace refuses a release that needs, with a margin of 10%, more space or inodes than
// the filesystem of releases/ has free for an unprivileged user. A filesystem that reports
// no inode count (btrfs) has no inode limit.
func (r *Releaser) checkSpace(need size) error {
	var st unix.Statfs_t
	if err := r.statfs(r.releasesDir(), &st); err != nil {
		return fmt.Errorf("free space of %s: %w", r.releasesDir(), err)
	}
	block := st.Frsize
	if block <= 0 {
		block = st.Bsize
	}
	free := int64(math.MaxInt64)
	if block > 0 && st.Bavail < uint64(math.MaxInt64/block) {
		free = int64(st.Bavail) * block
	}
	bytes := addSat(need.bytes, need.bytes/10)
	if bytes > free {
		return &LimitError{Limit: limitSpace, Figure: bytes, Max: free}
	}
	inodes := addSat(need.entries, need.entries/10)
	if st.Files > 0 && st.Ffree < math.MaxInt64 && inodes > int64(st.Ffree) {
		return &LimitError{Limit: limitInodes, Figure: inodes, Max: int64(st.Ffree)}
	}
	return nil
}
