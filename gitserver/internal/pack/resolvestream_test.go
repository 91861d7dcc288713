package pack

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/zlib"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
)

// deltaOps writes a delta's instructions in git's format (patch-delta.c): the base's and
// the result's sizes, then copies from the base and inserts of the delta's own bytes.
type deltaOps struct{ b []byte }

func newDeltaOps(src, target int64) *deltaOps {
	d := &deltaOps{}
	d.varint(uint64(src))
	d.varint(uint64(target))
	return d
}

func (d *deltaOps) varint(v uint64) {
	for v >= 0x80 {
		d.b = append(d.b, byte(v)|0x80)
		v >>= 7
	}
	d.b = append(d.b, byte(v))
}

// copy copies n bytes of the base from off, in pieces of at most 64 KiB.
func (d *deltaOps) copy(off, n int64) *deltaOps {
	for n > 0 {
		k := min(n, 0x10000)
		cmd := byte(0x80)
		var args []byte
		for i := range 4 {
			if c := byte(off >> (8 * i)); c != 0 {
				cmd |= 1 << i
				args = append(args, c)
			}
		}
		if k != 0x10000 { // 0x10000 is written as no size at all
			for i := range 3 {
				if c := byte(k >> (8 * i)); c != 0 {
					cmd |= 0x10 << i
					args = append(args, c)
				}
			}
		}
		d.b = append(append(d.b, cmd), args...)
		off += k
		n -= k
	}
	return d
}

// insert inserts p, in pieces of at most 127 bytes.
func (d *deltaOps) insert(p []byte) *deltaOps {
	for len(p) > 0 {
		k := min(len(p), 127)
		d.b = append(append(d.b, byte(k)), p[:k]...)
		p = p[k:]
	}
	return d
}

