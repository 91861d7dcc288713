package pack

// Fuzz targets for the parsers of a pushed pack: the object header, delta application, the
// tree checker, and a whole small pack through Store and Discard. Their seed corpora are in
// testdata/fuzz; CI runs each for a few seconds (gitserver/FUZZ_TARGETS.txt).

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// FuzzReadObjectHeader: a header read from any bytes is a valid type with a size in
// bounds and, for an OFS delta, a base inside the pack before it; it encodes back to a
// header that reads the same; and any error is the client's (ErrBad).
func FuzzReadObjectHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, pos uint32) {
		at := int64(pos)
		r := bytes.NewReader(data)
		h, err := readObjectHeader(r, at)
		if err != nil {
			if !errors.Is(err, ErrBad) {
				t.Fatalf("error %v does not wrap ErrBad", err)
			}
			return
		}
		if consumed := len(data) - r.Len(); consumed != h.hdrLen {
			t.Fatalf("read %d bytes, header says %d", consumed, h.hdrLen)
		}
		if h.size > maxObjectSize {
			t.Fatalf("size %d", h.size)
		}
		enc := appendObjectHeader(nil, h.typ, h.size)
		switch h.typ {
		case plumbing.CommitObject, plumbing.TreeObject, plumbing.BlobObject, plumbing.TagObject:
		case plumbing.OFSDeltaObject:
			if h.base < 12 || h.base >= at {
				t.Fatalf("OFS delta at %d based at %d", at, h.base)
			}
			enc = appendOfs(enc, at-h.base)
		case plumbing.REFDeltaObject:
			enc = append(enc, h.ref[:]...)
		default:
			t.Fatalf("type %v", h.typ)
		}
		again, err := readObjectHeader(bytes.NewReader(enc), at)
		if err != nil || again.typ != h.typ || again.size != h.size || again.base != h.base || again.ref != h.ref {
			t.Fatalf("re-encoded %x reads %+v, %v; want %+v", enc, again, err, h)
		}
	})
}

// FuzzPatchDelta: go-git's PatchDelta, which resolveDeltas applies, agrees with git's own
// patch_delta (patch-delta.c, rewritten below) on every base and delta, except where go-git
// refuses an empty base or a delta shorter than 4 bytes, which git never sends.
func FuzzPatchDelta(f *testing.F) {
	f.Fuzz(func(t *testing.T, base, delta []byte) {
		want, wantOK, huge := gitPatchDelta(base, delta)
		if len(base) == 0 || len(delta) < 4 || huge {
			return
		}
		got, err := packfile.PatchDelta(base, delta)
		if (err == nil) != wantOK || (wantOK && !bytes.Equal(got, want)) {
			t.Fatalf("go-git: %d bytes, %v; git: %d bytes, ok %v", len(got), err, len(want), wantOK)
		}
	})
}

// gitPatchDelta is git's patch_delta: the delta's two sizes (LEB128, the last one cut short
// by the end of the delta), then copy instructions (from the base) and insert instructions
// (from the delta) until both the delta and the target size are used up exactly. huge says
// the target is too big for a test to build (the result is then meaningless).
func gitPatchDelta(src, delta []byte) (dst []byte, ok, huge bool) {
	hdr := func() (uint64, bool) {
		var size uint64
		for shift := uint(0); len(delta) > 0; shift += 7 {
			if shift > 56 {
				return 0, false // beyond 64 bits (go-git refuses it; for git it is undefined)
			}
			c := delta[0]
			delta = delta[1:]
			size |= uint64(c&0x7f) << shift
			if c&0x80 == 0 {
				break
			}
		}
		return size, true
	}
	srcSize, ok := hdr()
	if !ok || srcSize != uint64(len(src)) {
		return nil, false, false
	}
	size, ok := hdr()
	if !ok {
		return nil, false, false
	}
	if size > 1<<24 {
		return nil, false, true
	}
	dst = make([]byte, 0, size)
	for len(delta) > 0 {
		cmd := delta[0]
		delta = delta[1:]
		switch {
		case cmd&0x80 != 0:
			var off, n uint64
			for i, shift := range []uint{0, 8, 16, 24} {
				if cmd&(1<<i) != 0 {
					if len(delta) == 0 {
						return nil, false, false
					}
					off |= uint64(delta[0]) << shift
					delta = delta[1:]
				}
			}
			for i, shift := range []uint{0, 8, 16} {
				if cmd&(0x10<<i) != 0 {
					if len(delta) == 0 {
						return nil, false, false
					}
					n |= uint64(delta[0]) << shift
					delta = delta[1:]
				}
			}
			if n == 0 {
				n = 0x10000
			}
			if off+n > srcSize || n > size-uint64(len(dst)) {
				return nil, false, false
			}
			dst = append(dst, src[off:off+n]...)
		case cmd != 0:
			n := uint64(cmd)
			if n > size-uint64(len(dst)) || n > uint64(len(delta)) {
				return nil, false, false
			}
			dst = append(dst, delta[:n]...)
			delta = delta[n:]
		default:
			return nil, false, false
		}
	}
	return dst, uint64(len(dst)) == size, false
}

