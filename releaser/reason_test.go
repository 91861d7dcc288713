package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// chain returns a tree of n directories "d" nested in each other, the innermost holding
// a file.
func (g *repo) chain(n int) plumbing.Hash {
	h := g.tree(object.TreeEntry{Name: "f", Mode: filemode.Regular, Hash: g.blob("deep")})
	for range n {
		h = g.tree(object.TreeEntry{Name: "d", Mode: filemode.Dir, Hash: h})
	}
	return h
}

func TestMaterializeTreeErrors(t *testing.T) {
	long := strings.Repeat("n", 256)
	deep := strings.Repeat("d/", 1001)
	deep = deep[:len(deep)-1]
	one := func(name string, mode filemode.FileMode, content string) func(g *repo) plumbing.Hash {
		return func(g *repo) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: name, Mode: mode, Hash: g.blob(content)})
		}
	}
	tests := []struct {
		name string
		tree func(g *repo) plumbing.Hash
		want string // the message; "": written
	}{
		{"dot git", func(g *repo) plumbing.Hash {
			return g.treeOf(map[string]file{".git/hooks/post-checkout": {filemode.Executable, "#!/bin/sh\n"}})
		}, `tree entry ".git": reserved name`},
		{"dot git in another case, deeper", func(g *repo) plumbing.Hash {
			return g.treeOf(map[string]file{"a/.GIT/config": {filemode.Regular, "x"}})
		}, `tree entry "a/.GIT": reserved name`},
		{"8.3 short name", one("Git~1", filemode.Regular, "x"), `tree entry "Git~1": reserved name`},
		{"NTFS trailing dot and stream", one(".git. ::$INDEX_ALLOCATION", filemode.Regular, "x"), `tree entry ".git. ::$INDEX_ALLOCATION": reserved name`},
		{"HFS+ ignored code point", one(".g\u200cIt", filemode.Regular, "x"), `tree entry ".g\u200cIt": reserved name`},
		{"dot dot between backslashes", one(`a\..\b`, filemode.Regular, "x"), `tree entry "a\\..\\b": reserved name`},
		{"dot", one(".", filemode.Regular, "x"), `tree entry ".": reserved name`},
		{"dot dot", func(g *repo) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: "..", Mode: filemode.Dir, Hash: g.tree(
				object.TreeEntry{Name: "owned", Mode: filemode.Regular, Hash: g.blob("pwned")})})
		}, `tree entry "..": reserved name`},
		{"newline", func(g *repo) plumbing.Hash {
			return g.treeOf(map[string]file{"dir/a\nb": {filemode.Regular, "x"}})
		}, `tree entry "dir/a\nb": control character in the name`},
		{"escape sequence", one("\x1b[31mred", filemode.Regular, "x"), `tree entry "\x1b[31mred": control character in the name`},
		{"delete", one("a\x7f", filemode.Regular, "x"), `tree entry "a\x7f": control character in the name`},
		{"slash", one("esc/owned", filemode.Regular, "x"), `tree entry "esc/owned": slash in the name`},
		{"empty name", func(g *repo) plumbing.Hash {
			return g.tree(object.TreeEntry{Name: "sub", Mode: filemode.Dir, Hash: one("", filemode.Regular, "x")(g)})
		}, `tree entry "sub": malformed tree: empty filename`},
		{"empty name at the top", one("", filemode.Regular, "x"), `the commit's tree: malformed tree: empty filename`},
		{"255 bytes", one(long[:255], filemode.Regular, "x"), ""},
		{"256 bytes", one(long, filemode.Regular, "x"),
			`tree entry "` + long[:60] + `…` + long[:60] + `" (256 bytes): name longer than 255 bytes`},
		{"1000 directories deep", func(g *repo) plumbing.Hash { return g.chain(1000) }, ""},
		{"1001 directories deep", func(g *repo) plumbing.Hash { return g.chain(1001) },
			`tree entry "` + deep[:60] + `…` + deep[len(deep)-60:] + `" (2001 bytes): more than 1000 directories deep`},
		{"a subtree seen before, deeper", func(g *repo) plumbing.Hash {
			sub := g.chain(999)
			return g.tree(
				object.TreeEntry{Name: "a", Mode: filemode.Dir, Hash: sub},
				object.TreeEntry{Name: "b", Mode: filemode.Dir, Hash: g.tree(object.TreeEntry{Name: "c", Mode: filemode.Dir, Hash: sub})},
			)
		}, `tree entry "b/c": more than 1000 directories deep`},
		{"duplicate", func(g *repo) plumbing.Hash {
			return g.tree(
				object.TreeEntry{Name: "x", Mode: filemode.Symlink, Hash: g.blob("../../../sentinel/x")},
				object.TreeEntry{Name: "x", Mode: filemode.Regular, Hash: g.blob("pwned")},
			)
		}, `tree entry "x": duplicate entry`},
		{"huge symlink target", one("a", filemode.Symlink, strings.Repeat("x/", 4000)), `tree entry "a": symlink target longer than 4096 bytes`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newRepo(t)
			sha := g.commit(tt.tree(g))
			_, err := e.r.Materialize(t.Context(), g.st, sha, nil)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			assertRefused[*TreeError](t, e, err, tt.want)
			if strings.ContainsFunc(tt.want, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Errorf("message %q holds a control character", tt.want)
			}
		})
	}
}