// randomBytes returns n bytes that do not compress, the same for the same seed.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// heapDuring returns the bytes the Go heap allocated while f ran (TotalAlloc), which
// bounds what it held at any time.
func heapDuring(f func()) (allocated uint64) {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// peakRSS is the peak resident set size of the process so far, as Linux tells it.
func peakRSS() string {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// deltaBomb is a pack of a 1 KiB blob and a delta on it of a few KB (1 MiB of instructions
// once inflated) whose copies make a blob of size bytes, and the id of that blob.
func deltaBomb(size int64) ([]byte, plumbing.Hash) {
	base := randomBytes(1, 1024)
	ops := newDeltaOps(int64(len(base)), size)
	for n := int64(0); n < size; n += int64(len(base)) {
		ops.copy(0, min(int64(len(base)), size-n))
	}
	pack := rawPack(rawObject{typ: plumbing.BlobObject, data: base},
		rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: ops.b})
	h := plumbing.NewHasher(plumbing.BlobObject, size)
	for n := int64(0); n < size; n += int64(len(base)) {
		h.Write(base[:min(int64(len(base)), size-n)])
	}
	return pack, h.Sum()
}

// storeMeasured stores pack in a new bare repository, which it returns, and checks that the
// Go heap allocated less than 64 MiB meanwhile.
func storeMeasured(t *testing.T, pack []byte) string {
	t.Helper()
	dir := bareRepo(t)
	var err error
	allocated := heapDuring(func() {
		_, err = Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Store allocated %.1f MiB of Go heap; the process's peak RSS so far: %s", float64(allocated)/(1<<20), peakRSS())
	if allocated > 64<<20 {
		t.Errorf("Store allocated %d MiB, want less than 64 MiB", allocated>>20)
	}
	return dir
}

// sameIndexAsGit checks that the index Store wrote in dir is git index-pack's for pack.
func sameIndexAsGit(t *testing.T, dir string, pack []byte) {
	t.Helper()
	idxs, err := filepath.Glob(filepath.Join(dir, "objects", "pack", "*.idx"))
	if err != nil || len(idxs) != 1 {
		t.Fatalf("indexes %v (%v)", idxs, err)
	}
	got, err := os.ReadFile(idxs[0])
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "p.pack"), pack, 0o644); err != nil {
		t.Fatal(err)
	}
	gitIn(t, work, "", "index-pack", "-o", "want.idx", "p.pack")
	want, err := os.ReadFile(filepath.Join(work, "want.idx"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("index differs from git index-pack's (%d and %d bytes)", len(got), len(want))
	}
}

// catFile returns what git cat-file --batch-check says of ids in the repository at dir:
// "<id> <type> <size>" a line.
func catFile(t *testing.T, dir string, ids ...plumbing.Hash) string {
	t.Helper()
	var in strings.Builder
	for _, id := range ids {
		in.WriteString(id.String() + "\n")
	}
	return string(gitIn(t, dir, in.String(), "cat-file", "--batch-check"))
}

// TestStoreDeltaBombBoundedMemory: a pack of a few KB whose delta makes a 512 MiB blob is
// stored with the Go heap allocating far less than the blob (the delta is applied as it
// streams into the hasher, never held), and indexed as git index-pack indexes it. Not
// parallel: TotalAlloc counts every goroutine's allocations.
func TestStoreDeltaBombBoundedMemory(t *testing.T) {
	const size = 512 << 20
	pack, want := deltaBomb(size)
	t.Logf("a pack of %d bytes, with a delta that makes %d MiB", len(pack), size>>20)
	dir := storeMeasured(t, pack)
	if got := catFile(t, dir, want); got != fmt.Sprintf("%s blob %d\n", want, size) {
		t.Errorf("git cat-file --batch-check says %q, want %s blob %d", got, want, size)
	}
	sameIndexAsGit(t, dir, pack)
}

// wholeZlib is a whole object given as its zlib stream, for objects too large to build
// in memory.
type wholeZlib struct {
	typ  plumbing.ObjectType
	size int64
	zlib []byte
}

// zlibPack is rawPack of objects given as their zlib streams.
func zlibPack(objs ...wholeZlib) []byte {
	var b bytes.Buffer
	b.WriteString("PACK")
	b.Write(binary.BigEndian.AppendUint32(nil, 2))
	b.Write(binary.BigEndian.AppendUint32(nil, uint32(len(objs))))
	for _, o := range objs {
		b.Write(appendObjectHeader(nil, o.typ, uint64(o.size)))
		b.Write(o.zlib)
	}
	sum := sha1.Sum(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}

// zerosZlib returns the zlib stream of n MiB of zeros, made fast: one MiB deflated into
// non-final blocks that refer to nothing before them, repeated n times, then a final empty
// block and the Adler-32 of the zeros.
func zerosZlib(n int) []byte {
	var chunk bytes.Buffer
	fw, _ := flate.NewWriter(&chunk, flate.BestSpeed) // a valid level: no error
	_, _ = fw.Write(make([]byte, 1<<20))              // into a bytes.Buffer
	_ = fw.Flush()                                    // ends byte-aligned with an empty stored block
	out := []byte{0x78, 0x01}
	for range n {
		out = append(out, chunk.Bytes()...)
	}
	out = append(out, 0x03, 0x00) // a final block of fixed codes, empty
	// Adler-32 of zeros: the first sum stays 1, the second adds 1 per byte.
	b := uint32((uint64(n) << 20) % 65521)
	return binary.BigEndian.AppendUint32(out, b<<16|1)
}

// TestStoreLargeWholeBlobBoundedMemory: a 256 MiB blob sent whole is hashed as it inflates
// and never held, and indexed as git indexes it. (Large bases of deltas: see
// TestStoreLargeDeltaChain.)
func TestStoreLargeWholeBlobBoundedMemory(t *testing.T) {
	const mib = 256
	pack := zlibPack(wholeZlib{typ: plumbing.BlobObject, size: mib << 20, zlib: zerosZlib(mib)})
	t.Logf("a pack of %d bytes: a blob of %d MiB", len(pack), mib)
	dir := storeMeasured(t, pack)
	if got, want := catFile(t, dir, plumbing.NewHash(zeroBlob256MiB)), zeroBlob256MiB+" blob 268435456\n"; got != want {
		t.Errorf("git cat-file --batch-check says %q, want %q", got, want)
	}
	sameIndexAsGit(t, dir, pack)
}

// zeroBlob256MiB is the id of a blob of 256 MiB of zeros (git hash-object).
const zeroBlob256MiB = "89b65bcc7a1f3f68f45654de865cab3c4b649b71"

// packBuf builds a pack object by object, as rawPack does, telling each one's offset.
type packBuf struct {
	b  bytes.Buffer
	n  int
	zw *zlib.Writer // reset for each object: a new one takes long under the race detector
}

func newPackBuf() *packBuf {
	p := &packBuf{}
	p.b.WriteString("PACK\x00\x00\x00\x02\x00\x00\x00\x00")
	p.zw = zlib.NewWriter(&p.b)
	return p
}

// add appends o and returns its offset.
func (p *packBuf) add(o rawObject) int64 {
	off := int64(p.b.Len())
	head := appendObjectHeader(nil, o.typ, uint64(len(o.data)))
	switch o.typ {
	case plumbing.OFSDeltaObject:
		head = appendOfs(head, off-o.ofsTo)
	case plumbing.REFDeltaObject:
		head = append(head, o.ref[:]...)
	}
	p.b.Write(head)
	p.zw.Reset(&p.b)
	// Into a bytes.Buffer: neither fails.
	_, _ = p.zw.Write(o.data)
	_ = p.zw.Close()
	p.n++
	return off
}

// pack returns the pack, its object count and checksum set.
func (p *packBuf) pack() []byte {
	b := bytes.Clone(p.b.Bytes())
	b[8], b[9], b[10], b[11] = byte(p.n>>24), byte(p.n>>16), byte(p.n>>8), byte(p.n)
	sum := sha1.Sum(b)
	return append(b, sum[:]...)
}

// piece is one instruction of a delta: a copy of n bytes from off in the base, or an insert.
type piece struct {
	off, n int64
	insert string
}

// makeDelta returns the instructions of a delta on base made of pieces, and its result.
func makeDelta(base []byte, pieces ...piece) (ops, result []byte) {
	for _, p := range pieces {
		if p.insert != "" {
			result = append(result, p.insert...)
		} else {
			result = append(result, base[p.off:p.off+p.n]...)
		}
	}
	d := newDeltaOps(int64(len(base)), int64(len(result)))
	for _, p := range pieces {
		if p.insert != "" {
			d.insert([]byte(p.insert))
		} else {
			d.copy(p.off, p.n)
		}
	}
	return d.b, result
}

// TestStoreLargeDeltaChain: a chain of large deltas, OFS and REF, with copies that go back
// and forth in their bases, a small delta on a large one and a delta on that, is stored as
// git index-pack stores it (its large bases kept in files, the small one held), and the ids
// are those of the contents.
func TestStoreLargeDeltaChain(t *testing.T) {
	t.Parallel()
	const M = 1 << 20
	root := randomBytes(2, 3*M/2)
	d1, c1 := makeDelta(root, piece{off: M, n: M / 2}, piece{insert: "one"}, piece{off: 0, n: M}, piece{off: M / 2, n: M})
	d2, c2 := makeDelta(c1, piece{insert: "two"}, piece{off: M, n: int64(len(c1)) - M}, piece{off: 0, n: M})
	n2 := int64(len(c2))
	d3, c3 := makeDelta(c2, piece{off: 3 * n2 / 4, n: n2 - 3*n2/4}, piece{off: n2 / 2, n: n2/4 + 1}, piece{off: 0, n: n2 / 2}, piece{insert: "three"})
	n3 := int64(len(c3))
	d4, c4 := makeDelta(c3, piece{off: n3 - 10000, n: 10000}, piece{insert: "four"})
	d5, c5 := makeDelta(c4, piece{off: 0, n: 5000}, piece{insert: "five"})
	d6, c6 := makeDelta(c3, piece{off: 0, n: 6 * M / 5}, piece{insert: "six"})
	d7, c7 := makeDelta(root, piece{off: 0, n: int64(len(root))}, piece{insert: "seven"})
	blob := func(b []byte) plumbing.Hash { return plumbing.ComputeHash(plumbing.BlobObject, b) }

	p := newPackBuf()
	at := map[string]int64{}
	at["root"] = p.add(rawObject{typ: plumbing.BlobObject, data: root})
	at["1"] = p.add(rawObject{typ: plumbing.OFSDeltaObject, ofsTo: at["root"], data: d1})
	at["2"] = p.add(rawObject{typ: plumbing.REFDeltaObject, ref: blob(c1), data: d2})
	at["3"] = p.add(rawObject{typ: plumbing.OFSDeltaObject, ofsTo: at["2"], data: d3})
	at["4"] = p.add(rawObject{typ: plumbing.OFSDeltaObject, ofsTo: at["3"], data: d4})
	p.add(rawObject{typ: plumbing.OFSDeltaObject, ofsTo: at["4"], data: d5})
	p.add(rawObject{typ: plumbing.OFSDeltaObject, ofsTo: at["3"], data: d6})
	p.add(rawObject{typ: plumbing.REFDeltaObject, ref: blob(root), data: d7})
	pack := p.pack()

	dir := bareRepo(t)
	if n, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil || n != 8 {
		t.Fatalf("Store = %d, %v; want 8 objects", n, err)
	}
	var ids []plumbing.Hash
	var want strings.Builder
	for _, c := range [][]byte{root, c1, c2, c3, c4, c5, c6, c7} {
		ids = append(ids, blob(c))
		fmt.Fprintf(&want, "%s blob %d\n", blob(c), len(c))
	}
	if got := catFile(t, dir, ids...); got != want.String() {
		t.Errorf("git cat-file --batch-check says\n%s\nwant\n%s", got, want.String())
	}
	sameIndexAsGit(t, dir, pack)
	gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
}

// bigTree is a tree of n files, f00000 and on, more than a MiB for 40,000.
func bigTree(n int) []byte {
	var b []byte
	for i := range n {
		b = fmt.Appendf(b, "100644 f%05d\x00", i)
		b = append(b, randomBytes(uint64(i), 20)...)
	}
	return b
}

// TestStoreLargeTreeDelta: a tree over the streaming threshold made by a delta is checked
// as it streams: a good one is stored as git stores it, one with a .git entry added at its
// end is refused as git's fsck refuses it, and nothing of its pack is left.
func TestStoreLargeTreeDelta(t *testing.T) {
	t.Parallel()
	base := bigTree(40000)
	id := randomBytes(7, 20)
	good, goodTree := makeDelta(base, piece{off: 0, n: int64(len(base))}, piece{insert: "100644 zz\x00" + string(id)})
	bad, badTree := makeDelta(base, piece{off: 0, n: int64(len(base))}, piece{insert: "40000 .git\x00" + string(id)})
	if len(goodTree) <= memBase {
		t.Fatalf("the tree is %d bytes, want one that streams", len(goodTree))
	}
	treePack := func(delta []byte) []byte {
		return rawPack(rawObject{typ: plumbing.TreeObject, data: base}, rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: delta})
	}

	pack := treePack(good)
	dir := bareRepo(t)
	if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
		t.Fatal(err)
	}
	goodID := plumbing.ComputeHash(plumbing.TreeObject, goodTree)
	if got, want := catFile(t, dir, goodID), fmt.Sprintf("%s tree %d\n", goodID, len(goodTree)); got != want {
		t.Errorf("git cat-file --batch-check says %q, want %q", got, want)
	}
	sameIndexAsGit(t, dir, pack)

	dir = bareRepo(t)
	_, err := Store(dir, bufio.NewReader(bytes.NewReader(treePack(bad))), 0, func() {})
	var te *TreeError
	if !errors.As(err, &te) || te.ID != "hasDotgit" || te.Tree != plumbing.ComputeHash(plumbing.TreeObject, badTree) {
		t.Fatalf("Store = %v, want a hasDotgit TreeError of tree %s", err, plumbing.ComputeHash(plumbing.TreeObject, badTree))
	}
	if entries, err := os.ReadDir(filepath.Join(dir, "objects", "pack")); err != nil || len(entries) != 0 {
		t.Errorf("objects/pack holds %v (%v)", entries, err)
	}
}

// chainPack is a pack of a small blob and a chain of n deltas, each on the one before, to
// which it adds a line.
func chainPack(n int) []byte {
	content := []byte("x\n")
	p := newPackBuf()
	prev := p.add(rawObject{typ: plumbing.BlobObject, data: content})
	for range n {
		var ops []byte
		ops, content = makeDelta(content, piece{off: 0, n: int64(len(content))}, piece{insert: "y\n"})
		prev = p.add(rawObject{typ: plumbing.OFSDeltaObject, ofsTo: prev, data: ops})
	}
	return p.pack()
}

// TestStoreDeltaChainDepth: a chain of maxDeltaChain deltas (git's cap) is stored as git
// stores it; one more is a bad pack.
func TestStoreDeltaChainDepth(t *testing.T) {
	t.Parallel()
	pack := chainPack(maxDeltaChain)
	dir := bareRepo(t)
	if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
		t.Fatal(err)
	}
	sameIndexAsGit(t, dir, pack)

	_, err := Store(bareRepo(t), bufio.NewReader(bytes.NewReader(chainPack(maxDeltaChain+1))), 0, func() {})
	if !errors.Is(err, ErrBad) || !strings.Contains(err.Error(), "delta chain longer than 4095") {
		t.Errorf("Store = %v, want a bad pack for its chain", err)
	}
}