// FuzzTreeChecker: the checker reads a tree the same in pieces as at once, and on trees
// whose every entry is fine alone, it finds a duplicate or a disorder exactly where a
// plain reading of the whole tree (a map of the names, every pair compared) does.
func FuzzTreeChecker(f *testing.F) {
	f.Fuzz(func(t *testing.T, content []byte, chunk uint8) {
		whole := checkTree(content, 0)
		if pieces := checkTree(content, int(chunk)); (whole == nil) != (pieces == nil) ||
			whole != nil && *whole != *pieces {
			t.Fatalf("at once: %v; in pieces of %d: %v", whole, chunk, pieces)
		}
		entries, ok := parseTree(content)
		if !ok {
			if whole == nil {
				t.Fatal("accepted a tree that does not parse")
			}
			return
		}
		for _, e := range entries {
			if why, _ := entryProblem([]byte(e.name), e.mode); why != "" || len(e.name) > maxEntryName {
				if whole == nil {
					t.Fatalf("accepted entry %q (%s)", e.name, why)
				}
				return
			}
		}
		plainOK := true
		seen := map[string]bool{}
		for i, e := range entries {
			if seen[e.name] || i > 0 && !(sortKey(entries[i-1]) < sortKey(e)) {
				plainOK = false
			}
			seen[e.name] = true
		}
		if plainOK != (whole == nil) {
			t.Fatalf("checker: %v; a plain reading finds the tree fine: %v", whole, plainOK)
		}
	})
}

type parsedEntry struct {
	mode uint32
	name string
}

// sortKey is an entry's name as git sorts it: a directory's with a '/' after it.
func sortKey(e parsedEntry) string {
	if e.mode&modeTypeMask == modeDir {
		return e.name + "/"
	}
	return e.name
}

// parseTree reads a whole tree plainly: "<octal mode> <name>\x00<20 bytes>" again and again.
func parseTree(content []byte) ([]parsedEntry, bool) {
	var out []parsedEntry
	for len(content) > 0 {
		sp := bytes.IndexByte(content, ' ')
		if sp <= 0 {
			return nil, false
		}
		var mode uint32
		for _, c := range content[:sp] {
			if c < '0' || c > '7' {
				return nil, false
			}
			mode = mode<<3 + uint32(c-'0')
		}
		rest := content[sp+1:]
		nul := bytes.IndexByte(rest, 0)
		if nul < 0 || len(rest) < nul+1+20 {
			return nil, false
		}
		out = append(out, parsedEntry{mode, string(rest[:nul])})
		content = rest[nul+1+20:]
	}
	return out, true
}

