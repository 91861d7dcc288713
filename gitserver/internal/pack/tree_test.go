package pack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
)

// treeEntry is one entry of a hand-made tree.
type treeEntry struct {
	mode string
	name string
}

// rawTree encodes entries as a tree object's content, in the order given, every entry
// pointing at id.
func rawTree(id plumbing.Hash, entries ...treeEntry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		b.WriteString(e.mode + " " + e.name + "\x00")
		b.Write(id[:])
	}
	return b.Bytes()
}

// checkTree runs the checker over content written in pieces of size chunk (0: at once).
func checkTree(content []byte, chunk int) *TreeError {
	var c treeChecker
	if chunk <= 0 {
		chunk = len(content) + 1
	}
	for p := content; len(p) > 0; {
		n := min(chunk, len(p))
		_, _ = c.Write(p[:n]) // it never fails
		p = p[n:]
	}
	return c.check(plumbing.ComputeHash(plumbing.TreeObject, content))
}

// Names of git's own tests of is_hfs_dotgit, is_ntfs_dotgit and is_ntfs_dotgitmodules
// (t0060-path-utils.sh), with others that must pass.
var dotNames = []string{
	".git", ".GIT", ".Git", ".gIT", "git~1", "GIT~1", ".git.", ".git ", ".git. .", ".git::$INDEX_ALLOCATION",
	".git:stream", `.git\foo`, `x\.git`, `x\git~1`, ".g\u200cit", ".GIT\u200c", "\u200c.git", ".git\ufeff",
	".git\u206f", ".gi\u200dt", ".git\xff", ".git\xef\xbf\xbf", ".g\xffit",
	".gitmodules", ".git\u200cmodules", ".Gitmodules", ".gitmoduleS", ".gitmodules ", ".gitmodules.",
	".gitmodules  ", ".gitmodules. ", ".gitmodules .", ".gitmodules..", ".Gitmodules . ", ".gitmodules:x",
	"GITMOD~1", "gitmod~1", "GITMOD~2", "gitmod~3", "GITMOD~4", "GITMOD~1 ", "gitmod~2.", "gitmod~4 . ",
	"GI7EBA~1", "gi7eba~9", "GI7EB~10", "GI7EB~11", "GI7EB~99", "GI7E~100", "GI7E~101", "GI7E~999",
	"~1000000", "~9999999", `x\.gitmodules`, `x\GITMOD~1`,
	// Not .git, not .gitmodules.
	"git", ".gitx", ".git x", ".git.x", "x.git", "git~2", "git~10", ".gi", "a", ".gitignore", ".github",
	".\u0147it", ".gitmodules x", ".gitmodules .x", " .gitmodules", "..gitmodules", "gitmodules",
	".gitmodule", "GI7EBA~", "GI7EBA~0", "GI7EBA~~1", "GI7EBA~X", "Gx7EBA~1", "GI7EBX~1", "GI7EB~1",
	"GI7EB~01", "GI7EB~1X", "GITMOD~5", "gitmod~0", ".git\u200bx",
}

// TestTreeRulesMatchGitFsck: for every name above, as a file, a symbolic link and a
// directory, the checker finds hasDotgit and gitmodulesSymlink exactly where git's own fsck
// does.
func TestTreeRulesMatchGitFsck(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	blob := strings.TrimSpace(string(gitIn(t, dir, "", "hash-object", "-w", "--stdin")))
	id := plumbing.NewHash(blob)
	type tc struct {
		mode, name string
		tree       string
	}
	var cases []tc
	for _, name := range dotNames {
		for _, mode := range []string{"100644", "120000", "40000"} {
			content := rawTree(id, treeEntry{mode, name})
			tree := strings.TrimSpace(string(gitIn(t, dir, string(content), "hash-object", "-w", "--literally", "-t", "tree", "--stdin")))
			if want := plumbing.ComputeHash(plumbing.TreeObject, content).String(); tree != want {
				t.Fatalf("git stored the tree as %s, want %s", tree, want)
			}
			cases = append(cases, tc{mode, name, tree})
		}
	}
	// fsck exits non-zero for errors (and for the directories' missing trees); its
	// messages are what count.
	cmd := gitCmd(dir, "fsck", "--no-dangling")
	out, _ := cmd.CombinedOutput()
	found := map[string]map[string]bool{} // tree -> fsck ids
	for _, m := range regexp.MustCompile(`(?m)^(?:error|warning) in tree ([0-9a-f]{40}): (\w+):`).FindAllStringSubmatch(string(out), -1) {
		if found[m[1]] == nil {
			found[m[1]] = map[string]bool{}
		}
		found[m[1]][m[2]] = true
	}
	checked := 0
	for _, c := range cases {
		gitSays := ""
		for _, id := range []string{"hasDotgit", "gitmodulesSymlink"} {
			if found[c.tree][id] {
				gitSays = id
			}
		}
		got := ""
		if err := checkTree(rawTree(id, treeEntry{c.mode, c.name}), 0); err != nil {
			got = err.ID
		}
		if got != gitSays {
			t.Errorf("%s %q: checker says %q, git fsck %q (%v)", c.mode, c.name, got, gitSays, found[c.tree])
		}
		if gitSays != "" {
			checked++
		}
	}
	if checked < 90 {
		t.Errorf("git fsck refused only %d of the trees: is this git too old for the test?\n%s", checked, out)
	}
}