// TestResolveStreamingWork: a delta whose copies go backwards in a large base is stored,
// the base kept in a file; with no room for files, where each copy backwards reads the base
// again from its start, it is refused once it has read 16 times the sizes at stake, and the
// same copies in order are taken.
func TestResolveStreamingWork(t *testing.T) {
	t.Parallel()
	const size, copies = 2 << 20, 200
	base := make([]byte, size)
	base[size-1] = 1
	var back, forth []piece
	for i := range copies {
		back = append(back, piece{off: size - 1024, n: 1024})
		forth = append(forth, piece{off: int64(i) * 10240, n: 1024})
	}
	noFiles := ingestLimits
	noFiles.spill = 0
	for name, pieces := range map[string][]piece{"backwards": back, "in order": forth} {
		ops, _ := makeDelta(base, pieces...)
		pack := rawPack(rawObject{typ: plumbing.BlobObject, data: base}, rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: ops})
		if _, err := Store(bareRepo(t), bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
			t.Errorf("%s: Store = %v", name, err)
		}
		scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
		if err != nil {
			t.Fatal(err)
		}
		err = resolveDeltasWithin(bytes.NewReader(pack), scan, noFiles, t.TempDir())
		switch {
		case name == "in order" && err != nil:
			t.Errorf("%s, streamed: %v", name, err)
		case name == "backwards" && (!errors.Is(err, ErrBad) || !strings.Contains(err.Error(), "16 times their size")):
			t.Errorf("%s, streamed: %v, want a bad pack for the work it takes", name, err)
		}
	}
}