// FuzzStore: a small pack of any bytes is stored whole and readable, or refused as the
// client's fault (ErrBad) with nothing left behind; Discard, which reads the same pack
// without its deltas, refuses no pack that Store takes, and counts its objects the same.
func FuzzStore(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		n, err := Store(dir, bufio.NewReader(bytes.NewReader(data)), 0, func() {})
		dn, derr := Discard(bufio.NewReader(bytes.NewReader(data)))
		packDir := filepath.Join(dir, "objects", "pack")
		if err != nil {
			if !errors.Is(err, ErrBad) {
				t.Fatalf("Store: %v does not wrap ErrBad", err)
			}
			if derr != nil && !errors.Is(derr, ErrBad) {
				t.Fatalf("Discard: %v does not wrap ErrBad", derr)
			}
			if entries, _ := os.ReadDir(packDir); len(entries) != 0 {
				t.Fatalf("a refused pack left %v", entries)
			}
			return
		}
		if derr != nil || dn != n {
			t.Fatalf("Store took %d objects, Discard says %d, %v", n, dn, derr)
		}
		if n == 0 {
			return
		}
		// Every object the index lists reads back through go-git with the id it is listed by.
		idxs, _ := filepath.Glob(filepath.Join(packDir, "*.idx"))
		if len(idxs) != 1 {
			t.Fatalf("indexes %v", idxs)
		}
		raw, err := os.ReadFile(idxs[0])
		if err != nil {
			t.Fatal(err)
		}
		idx := idxfile.NewMemoryIndex()
		if err := idxfile.NewDecoder(bytes.NewReader(raw)).Decode(idx); err != nil {
			t.Fatalf("index: %v", err)
		}
		st := filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault())
		defer st.Close()
		entries, err := idx.Entries()
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		for {
			e, err := entries.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			count++
			obj, err := st.EncodedObject(plumbing.AnyObject, e.Hash)
			if err != nil {
				t.Fatalf("object %s: %v", e.Hash, err)
			}
			rd, err := obj.Reader()
			if err != nil {
				t.Fatal(err)
			}
			content, err := io.ReadAll(rd)
			_ = rd.Close() // read whole already
			if err != nil {
				t.Fatal(err)
			}
			if h := plumbing.ComputeHash(obj.Type(), content); h != e.Hash {
				t.Fatalf("object listed as %s reads as %s %s", e.Hash, obj.Type(), h)
			}
		}
		if count != n {
			t.Fatalf("index lists %d objects, Store says %d", count, n)
		}
	})
}

// seedPacks are small packs of every kind, for the seed corpus and the tests.
func seedPacks() map[string][]byte {
	blob := []byte("hello, world\n")
	id := plumbing.ComputeHash(plumbing.BlobObject, blob)
	tree := rawTree(id, treeEntry{"100644", "a.txt"}, treeEntry{"40000", "dir"})
	commit := []byte("tree " + plumbing.ComputeHash(plumbing.TreeObject, tree).String() + "\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nm\n")
	delta := []byte{byte(len(blob)), byte(len(blob) + 2), 0x90, byte(len(blob)), 2, 'h', 'i'}
	blobLen := int64(len(rawPack(rawObject{typ: plumbing.BlobObject, data: blob})) - 20)
	return map[string][]byte{
		"empty":   rawPack(),
		"blob":    rawPack(rawObject{typ: plumbing.BlobObject, data: blob}),
		"commit":  rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.TreeObject, data: tree}, rawObject{typ: plumbing.CommitObject, data: commit}),
		"ofs":     rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: delta}),
		"ref":     rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.REFDeltaObject, ref: id, data: delta}),
		"badtree": rawPack(rawObject{typ: plumbing.TreeObject, data: rawTree(id, treeEntry{"40000", ".git"})}),
		"chain": rawPack(rawObject{typ: plumbing.BlobObject, data: blob}, rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: delta},
			rawObject{typ: plumbing.OFSDeltaObject, ofsTo: blobLen, data: []byte{byte(len(blob) + 2), 3, 0x90, 3}}),
		"truncated": rawPack(rawObject{typ: plumbing.BlobObject, data: blob})[:20],
		"garbage":   []byte(strings.Repeat("PACK", 8)),
	}
}

// TestSeedPacks: the seed packs are what their names say: good ones store, the others are
// refused as the client's fault.
func TestSeedPacks(t *testing.T) {
	t.Parallel()
	bad := map[string]bool{"badtree": true, "truncated": true, "garbage": true}
	for name, p := range seedPacks() {
		_, err := Store(t.TempDir(), bufio.NewReader(bytes.NewReader(p)), 0, func() {})
		if bad[name] != (err != nil) || err != nil && !errors.Is(err, ErrBad) {
			t.Errorf("%s: Store = %v", name, err)
		}
	}
}