func TestQuotePath(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"a/b", `"a/b"`},
		{"tab\there", `"tab\there"`},
		{"\xff", `"\xff"`},
		{"é", `"é"`},
		// Cut in the middle, at a character boundary.
		{strings.Repeat("é", 100), `"` + strings.Repeat("é", 30) + `…` + strings.Repeat("é", 30) + `" (200 bytes)`},
	} {
		if got := quotePath(tt.in); got != tt.want {
			t.Errorf("quotePath(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestActivateSwapRefused: a swap the filesystem refuses (here EACCES: the deploy root is
// read-only) is a *SwapError, its reason safe to show, and the live release stays live.
func TestActivateSwapRefused(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	a, b := e.release(g), e.release(g)
	e.activate(a)
	must(t, os.Chmod(e.r.Path(), 0o555))
	t.Cleanup(func() { os.Chmod(e.r.Path(), 0o755) }) // for t.TempDir's removal
	err := withoutDACOverride(t, func() error {
		_, err := e.r.Activate(b)
		return err
	})
	var se *SwapError
	if !errors.As(err, &se) || !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("Activate on a read-only root: %v, want a *SwapError of EACCES", err)
	}
	if reason, ok := Reason(err); !ok || reason != "cannot swap current: permission denied on the server" {
		t.Errorf("Reason() = %q, %v", reason, ok)
	}
	if got := e.current(); got != "releases/"+a {
		t.Errorf("current -> %s, want releases/%s", got, a)
	}
}

// TestReason: the kinds of error Reason knows, as the releaser returns them (wrapped,
// with server paths in the chain), and what it says of them.
func TestReason(t *testing.T) {
	abs := "/srv/deploy/app/production"
	pathErr := func(op, file string, errno syscall.Errno) error {
		return &fs.PathError{Op: op, Path: filepath.Join(abs, file), Err: errno}
	}
	tests := []struct {
		name string
		err  error
		want string // "": not a reason
	}{
		{"corrupt state", fmt.Errorf("activate x: %w", &CorruptError{File: stateFile, Err: errors.New("unexpected end of JSON input")}),
			".slipway/releases.json is damaged (unexpected end of JSON input): move it away (slipway then keeps only the live release) or restore it from a backup"},
		{"tree entry", fmt.Errorf("materialize x: %w", &TreeError{Path: "a/.git", Problem: "reserved name"}), `tree entry "a/.git": reserved name`},
		{"limit", fmt.Errorf("materialize x: %w", &LimitError{Limit: limitFiles, Figure: 5, Max: 4}), "the release has 5 files and directories, over max_release_files (4)"},
		{"missing shared file", fmt.Errorf("link shared: %w", &MissingSharedError{Path: abs + "/shared/config/.env", Name: "config/.env"}),
			`shared file "shared/config/.env" does not exist: create it on the server`},
		{"locked", &LockedError{}, "deploy in progress (holder unknown)"},
		{"linked file changed", fmt.Errorf("check linked x: %w", &LinkedFileError{Path: "public/index.html"}),
			`"public/index.html" was changed in place by the build, and it is shared with the live release (release_files = "link"), whose file changed with it`},
		{"linked files changed", fmt.Errorf("check linked x: %w", &LinkedFileError{Path: "a\nb", More: 1200}),
			`"a\nb" was changed in place by the build, and it is shared with the live release (release_files = "link"), whose file changed with it; so were 1,200 other shared files`},
		{"destroyed", fmt.Errorf("lock: %w", ErrDestroyed), "the environment was destroyed"},
		{"swap refused", fmt.Errorf("activate x: %w", &SwapError{Err: &os.LinkError{Op: "symlink", Old: "releases/x", New: abs + "/.current.tmp-1", Err: syscall.EPERM}}),
			"cannot swap current: operation not permitted on the server"},
		{"swap on a read-only filesystem", fmt.Errorf("activate x: %w", &SwapError{Err: &os.LinkError{Op: "rename", Old: abs + "/.current.tmp-1", New: abs + "/current", Err: syscall.EROFS}}),
			"cannot swap current: read-only file system on the server"},
		{"disk full taking the lock", fmt.Errorf("lock: %w", pathErr("write", ".slipway/.deploy.holder.tmp-1", syscall.ENOSPC)),
			"the server's disk is full (no space left on device)"},
		{"disk full writing a file", fmt.Errorf("materialize x: big.bin: %w", syscall.ENOSPC), "the server's disk is full (no space left on device)"},
		{"quota", fmt.Errorf("link shared uploads: %w", pathErr("mkdir", "shared/uploads", syscall.EDQUOT)), "the server's disk quota is exceeded"},
		{"anything else", fmt.Errorf("complete x: %w", pathErr("open", "releases/x", syscall.EIO)), ""},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Reason(tt.err)
			if got != tt.want || ok != (tt.want != "") {
				t.Errorf("Reason() = %q, %v; want %q", got, ok, tt.want)
			}
			if strings.Contains(got, abs) {
				t.Errorf("Reason() = %q shows a server path", got)
			}
		})
	}
}