// TestResolveNestedStreams: no more deltas than resolveLimits.nested stream through one
// another.
func TestResolveNestedStreams(t *testing.T) {
	t.Parallel()
	lim := resolveLimits{large: 0, held: 0, spill: 0, nested: 3, work: 1 << 20}
	for n, ok := range map[int]bool{2: true, 3: false} {
		pack := chainPack(n)
		scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
		if err != nil {
			t.Fatal(err)
		}
		err = resolveDeltasWithin(bytes.NewReader(pack), scan, lim, t.TempDir())
		if ok != (err == nil) || err != nil && (!errors.Is(err, ErrBad) || !strings.Contains(err.Error(), "more than 3 large objects")) {
			t.Errorf("a chain of %d: %v", n, err)
		}
	}
}

// TestResolveStreamingMatchesMemory: deltas resolve to the same types and ids as in memory
// when every base is kept in a file, when bases are held in a tight budget (kept in files
// past it), and when every object streams again through its chain: on packs of chains,
// with OFS and with REF deltas. (Streamed again on short chains only: with copies backwards
// at every level, a long one would take very long.) No file is left behind.
func TestResolveStreamingMatchesMemory(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	for _, args := range [][]string{
		{"pack-objects", "--all", "--stdout", "-q", "--window=50", "--depth=50", "--delta-base-offset"},
		{"pack-objects", "--all", "--stdout", "-q", "--window=50", "--depth=50"},
		{"pack-objects", "--all", "--stdout", "-q", "--window=10", "--depth=2", "--delta-base-offset"},
	} {
		pack := gitIn(t, src, "", args...)
		resolve := func(lim resolveLimits) []packObject {
			scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := resolveDeltasWithin(bytes.NewReader(pack), scan, lim, dir); err != nil {
				t.Fatalf("%+v: %v", lim, err)
			}
			if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
				t.Errorf("%+v: left %v (%v)", lim, entries, err)
			}
			return scan.objects
		}
		want := resolve(ingestLimits)
		limits := []resolveLimits{
			{large: 0, held: 0, spill: 1 << 30, files: 4096, nested: 128, work: 16},
			{large: 256, held: 4096, spill: 1 << 30, files: 4096, nested: 128, work: 16},
		}
		if args[len(args)-2] == "--depth=2" { // streaming again costs exponentially more with depth
			limits = append(limits, resolveLimits{large: 0, held: 0, spill: 0, nested: 128, work: 1 << 20},
				resolveLimits{large: 0, held: 0, spill: 1 << 30, files: 2, nested: 128, work: 1 << 20})
		}
		for _, lim := range limits {
			got := resolve(lim)
			for i := range want {
				if got[i].typ != want[i].typ || got[i].hash != want[i].hash {
					t.Fatalf("%+v: object at %d resolves to %s %s, want %s %s", lim, want[i].offset, got[i].typ, got[i].hash, want[i].typ, want[i].hash)
				}
			}
		}
	}
}

