package releaser

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// assertRefused checks that err is a refusal of Materialize of type T, safe to show
// (Reason), and that nothing was written: releases/ is empty.
func assertRefused[T error](t *testing.T, e *env, err error, want string) T {
	t.Helper()
	var typed T
	if !errors.As(err, &typed) {
		t.Fatalf("Materialize: %v, want a %T", err, typed)
	}
	if typed.Error() != want {
		t.Errorf("Error() = %q\nwant      %q", typed.Error(), want)
	}
	if reason, ok := Reason(err); !ok || reason != want {
		t.Errorf("Reason() = %q, %v; want %q, true", reason, ok, want)
	}
	if got := e.releasesDirEntries(); len(got) != 0 {
		t.Errorf("releases/ after a refusal: %v", got)
	}
	return typed
}

func TestMaterializeLimits(t *testing.T) {
	tree := map[string]file{
		"d/a": {filemode.Regular, strings.Repeat("a", 600)},
		"d/b": {filemode.Executable, strings.Repeat("b", 600)},
		"l":   {filemode.Symlink, "d/a"},
	} // 4 entries, 1,200 bytes
	tests := []struct {
		name string
		cfg  Config
		want *LimitError // nil: written
		msg  string
	}{
		{name: "no limits"},
		{name: "at the limits", cfg: Config{MaxReleaseFiles: 4, MaxReleaseSize: 1200}},
		{
			name: "files over", cfg: Config{MaxReleaseFiles: 3},
			want: &LimitError{Limit: "max_release_files", Figure: 4, Max: 3},
			msg:  "the release has 4 files and directories, over max_release_files (3)",
		},
		{
			name: "size over", cfg: Config{MaxReleaseSize: 1000},
			want: &LimitError{Limit: "max_release_size", Figure: 1200, Max: 1000},
			msg:  "the release is 1.2 KiB, over max_release_size (1000 bytes)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.cfg)
			g := newRepo(t)
			sha := g.commit(g.treeOf(tree))
			_, err := e.r.Materialize(t.Context(), g.st, sha, nil)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			le := assertRefused[*LimitError](t, e, err, tt.msg)
			if *le != *tt.want {
				t.Errorf("LimitError = %+v, want %+v", le, tt.want)
			}
		})
	}
}

