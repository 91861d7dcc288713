package gitserver

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

	"github.com/go-git/go-git/v5/plumbing"
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

// TestConsolidatePacks: ten packs of a history (as ten pushes leave), two of them holding
// objects another pack has too, merge into one pack holding every object once. git reads
// the repository whole, and indexes the merged pack exactly as slipway did.
func TestConsolidatePacks(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	dir := filepath.Join(t.TempDir(), "r.git")
	if err := createRepo(dir, plumbing.NewBranchReferenceName("main")); err != nil {
		t.Fatal(err)
	}
	ranges := []string{"main~54\n"}
	for i := 54; i > 0; i -= 6 {
		ranges = append(ranges, fmt.Sprintf("main~%d\n^main~%d\n", i-6, i))
	}
	// Overlaps: objects the repository has already, sent again (a branch pushed anew).
	ranges = append(ranges[:3], append([]string{"main~40\n^main~50\n"}, ranges[3:]...)...)
	ranges = append(ranges, "main\n^main~12\n", "v1\n")
	for _, revs := range ranges {
		pack := gitIn(t, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset", "--window=50")
		if _, err := storePack(dir, bufio.NewReader(bytes.NewReader(pack)), func() {}); err != nil {
			t.Fatalf("store %q: %v", revs, err)
		}
	}
	packDir := filepath.Join(dir, "objects", "pack")
	before, _ := listPacks(packDir)
	if len(before) != len(ranges) || len(before) <= maxPacks {
		t.Fatalf("%d packs stored, want %d (more than %d)", len(before), len(ranges), maxPacks)
	}
	want := packHashes(t, dir)

	removed := false
	stats, err := consolidatePacks(dir, func() (func(), bool) { removed = true; return func() {}, true })
	if err != nil {
		t.Fatal(err)
	}
	after, _ := listPacks(packDir)
	if !removed || len(after) >= len(before) || len(after) > 2 {
		t.Fatalf("%d packs after the merge (of %d), from %d; removed %v", len(after), stats.packs, len(before), removed)
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
	got, _ := os.ReadFile(merged + ".idx")
	wantIdx, _ := os.ReadFile(filepath.Join(work, "want.idx"))
	if !bytes.Equal(got, wantIdx) {
		t.Error("merged pack's index differs from git index-pack's")
	}
	if entries, _ := os.ReadDir(packDir); len(entries) != 2*len(after) {
		t.Errorf("objects/pack holds %d files, want %d", len(entries), 2*len(after))
	}

	// A reader keeps the merged packs in place; nothing is lost, and the next merge takes them.
	for _, revs := range ranges[:maxPacks] {
		pack := gitIn(t, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset")
		storePack(dir, bufio.NewReader(bytes.NewReader(pack)), func() {})
	}
	before, _ = listPacks(packDir)
	if _, err := consolidatePacks(dir, func() (func(), bool) { return nil, false }); err != nil {
		t.Fatal(err)
	}
	kept, _ := listPacks(packDir)
	for _, p := range before {
		if !slices.ContainsFunc(kept, func(k packFile) bool { return k.base == p.base }) {
			t.Errorf("%s removed while a reader may use it", filepath.Base(p.base))
		}
	}
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
	if _, err := consolidatePacks(dir, func() (func(), bool) { return func() {}, true }); err != nil {
		t.Fatal(err)
	}
	if final, _ := listPacks(packDir); len(final) > 2 {
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
	dir := filepath.Join(t.TempDir(), "r.git")
	if err := createRepo(dir, plumbing.NewBranchReferenceName("main")); err != nil {
		t.Fatal(err)
	}
	packDir := filepath.Join(dir, "objects", "pack")
	var packs []packFile
	for _, revs := range []string{"main~20\n^main~30\n", "main~10\n^main~40\n", "main~40\n"} {
		pack := gitIn(t, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset", "--window=50")
		if _, err := storePack(dir, bufio.NewReader(bytes.NewReader(pack)), func() {}); err != nil {
			t.Fatal(err)
		}
		scan, _ := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)))
		fi, _ := os.Stat(filepath.Join(packDir, "pack-"+scan.sum.String()+".pack"))
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
		os.Remove(p.base + ".pack")
		os.Remove(p.base + ".idx")
	}
	if got := packHashes(t, dir); !slices.Equal(got, want) {
		t.Errorf("the merged pack holds %d objects, the packs %d", len(got), len(want))
	}
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
}

// BenchmarkObjectLookup reads every object of a 60-commit history through go-git's storage,
// as a checkout or a fetch does: stored as the 60 packs of one-commit pushes, and merged.
//
//	go test ./gitserver -run '^$' -bench ObjectLookup
func BenchmarkObjectLookup(b *testing.B) {
	src := historyRepo(b)
	for _, merged := range []bool{false, true} {
		dir := filepath.Join(b.TempDir(), "r.git")
		if err := createRepo(dir, plumbing.NewBranchReferenceName("main")); err != nil {
			b.Fatal(err)
		}
		for i := 59; i >= 0; i-- {
			revs := fmt.Sprintf("main~%d\n", i)
			if i < 59 {
				revs += fmt.Sprintf("^main~%d\n", i+1)
			}
			pack := gitIn(b, src, revs, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset")
			if _, err := storePack(dir, bufio.NewReader(bytes.NewReader(pack)), func() {}); err != nil {
				b.Fatal(err)
			}
		}
		ids := packHashes(b, dir)
		if merged {
			if _, err := consolidatePacks(dir, func() (func(), bool) { return func() {}, true }); err != nil {
				b.Fatal(err)
			}
		}
		packs, _ := listPacks(filepath.Join(dir, "objects", "pack"))
		b.Run(fmt.Sprintf("packs=%d", len(packs)), func(b *testing.B) {
			for b.Loop() {
				st := newStorage(dir)
				for _, id := range ids {
					if _, err := st.EncodedObject(plumbing.AnyObject, plumbing.NewHash(id)); err != nil {
						b.Fatal(err)
					}
				}
				st.Close()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ids)), "ns/object")
		})
	}
}
