package gitserver

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/format/pktline"
)

// mkTree writes a tree object with entries ("<mode> <name>" and the object's id, in the
// order given, unchecked) to the repository in dir, as git's hash-object --literally does,
// and returns its id.
func (h *harness) mkTree(dir string, entries ...[2]string) string {
	h.t.Helper()
	var b strings.Builder
	for _, e := range entries {
		id, err := hex.DecodeString(e[1])
		if err != nil {
			h.t.Fatal(err)
		}
		b.WriteString(e[0] + "\x00" + string(id))
	}
	f := filepath.Join(h.dir, fmt.Sprintf("tree%d", len(entries)))
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return h.git(dir, "hash-object", "-w", "--literally", "-t", "tree", f)
}

// TestBadTreesRefused: a push of a commit whose tree git's fsck refuses (receive.fsckObjects)
// is refused, by the real git over ssh, with the tree, the entry (control characters
// escaped) and the problem, and nothing changes: no deploy, no ref, no pack.
func TestBadTreesRefused(t *testing.T) {
	t.Parallel()
	d := &fakeDeployer{}
	h := start(t, d, nil)
	work := h.work()
	good := h.pushed(work)
	blob := h.git(work, "rev-parse", "HEAD:a.txt")
	emptyTree := h.mkTree(work)
	packs := func() int {
		m, err := filepath.Glob(filepath.Join(h.reposDir, "myapp", "production.git", "objects", "pack", "*.pack"))
		if err != nil {
			t.Fatal(err)
		}
		return len(m)
	}
	packsBefore := packs()

	file := func(name string) [2]string { return [2]string{"100644 " + name, blob} }
	dir := func(name string) [2]string { return [2]string{"40000 " + name, emptyTree} }
	link := func(name string) [2]string { return [2]string{"120000 " + name, blob} }
	for _, tc := range []struct {
		entries [][2]string
		entry   string // as the message shows it
		problem string
	}{
		{[][2]string{dir(".git")}, `".git"`, "is .git, or reads as .git on some filesystems (hasDotgit)"},
		{[][2]string{file(".GIT\u200c")}, `".GIT\u200c"`, "is .git, or reads as .git on some filesystems (hasDotgit)"},
		{[][2]string{dir("git~1")}, `"git~1"`, "is .git, or reads as .git on some filesystems (hasDotgit)"},
		{[][2]string{file(".git.")}, `".git."`, "is .git, or reads as .git on some filesystems (hasDotgit)"},
		{[][2]string{dir(".")}, `"."`, `"." is not a file name (hasDot)`},
		{[][2]string{dir("..")}, `".."`, `".." is not a file name (hasDotdot)`},
		{[][2]string{file("a/b")}, `"a/b"`, "a name with a slash (fullPathname)"},
		{[][2]string{link(".gitmodules")}, `".gitmodules"`, ".gitmodules is a symbolic link (gitmodulesSymlink)"},
		{[][2]string{link(".GITMODULES ")}, `".GITMODULES "`, ".gitmodules is a symbolic link (gitmodulesSymlink)"},
		{[][2]string{link("gitmod~1")}, `"gitmod~1"`, ".gitmodules is a symbolic link (gitmodulesSymlink)"},
		{[][2]string{file("a.txt"), file("a.txt")}, `"a.txt"`, "appears twice (duplicateEntries)"},
		{[][2]string{file("a"), file("a.b"), dir("a")}, `"a"`, "appears twice (duplicateEntries)"},
		{[][2]string{file("a\x01\x1b[31m"), file("a\x01\x1b[31m")}, `"a\x01\x1b[31m"`, "appears twice (duplicateEntries)"},
		{[][2]string{file("b"), file("a")}, `"a"`, "out of git's order (treeNotSorted)"},
	} {
		tree := h.mkTree(work, tc.entries...)
		// The bad tree sits one level down, in a good root: every tree of the pack counts.
		root := h.mkTree(work, file("a.txt"), [2]string{"40000 sub", tree})
		commit := h.git(work, "commit-tree", "-p", good, "-m", "bad tree", root)
		stderr, err := h.push(work, "production", commit+":refs/heads/main")
		reason := fmt.Sprintf("tree %s: entry %s: %s", tree[:7], tc.entry, tc.problem)
		if err == nil {
			t.Errorf("%s: push succeeded\n%s", reason, stderr)
			continue
		}
		for _, want := range []string{
			"error: remote unpack failed: " + reason,
			"! [remote rejected] " + commit + " -> main (" + reason + ")",
		} {
			if !strings.Contains(stderr, want) {
				t.Errorf("missing %q in\n%s", want, stderr)
			}
		}
	}
	// git itself will not pack a tree entry without a name: the pack is sent by hand.
	tree := h.mkTree(work, file(""))
	root := h.mkTree(work, file("a.txt"), [2]string{"40000 sub", tree})
	commit := h.git(work, "commit-tree", "-p", good, "-m", "bad tree", root)
	pack := packOf(t, h, work, commit, root, tree, blob)
	g := h.rawGit("git-receive-pack 'myapp/production'")
	e := pktline.NewEncoder(g.stdin)
	for _, err := range []error{
		e.EncodeString(fmt.Sprintf("%s %s refs/heads/main\x00report-status side-band-64k", good, commit)),
		e.Flush(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := g.stdin.Write(pack); err != nil {
		t.Fatal(err)
	}
	report, err := readReport(g.out, true)
	reason := fmt.Sprintf(`tree %s: entry "": empty name (emptyName)`, tree[:7])
	if want := "unpack " + reason + "\nng refs/heads/main " + reason + "\n"; err != nil || report != want {
		t.Errorf("report = %q, %v; want %q", report, err, want)
	}

	if p := d.got(); len(p) != 1 {
		t.Errorf("Deploy called %d times, want 1 (the good push)", len(p))
	}
	if got := h.serverRef("refs/heads/main"); got != good {
		t.Errorf("main = %s, want %s", got, good)
	}
	if n := packs(); n != packsBefore {
		t.Errorf("%d packs, want %d: a refused pack was stored", n, packsBefore)
	}
	h.fsckServer("--strict")
}

// packOf returns a pack of exactly the objects ids of the repository in dir, made by git
// pack-objects without walking them.
func packOf(t *testing.T, h *harness, dir string, ids ...string) []byte {
	t.Helper()
	cmd := exec.Command("git", "pack-objects", "--stdout", "-q")
	cmd.Dir, cmd.Env = dir, h.env(h.alice)
	cmd.Stdin = strings.NewReader(strings.Join(ids, "\n") + "\n")
	pack, err := cmd.Output()
	if err != nil {
		t.Fatalf("pack-objects: %v", err)
	}
	return pack
}