func TestTreeChecker(t *testing.T) {
	t.Parallel()
	id := plumbing.ComputeHash(plumbing.BlobObject, []byte("x"))
	file := func(name string) treeEntry { return treeEntry{"100644", name} }
	dir := func(name string) treeEntry { return treeEntry{"40000", name} }
	for _, tc := range []struct {
		name    string
		content []byte
		want    string // fsck id; "" = accepted
		entry   string
	}{
		{"empty tree", nil, "", ""},
		{"git's order", rawTree(id, file("a-b"), file("a.c"), dir("a"), file("a0"), file("b.txt"), dir("b"), dir("c")), "", ""},
		{"dot", rawTree(id, file(".")), "hasDot", "."},
		{"dotdot", rawTree(id, dir("..")), "hasDotdot", ".."},
		{"empty name", rawTree(id, file("")), "emptyName", ""},
		{"slash", rawTree(id, file("a/b")), "fullPathname", "a/b"},
		{".git", rawTree(id, dir(".git")), "hasDotgit", ".git"},
		{".GIT\u200c", rawTree(id, dir(".GIT\u200c")), "hasDotgit", ".GIT\u200c"},
		{"gitmodules symlink", rawTree(id, treeEntry{"120000", ".gitmodules"}), "gitmodulesSymlink", ".gitmodules"},
		{"gitmodules file", rawTree(id, file(".gitmodules")), "", ""},
		{"twice", rawTree(id, file("a"), file("b"), file("b")), "duplicateEntries", "b"},
		{"file then dir", rawTree(id, file("a"), dir("a")), "duplicateEntries", "a"},
		{"file, others, dir", rawTree(id, file("a"), file("a-b"), file("a.c"), dir("a")), "duplicateEntries", "a"},
		{"nested candidates", rawTree(id, file("a"), file("a!"), file("a!!"), dir("a!"), dir("a")), "duplicateEntries", "a!"},
		{"dir then file", rawTree(id, dir("a"), file("a")), "duplicateEntries", "a"},
		{"unsorted", rawTree(id, file("b"), file("a")), "treeNotSorted", "a"},
		{"dir sorts with a slash", rawTree(id, dir("a"), file("a.c")), "treeNotSorted", "a.c"},
		{"long name", rawTree(id, file(strings.Repeat("n", maxEntryName+1))), "largePathname", strings.Repeat("n", maxEntryName)},
		{"longest name", rawTree(id, file(strings.Repeat("n", maxEntryName))), "", ""},
		{"control character", rawTree(id, file("a\tb"), file("a\tb")), "duplicateEntries", "a\tb"},
		{"no mode", []byte(" a\x00" + string(id[:])), "badTree", ""},
		{"bad mode", []byte("10064x a\x00" + string(id[:])), "badTree", ""},
		{"no space", []byte("100644\x00" + string(id[:])), "badTree", ""},
		{"short id", rawTree(id, file("a"))[:20], "badTree", ""},
		{"no NUL", []byte("100644 abc"), "badTree", ""},
	} {
		for _, chunk := range []int{0, 1, 3, 7} {
			err := checkTree(tc.content, chunk)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("%s (pieces of %d): %v", tc.name, chunk, err)
			case tc.want != "" && (err == nil || err.ID != tc.want || err.Entry != tc.entry):
				t.Errorf("%s (pieces of %d): %v, want %s on %q", tc.name, chunk, err, tc.want, tc.entry)
			}
		}
	}

	// The message names the tree, the entry (escaped) and the problem.
	err := checkTree(rawTree(id, file("a\x1b[31m"), file("a\x1b[31m")), 0)
	if !errors.Is(err, ErrBad) {
		t.Errorf("%v does not wrap ErrBad", err)
	}
	if want := `: entry "a\x1b[31m": appears twice (duplicateEntries)`; !strings.Contains(err.Error(), want) ||
		!strings.HasPrefix(err.Error(), "bad pack: tree "+err.Tree.String()[:7]) {
		t.Errorf("message %q, want it to start with the tree and hold %q", err, want)
	}
}

