package releaser

import (
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/adler32"
	"hash/crc32"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// fsRepo is a repository in go-git's filesystem storage, in a temp dir, opened as the
// git server opens it: packs kept open, a small object cache, and blobs above
// largeObject streamed by their readers rather than read whole.
type fsRepo struct {
	t   *testing.T
	st  *filesystem.Storage
	dir string
}

// largeObject is the LargeObjectThreshold the tests open their stores with, as the git
// server does.
const largeObject = 1 << 20

func newFSRepo(t *testing.T) *fsRepo {
	t.Helper()
	dir := t.TempDir()
	g := &fsRepo{t: t, dir: dir}
	g.open()
	return g
}

// open (re)opens the storage, e.g. after objects were added behind its back.
func (g *fsRepo) open() {
	g.t.Helper()
	if g.st != nil {
		g.st.Close() // read only so far: closing loses nothing
	}
	g.st = filesystem.NewStorageWithOptions(osfs.New(g.dir), cache.NewObjectLRU(8*cache.MiByte),
		filesystem.Options{KeepDescriptors: true, LargeObjectThreshold: largeObject})
	g.t.Cleanup(func() { g.st.Close() }) // a second Close of a closed storage is harmless
}

// zeros is an endless stream of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// blobHash is the id of a blob of size bytes read from r.
func blobHash(t *testing.T, size int64, r io.Reader) plumbing.Hash {
	t.Helper()
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", size)
	if _, err := io.CopyN(h, r, size); err != nil {
		t.Fatal(err)
	}
	return plumbing.Hash(h.Sum(nil))
}

// zlibZeros returns a zlib stream of prefix followed by n zero bytes, made by hand, in
// no time: a deflate block of fixed codes, the prefix and one zero as literals, then
// matches of 258 bytes at distance 1 (13 bits each), the rest as literals. zlib itself
// takes a minute for 256 MiB under the race detector.
func zlibZeros(prefix []byte, n int64) []byte {
	w := &bitWriter{buf: []byte{0x78, 0x01}}
	w.bits(1, 1) // BFINAL
	w.bits(1, 2) // BTYPE 01: fixed codes
	lit := func(b byte) {
		if b < 144 {
			w.code(0x30+uint32(b), 8)
		} else {
			w.code(0x190+uint32(b-144), 9)
		}
	}
	for _, b := range prefix {
		lit(b)
	}
	left := n
	if left > 0 {
		lit(0)
		left--
	}
	for ; left >= 258; left -= 258 {
		w.code(0xc5, 8) // length code 285: 258 bytes
		w.code(0, 5)    // distance code 0: 1 byte back
	}
	for ; left > 0; left-- {
		lit(0)
	}
	w.code(0, 7) // end of block
	w.bits(0, (8-w.n%8)%8)
	sum := adler32.Checksum(prefix)
	a, b := int64(sum&0xffff), int64(sum>>16)
	b = (b + n%65521*a) % 65521 // zeros add nothing to a, and a to b each
	return binary.BigEndian.AppendUint32(w.buf, uint32(b<<16|a))
}

// bitWriter writes a deflate stream: bits from the least significant, Huffman codes from
// their most significant bit.
type bitWriter struct {
	buf []byte
	acc uint64
	n   uint
}

func (w *bitWriter) bits(v uint64, n uint) {
	w.acc |= v << w.n
	for w.n += n; w.n >= 8; w.n -= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
	}
}

func (w *bitWriter) code(c uint32, n uint) {
	w.bits(uint64(bits.Reverse32(c)>>(32-n)), n)
}

// packZeroBlob adds to the store a pack, as a push brings one, holding one blob of size
// zero bytes, and its index: a 256 MiB blob packs into less than 2 MB. Both files are
// written by hand (go-git's pack writer inflates the blob to index it, which takes long
// under the race detector); the test holds no blob in memory.
func (g *fsRepo) packZeroBlob(size int64) plumbing.Hash {
	g.t.Helper()
	id := blobHash(g.t, size, zeros{})
	pack := []byte("PACK\x00\x00\x00\x02\x00\x00\x00\x01")
	// Object header: type 3 (blob), then the size in 4 bits and 7-bit groups.
	b := byte(3<<4) | byte(size&0x0f)
	for n := size >> 4; ; n >>= 7 {
		if n == 0 {
			pack = append(pack, b)
			break
		}
		pack = append(pack, b|0x80)
		b = byte(n & 0x7f)
	}
	pack = append(pack, zlibZeros(nil, size)...)
	object := pack[12:]
	packSum := sha1.Sum(pack)
	pack = append(pack, packSum[:]...)

	// Index, version 2, of the one object at offset 12.
	idx := []byte("\xfftOc\x00\x00\x00\x02")
	for i := range 256 {
		n := uint32(0)
		if i >= int(id[0]) {
			n = 1
		}
		idx = binary.BigEndian.AppendUint32(idx, n)
	}
	idx = append(idx, id[:]...)
	idx = binary.BigEndian.AppendUint32(idx, crc32.ChecksumIEEE(object))
	idx = binary.BigEndian.AppendUint32(idx, 12)
	idx = append(idx, packSum[:]...)
	idxSum := sha1.Sum(idx)
	idx = append(idx, idxSum[:]...)

	base := filepath.Join(g.dir, "objects", "pack", "pack-"+hex.EncodeToString(packSum[:]))
	must(g.t, os.MkdirAll(filepath.Dir(base), 0o755))
	must(g.t, os.WriteFile(base+".pack", pack, 0o444))
	must(g.t, os.WriteFile(base+".idx", idx, 0o444))
	g.open()
	return id
}