func TestNewRefusesNegativeLimits(t *testing.T) {
	for _, cfg := range []Config{{MaxReleaseSize: -1}, {MaxReleaseFiles: -1}} {
		cfg.Path = t.TempDir()
		if _, err := New(cfg, zerolog.New(zerolog.NewTestWriter(t))); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// TestMaterializeZipBomb: a 256 MiB blob of zeros (260 KB of pack from git) is refused by
// the size limit from its header, before checkout, inflating nothing.
func TestMaterializeZipBomb(t *testing.T) {
	e := newEnv(t, Config{MaxReleaseSize: 100 << 20})
	g := newFSRepo(t)
	sha := g.commitOf(object.TreeEntry{Name: "bomb", Mode: filemode.Regular, Hash: g.packZeroBlob(256 << 20)})
	var err error
	allocated := allocatedDuring(func() {
		_, err = e.r.Materialize(t.Context(), g.st, sha, nil)
	})
	assertRefused[*LimitError](t, e, err, "the release is 256 MiB, over max_release_size (100 MiB)")
	t.Logf("Materialize allocated %d KiB", allocated>>10)
	if allocated > 64<<20 {
		t.Errorf("Materialize allocated %d bytes to refuse the bomb: it inflated it", allocated)
	}
}

// TestMaterializeTreeBomb: trees that hold one subtree ten times, seven levels deep, make
// ten million files of a few objects. They are counted, exactly, at the cost of each
// distinct tree, and refused.
func TestMaterializeTreeBomb(t *testing.T) {
	e := newEnv(t, Config{MaxReleaseFiles: 1_000_000, MaxReleaseSize: 1 << 40})
	g := newRepo(t)
	blob := g.blob("x")
	level := func(mode filemode.FileMode, h plumbing.Hash) plumbing.Hash {
		var entries []object.TreeEntry
		for i := range 10 {
			entries = append(entries, object.TreeEntry{Name: "e" + strconv.Itoa(i), Mode: mode, Hash: h})
		}
		return g.tree(entries...)
	}
	tree := level(filemode.Regular, blob)
	for range 6 {
		tree = level(filemode.Dir, tree)
	}
	sha := g.commit(tree)
	fakeStatfs(e, 1<<40, 1000) // if the limit failed, so would the check of free inodes
	_, err := e.r.Materialize(t.Context(), g.st, sha, nil)
	// 10^7 files and 10^6 + ... + 10 directories.
	le := assertRefused[*LimitError](t, e, err, "the release has 11,111,110 files and directories, over max_release_files (1,000,000)")
	if le.Figure != 11_111_110 {
		t.Errorf("Figure = %d", le.Figure)
	}
}

// fakeStatfs makes e's filesystem report free bytes and inodes.
func fakeStatfs(e *env, free, inodes uint64) {
	e.r.statfs = func(path string, st *unix.Statfs_t) error {
		if err := unix.Statfs(path, st); err != nil {
			return err
		}
		st.Frsize, st.Bsize, st.Bavail = 1, 1, free
		st.Files, st.Ffree = inodes+1000, inodes
		return nil
	}
}

func TestMaterializeFreeSpace(t *testing.T) {
	tree := map[string]file{} // 10 files of 100 bytes: 10 entries, 1,000 bytes
	for i := range 10 {
		tree["f"+strconv.Itoa(i)] = file{filemode.Regular, strings.Repeat("x", 99) + strconv.Itoa(i)}
	}
	tests := []struct {
		name         string
		free, inodes uint64
		msg          string // "": written
	}{
		{name: "room with the margin", free: 1100, inodes: 11},
		{name: "no room for the margin", free: 1099, inodes: 1000,
			msg: "the release needs 1,100 bytes of disk (its size plus 10%), and the disk holding the releases has 1,099 bytes free"},
		{name: "not a byte", free: 0, inodes: 1000,
			msg: "the release needs 1.1 KiB of disk (its size plus 10%), and the disk holding the releases has 0 bytes free"},
		{name: "no inodes for the margin", free: 1 << 30, inodes: 10,
			msg: "the release needs 11 inodes (its files and directories plus 10%), and the disk holding the releases has 10 free"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			fakeStatfs(e, tt.free, tt.inodes)
			g := newRepo(t)
			sha := g.commit(g.treeOf(tree))
			_, err := e.r.Materialize(t.Context(), g.st, sha, nil)
			if tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			assertRefused[*LimitError](t, e, err, tt.msg)
		})
	}
}

// TestMaterializeFreeSpaceLinked: files LinkFiles will hard-link from the live release
// need no space; copied ones (copy_file_range copies on ext4) do.
func TestMaterializeFreeSpaceLinked(t *testing.T) {
	big := strings.Repeat("b", 10_000)
	for _, link := range []bool{true, false} {
		t.Run("LinkFiles="+strconv.FormatBool(link), func(t *testing.T) {
			e := newEnv(t, Config{LinkFiles: link})
			g := newRepo(t)
			live := g.commit(g.treeOf(map[string]file{"big": {filemode.Regular, big}}))
			if _, err := e.r.Materialize(t.Context(), g.st, live, nil); err != nil {
				t.Fatal(err)
			}
			must(t, e.r.Complete(live))
			e.activate(live)
			// Room for the new file, not for a second copy of big.
			fakeStatfs(e, 1000, 1000)
			next := g.commit(g.treeOf(map[string]file{"big": {filemode.Regular, big}, "new": {filemode.Regular, "new"}}))
			stats, err := e.r.Materialize(t.Context(), g.st, next, nil)
			if !link {
				var le *LimitError
				if !errors.As(err, &le) || le.Limit != "free space" || le.Figure != 11_003 {
					t.Fatalf("Materialize: %v, want a refusal for free space of 11,003 bytes", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if stats.Reused != 1 {
				t.Errorf("stats = %+v, want big linked", stats)
			}
		})
	}
}

func TestLimitErrorMessage(t *testing.T) {
	const gib = 1 << 30
	for _, tt := range []struct {
		err  LimitError
		want string
	}{
		{LimitError{"max_release_size", 12*gib + 3*gib/10, 10 * gib}, "the release is 12.3 GiB, over max_release_size (10 GiB)"},
		{LimitError{"max_release_size", 10*gib + 1, 10 * gib}, "the release is 10,737,418,241 bytes, over max_release_size (10,737,418,240 bytes)"},
		{LimitError{"max_release_files", 1_200_000, 1_000_000}, "the release has 1,200,000 files and directories, over max_release_files (1,000,000)"},
		{LimitError{"free space", 11 * gib, 8*gib + gib/10}, "the release needs 11 GiB of disk (its size plus 10%), and the disk holding the releases has 8.1 GiB free"},
		{LimitError{"free inodes", 1_320_000, 500_000}, "the release needs 1,320,000 inodes (its files and directories plus 10%), and the disk holding the releases has 500,000 free"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q\nwant      %q", got, tt.want)
		}
	}
}