// TestStoreRefusesBadTrees: a tree that git's fsck refuses is refused whole or made by a
// delta, and nothing of its pack is stored.
func TestStoreRefusesBadTrees(t *testing.T) {
	t.Parallel()
	blob := []byte("x\n")
	id := plumbing.ComputeHash(plumbing.BlobObject, blob)
	good := rawTree(id, treeEntry{"100644", "a.txt"}, treeEntry{"100644", "gitx"})
	bad := rawTree(id, treeEntry{"100644", "a.txt"}, treeEntry{"100644", "git~1"})
	// The delta turns good into bad: copy the first entry, insert the second.
	second := bad[len(good)/2:]
	delta := []byte{byte(len(good)), byte(len(bad)), 0x80 | 0x10, byte(len(good) / 2), byte(len(second))}
	delta = append(delta, second...)
	if len(good) >= 128 || len(bad) >= 128 || len(second) > 127 {
		t.Fatal("the trees outgrew the one-byte sizes of the hand-made delta")
	}

	for name, pack := range map[string][]byte{
		"whole": rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.TreeObject, data: bad}),
		"ofs delta": rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.TreeObject, data: good},
			rawObject{typ: plumbing.OFSDeltaObject, ofsTo: int64(len(rawPack(rawObject{typ: plumbing.BlobObject, data: blob})) - 20), data: delta}),
		"ref delta": rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.TreeObject, data: good},
			rawObject{typ: plumbing.REFDeltaObject, ref: plumbing.ComputeHash(plumbing.TreeObject, good), data: delta}),
	} {
		dir := bareRepo(t)
		_, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {})
		var te *TreeError
		if !errors.As(err, &te) || te.Entry != "git~1" || te.ID != "hasDotgit" ||
			te.Tree != plumbing.ComputeHash(plumbing.TreeObject, bad) || !errors.Is(err, ErrBad) {
			t.Errorf("%s: Store = %v, want a hasDotgit TreeError on git~1 in %s", name, err, plumbing.ComputeHash(plumbing.TreeObject, bad))
		}
		if entries, err := os.ReadDir(filepath.Join(dir, "objects", "pack")); err != nil || len(entries) != 0 {
			t.Errorf("%s: objects/pack holds %v (%v)", name, entries, err)
		}
	}
	// The good tree alone passes, and so does the delta onto another good tree.
	fine := rawTree(id, treeEntry{"100644", "a.txt"}, treeEntry{"100644", "gity"})
	fineDelta := append([]byte{byte(len(good)), byte(len(fine)), 0x80 | 0x10, byte(len(good) / 2), byte(len(fine) - len(good)/2)}, fine[len(good)/2:]...)
	pack := rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.TreeObject, data: good},
		rawObject{typ: plumbing.REFDeltaObject, ref: plumbing.ComputeHash(plumbing.TreeObject, good), data: fineDelta})
	if n, err := Store(bareRepo(t), bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil || n != 3 {
		t.Errorf("good trees: Store = %d, %v", n, err)
	}
}

// gitCmd is git in dir, hermetic, for a test that reads its output whatever its status.
func gitCmd(dir string, args ...string) *exec.Cmd {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	return cmd
}

func TestQuoteName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		".git":                  `".git"`,
		"a\nb":                  `"a\nb"`,
		".GIT\u200c":            `".GIT\u200c"`,
		"\xff":                  `"\xff"`,
		strings.Repeat("é", 40): fmt.Sprintf("%q...", strings.Repeat("é", 30)),
	} {
		if got := quoteName(in); got != want {
			t.Errorf("quoteName(%q) = %s, want %s", in, got, want)
		}
	}
}