// looseZeroBlob adds a loose blob of size zero bytes to the store.
func (g *fsRepo) looseZeroBlob(size int64) plumbing.Hash {
	g.t.Helper()
	h := blobHash(g.t, size, zeros{})
	p := filepath.Join(g.dir, "objects", h.String()[:2], h.String()[2:])
	must(g.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(g.t, os.WriteFile(p, zlibZeros(fmt.Appendf(nil, "blob %d\x00", size), size), 0o444))
	return h
}

// store adds obj, encoded by encode, to the store.
func (g *fsRepo) store(encode func(plumbing.EncodedObject) error) plumbing.Hash {
	g.t.Helper()
	obj := g.st.NewEncodedObject()
	must(g.t, encode(obj))
	h, err := g.st.SetEncodedObject(obj)
	if err != nil {
		g.t.Fatal(err)
	}
	return h
}

func (g *fsRepo) blob(content string) plumbing.Hash {
	return g.store(func(o plumbing.EncodedObject) error {
		o.SetType(plumbing.BlobObject)
		w, err := o.Writer()
		if err != nil {
			return err
		}
		if _, err := io.WriteString(w, content); err != nil {
			return err
		}
		return w.Close()
	})
}

// commitOf stores a commit of a tree of the given entries, in git's order.
func (g *fsRepo) commitOf(entries ...object.TreeEntry) string {
	g.t.Helper()
	tree := g.store((&object.Tree{Entries: sortedEntries(entries)}).Encode)
	sig := object.Signature{Name: "t", Email: "t@example.com"}
	c := &object.Commit{Author: sig, Committer: sig, Message: "big\n", TreeHash: tree}
	return g.store(c.Encode).String()
}

func sortedEntries(entries []object.TreeEntry) []object.TreeEntry {
	sorted := append([]object.TreeEntry(nil), entries...)
	for i := range sorted {
		for j := i + 1; j < len(sorted); j++ {
			if treeKey(sorted[j]) < treeKey(sorted[i]) {
				sorted[i], sorted[j] = sorted[j], sorted[i]
			}
		}
	}
	return sorted
}

// treeKey is what git sorts tree entries by: the name, with a "/" after a directory's.
func treeKey(e object.TreeEntry) string {
	if e.Mode == filemode.Dir {
		return e.Name + "/"
	}
	return e.Name
}

// fileHash is the blob id of the file at path, read from disk.
func fileHash(t *testing.T, path string) (plumbing.Hash, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // read only: closing loses nothing
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return blobHash(t, fi.Size(), f), fi.Size()
}

// allocatedDuring returns how many bytes of heap fn allocated in all (TotalAlloc): an upper
// bound of how much fn made the heap grow at any moment. Not for parallel tests: it
// measures the whole process.
func allocatedDuring(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestMaterializeBigBlob: a 256 MiB blob is written with the memory of a few buffers, not
// of the blob, whether it came packed (a zip bomb: under 2 MB of pack here, 260 KB from
// git) or loose.
func TestMaterializeBigBlob(t *testing.T) {
	const size = 256 << 20
	for _, tt := range []struct {
		name string
		add  func(g *fsRepo, size int64) plumbing.Hash
	}{
		{"packed", (*fsRepo).packZeroBlob},
		{"loose", (*fsRepo).looseZeroBlob},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newFSRepo(t)
			big := tt.add(g, size)
			sha := g.commitOf(
				object.TreeEntry{Name: "big.bin", Mode: filemode.Regular, Hash: big},
				object.TreeEntry{Name: "small.txt", Mode: filemode.Regular, Hash: g.blob("small\n")},
			)
			var stats Stats
			var err error
			allocated := allocatedDuring(func() {
				stats, err = e.r.Materialize(t.Context(), g.st, sha, nil)
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("Materialize allocated %d KiB", allocated>>10)
			if allocated > 64<<20 {
				t.Errorf("Materialize allocated %d bytes for a blob of %d: want it streamed", allocated, size)
			}
			if stats.Files != 2 || stats.Bytes != size+int64(len("small\n")) {
				t.Errorf("stats = %+v", stats)
			}
			got, n := fileHash(t, filepath.Join(e.r.Dir(sha), "big.bin"))
			if n != size || got != big {
				t.Errorf("big.bin: %d bytes, blob %s; want %d bytes, blob %s", n, got, size, big)
			}
			if b, err := os.ReadFile(filepath.Join(e.r.Dir(sha), "small.txt")); err != nil || !bytes.Equal(b, []byte("small\n")) {
				t.Errorf("small.txt: %q, %v", b, err)
			}
		})
	}
}
