package pack

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// packHashes returns the ids of every object in the packs of the repository at dir.
func packHashes(t testing.TB, dir string) []string {
	t.Helper()
	packs, err := listPacks(filepath.Join(dir, "objects", "pack"))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range packs {
		entries, err := readIndex(p.base + ".idx")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			ids = append(ids, e.Hash.String())
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// mustListPacks returns the packs in packDir, largest first.
func mustListPacks(t testing.TB, packDir string) []packFile {
	t.Helper()
	packs, err := listPacks(packDir)
	if err != nil {
		t.Fatal(err)
	}
	return packs
}

// TestConsolidatePacks: ten packs of a history (as ten pushes leave), two of them holding
// objects another pack has too, merge into one pack holding every object once. git reads
// the repository whole, and indexes the merged pack exactly as slipway did.
func TestConsolidatePacks(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	dir := bareRepo(t)
	ranges := []string{"main~54\n"}
	for i := 54; i > 0; i -= 6 {
		ranges = append(ranges, fmt.Sprintf("main~%d\n^main~%d\n", i-6, i))
	}
	// Overlaps: objects the repository has already, sent again (a branch pushed anew).
	ranges = append(ranges[:3], append([]string{"main~40\n^main~50\n"}, ranges[3:]...)...)
	ranges = append(ranges, "main\n^main~12\n", "v1\n")
	for _, revs := range ranges {
		pack := gitIn(t, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset", "--window=50")
		if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
			t.Fatalf("store %q: %v", revs, err)
		}
	}
	packDir := filepath.Join(dir, "objects", "pack")
	before := mustListPacks(t, packDir)
	if len(before) != len(ranges) || len(before) <= MaxPacks {
		t.Fatalf("%d packs stored, want %d (more than %d)", len(before), len(ranges), MaxPacks)
	}
	want := packHashes(t, dir)

	removed := false
	stats, err := Consolidate(dir, func() (func(), bool) { removed = true; return func() {}, true })
	if err != nil {
		t.Fatal(err)
	}
	after := mustListPacks(t, packDir)
	if !removed || len(after) >= len(before) || len(after) > 2 {
		t.Fatalf("%d packs after the merge (of %d), from %d; removed %v", len(after), stats.Packs, len(before), removed)
	}
	if stats.dropped == 0 {
		t.Errorf("merge dropped no copies; the overlaps hold some")
	}
	if got := packHashes(t, dir); !slices.Equal(got, want) {
		t.Errorf("the packs hold %d objects after the merge, %d before", len(got), len(want))
	}
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
	merged := filepath.Join(packDir, "pack-"+stats.sum.String())
	work := t.TempDir()
	gitIn(t, work, "", "index-pack", "-o", "want.idx", merged+".pack")
	got, err := os.ReadFile(merged + ".idx")
	if err != nil {
		t.Fatal(err)
	}
	wantIdx, err := os.ReadFile(filepath.Join(work, "want.idx"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wantIdx) {
		t.Error("merged pack's index differs from git index-pack's")
	}
	if entries, err := os.ReadDir(packDir); err != nil || len(entries) != 2*len(after) {
		t.Errorf("objects/pack holds %d files (%v), want %d", len(entries), err, 2*len(after))
	}

	// A reader keeps the merged packs in place; nothing is lost, and the next merge takes them.
	for _, revs := range ranges[:MaxPacks] {
		pack := gitIn(t, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset")
		if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
			t.Fatalf("store %q: %v", revs, err)
		}
	}
	before = mustListPacks(t, packDir)
	if _, err := Consolidate(dir, func() (func(), bool) { return nil, false }); err != nil {
		t.Fatal(err)
	}
	kept := mustListPacks(t, packDir)
	for _, p := range before {
		if !slices.ContainsFunc(kept, func(k packFile) bool { return k.base == p.base }) {
			t.Errorf("%s removed while a reader may use it", filepath.Base(p.base))
		}
	}
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
	if _, err := Consolidate(dir, func() (func(), bool) { return func() {}, true }); err != nil {
		t.Fatal(err)
	}
	if final := mustListPacks(t, packDir); len(final) > 2 {
		t.Errorf("%d packs after the next merge", len(final))
	}
	if got := packHashes(t, dir); !slices.Equal(got, want) {
		t.Errorf("the packs hold %d objects after the second merge, want %d", len(got), len(want))
	}
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
}

func TestPacksToMerge(t *testing.T) {
	t.Parallel()
	sizes := func(ps []packFile) string {
		var s []string
		for _, p := range ps {
			s = append(s, fmt.Sprint(p.size))
		}
		return strings.Join(s, " ")
	}
	pf := func(sz ...int64) []packFile {
		var ps []packFile
		for _, s := range sz {
			ps = append(ps, packFile{size: s})
		}
		return ps
	}
	for _, c := range []struct {
		packs []packFile
		want  string
	}{
		{pf(1000, 10, 10, 10, 5, 1), "10 10 10 5 1"},        // the first push's pack stays
		{pf(1000, 300, 10, 10, 5, 1), "10 10 5 1"},          // so does a big second one
		{pf(1000, 900, 10, 10, 5, 1), "1000 900 10 10 5 1"}, // two of a size: all
		{pf(40, 20, 10, 5, 3, 1), "40 20 10 5 3 1"},         // no pack dominates the rest
		{pf(64, 16, 4, 1), ""},                              // each dominates the rest
	} {
		if got := sizes(packsToMerge(c.packs)); got != c.want {
			t.Errorf("packsToMerge(%v) = %q, want %q", sizes(c.packs), got, c.want)
		}
	}
}

// TestMergePacksRebasesDeltas: when the copy of an object a delta is based on was dropped (an
// earlier pack had it), the delta is based on the kept copy.
func TestMergePacksRebasesDeltas(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	dir := bareRepo(t)
	packDir := filepath.Join(dir, "objects", "pack")
	var packs []packFile
	for _, revs := range []string{"main~20\n^main~30\n", "main~10\n^main~40\n", "main~40\n"} {
		pack := gitIn(t, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset", "--window=50")
		if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
			t.Fatal(err)
		}
		scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(packDir, "pack-"+scan.sum.String()+".pack"))
		if err != nil {
			t.Fatal(err)
		}
		packs = append(packs, packFile{base: filepath.Join(packDir, "pack-"+scan.sum.String()), size: fi.Size()})
	}
	want := packHashes(t, dir)
	stats, err := mergePacks(packDir, packs)
	if err != nil {
		t.Fatal(err)
	}
	if stats.dropped == 0 || stats.rebased == 0 {
		t.Fatalf("merge dropped %d copies and rebased %d deltas; want both", stats.dropped, stats.rebased)
	}
	for _, p := range packs {
		for _, ext := range []string{".pack", ".idx"} {
			if err := os.Remove(p.base + ext); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := packHashes(t, dir); !slices.Equal(got, want) {
		t.Errorf("the merged pack holds %d objects, the packs %d", len(got), len(want))
	}
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
}

// BenchmarkObjectLookup reads every object of a 60-commit history through go-git's storage,
// as a checkout or a fetch does: stored as the 60 packs of one-commit pushes, and merged.
//
//	go test ./gitserver/internal/pack -run '^$' -bench ObjectLookup
func BenchmarkObjectLookup(b *testing.B) {
	src := historyRepo(b)
	for _, merged := range []bool{false, true} {
		dir := bareRepo(b)
		for i := 59; i >= 0; i-- {
			revs := fmt.Sprintf("main~%d\n", i)
			if i < 59 {
				revs += fmt.Sprintf("^main~%d\n", i+1)
			}
			pack := gitIn(b, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset")
			if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
				b.Fatal(err)
			}
		}
		ids := packHashes(b, dir)
		if merged {
			if _, err := Consolidate(dir, func() (func(), bool) { return func() {}, true }); err != nil {
				b.Fatal(err)
			}
		}
		packs := mustListPacks(b, filepath.Join(dir, "objects", "pack"))
		b.Run(fmt.Sprintf("packs=%d", len(packs)), func(b *testing.B) {
			for b.Loop() {
				// Opened as the git server opens a repository: packs kept open, a small cache.
				st := filesystem.NewStorageWithOptions(osfs.New(dir, osfs.WithBoundOS()), cache.NewObjectLRU(8*cache.MiByte),
					filesystem.Options{KeepDescriptors: true})
				for _, id := range ids {
					if _, err := st.EncodedObject(plumbing.AnyObject, plumbing.NewHash(id)); err != nil {
						b.Fatal(err)
					}
				}
				if err := st.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/object")
		})
	}
}