// TestStoreLargeFileHistory: the history of a file over the streaming threshold, edited
// and with blocks of it moved in each version, as git packs it (chains whose deltas copy
// back and forth), is stored as git index-pack stores it: its large bases are kept in files,
// where streaming each again through its chain would read it exponentially many times.
// Not parallel: it measures the heap as TestStoreDeltaBombBoundedMemory does.
func TestStoreLargeFileHistory(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src.git")
	gitIn(t, "", "", "init", "-q", "--bare", src)
	r := rand.New(rand.NewPCG(3, 4))
	lines := make([]string, 16000)
	for i := range lines {
		lines[i] = fmt.Sprintf(`{"id": %d, "name": "user %d", "tags": ["alpha", "beta"], "score": %d}`, i, r.IntN(1000), r.IntN(100000))
	}
	var s strings.Builder
	for c := 1; c <= 15; c++ {
		for range 20 {
			i := r.IntN(len(lines))
			lines[i] = fmt.Sprintf(`{"id": %d, "edited": %d}`, i, c)
		}
		a := r.IntN(len(lines) - 500)
		block := slices.Clone(lines[a : a+500])
		lines = slices.Delete(lines, a, a+500)
		lines = slices.Insert(lines, r.IntN(len(lines)), block...)
		content := strings.Join(lines, "\n")
		fmt.Fprintf(&s, "commit refs/heads/main\ncommitter T <t@example.com> %d +0000\ndata 3\nc%02d\n", 1700000000+c, c)
		fmt.Fprintf(&s, "M 100644 inline data.json\ndata %d\n%s\n", len(content), content)
	}
	gitIn(t, src, s.String(), "fast-import", "--quiet")
	if size := len(strings.Join(lines, "\n")); size <= memBase {
		t.Fatalf("the file is %d bytes, want one that streams", size)
	}
	pack := gitIn(t, src, "", "pack-objects", "--all", "--stdout", "-q", "--window=50", "--depth=50", "--delta-base-offset")

	dir := storeMeasured(t, pack)
	sameIndexAsGit(t, dir, pack)
}

// TestResolveKeepFails: a large base that cannot be kept in a file fails the pack as the
// server's fault, not the client's.
func TestResolveKeepFails(t *testing.T) {
	t.Parallel()
	base := make([]byte, 2<<20)
	ops, _ := makeDelta(base, piece{off: 1 << 20, n: 1 << 20}, piece{insert: "tail"})
	pack := rawPack(rawObject{typ: plumbing.BlobObject, data: base}, rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: ops})
	scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
	if err != nil {
		t.Fatal(err)
	}
	err = resolveDeltasWithin(bytes.NewReader(pack), scan, ingestLimits, filepath.Join(t.TempDir(), "none"))
	if err == nil || errors.Is(err, ErrBad) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resolve = %v, want the server's error", err)
	}
}
