package pack

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"

	"github.com/slipway/slipway/internal/atomicfile"
)

// MaxPacks is how many packs a repository may hold before Consolidate merges them. Every
// push adds one, and go-git looks an object up in each pack's index in turn and keeps every
// pack of an open repository open: a checkout after a thousand pushes would search a
// thousand indexes per file.
const MaxPacks = 8

// packFile is one pack of a repository: base + ".pack" and base + ".idx".
type packFile struct {
	base string
	size int64
}

// Stats is what Consolidate did; zero if it merged nothing.
type Stats struct {
	Packs   int // packs merged
	Objects int // objects in the new pack

	dropped int           // copies of an object already taken from an earlier pack
	rebased int           // OFS deltas whose base was such a copy, pointed at the kept one
	sum     plumbing.Hash // the new pack's checksum (its name)
}

// Consolidate keeps the number of packs of the bare repository at dir bounded. When it
// holds more than MaxPacks, the smaller ones are merged into one new pack (as git's
// geometric repack picks them), and then removed if mayRemove allows it: a reader that
// listed them may still open them. If it does, done is called once they are removed. A pack
// left in place holds nothing the new one lacks, and is merged again next time.
func Consolidate(dir string, mayRemove func() (done func(), ok bool)) (Stats, error) {
	packDir := filepath.Join(dir, "objects", "pack")
	packs, err := listPacks(packDir)
	if err != nil || len(packs) <= MaxPacks {
		return Stats{}, err
	}
	merge := packsToMerge(packs)
	if len(merge) < 2 {
		return Stats{}, nil
	}
	stats, err := mergePacks(packDir, merge)
	if err != nil {
		return stats, fmt.Errorf("merge %d packs: %w", len(merge), err)
	}
	done, ok := mayRemove()
	if !ok {
		return stats, nil
	}
	defer done()
	for _, p := range merge {
		if p.base == filepath.Join(packDir, "pack-"+stats.sum.String()) {
			continue // the merge reproduced a pack byte for byte
		}
		// .pack first: go-git and git find packs by it, and ignore an index alone.
		if err := os.Remove(p.base + ".pack"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return stats, err
		}
		if err := os.Remove(p.base + ".idx"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return stats, err
		}
	}
	return stats, atomicfile.SyncDir(packDir)
}

// RemoveTemp removes the temporary files that a Store or a merge cut short by a crash left
// under objects/pack of the bare repository at dir. Only a writer of the repository makes
// them, so the caller has the writers' turn.
func RemoveTemp(dir string) error {
	packDir := filepath.Join(dir, "objects", "pack")
	entries, err := os.ReadDir(packDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tmp_pack_") || strings.HasPrefix(e.Name(), "tmp_idx_") {
			if err := os.Remove(filepath.Join(packDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// listPacks returns the packs in packDir that have their index, largest first.
func listPacks(packDir string) ([]packFile, error) {
	entries, err := os.ReadDir(packDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var packs []packFile
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".pack")
		if !ok || !strings.HasPrefix(name, "pack-") {
			continue
		}
		base := filepath.Join(packDir, name)
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(base + ".idx"); err != nil {
			continue
		}
		packs = append(packs, packFile{base: base, size: fi.Size()})
	}
	slices.SortFunc(packs, func(a, b packFile) int {
		if a.size != b.size {
			return int(b.size - a.size)
		}
		return strings.Compare(a.base, b.base)
	})
	return packs, nil
}

// packsToMerge picks from packs, largest first, those to merge, as git's geometric repack
// does with factor 2: a pack at least twice the size of all smaller ones together stays,
// and so do the ones larger than it; from the first pack that is not, all are merged. So
// the big pack of the first push is not copied again for every few small ones, and the
// packs that stay number at most about log2 of the repository's size.
func packsToMerge(packs []packFile) []packFile {
	rest := int64(0)
	for _, p := range packs {
		rest += p.size
	}
	for i, p := range packs {
		rest -= p.size
		if p.size < 2*rest {
			return packs[i:]
		}
	}
	return nil
}

// mergePacks writes the objects of packs, each once, into one new pack under packDir,
// published like a pushed one. Nothing is inflated or recompressed: each object is copied as
// stored, an OFS delta with its base's offset rewritten for the new pack. An object held by
// two packs is kept the first time; a delta based on the dropped copy is based on the kept
// one, which has the same content.
func mergePacks(packDir string, packs []packFile) (stats Stats, err error) {
	indexes := make([][]idxfile.Entry, len(packs))
	// Every object, once: its offset in the new pack once copied, -1 until then.
	kept := map[plumbing.Hash]int64{}
	for i, p := range packs {
		if indexes[i], err = readIndex(p.base + ".idx"); err != nil {
			return stats, err
		}
		for _, e := range indexes[i] {
			kept[e.Hash] = -1
		}
	}

	f, err := os.CreateTemp(packDir, "tmp_pack_")
	if err != nil {
		return stats, err
	}
	defer func() {
		if err != nil {
			// Already failing: the temporary file goes, and its own errors add nothing.
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	out := &packWriter{w: bufio.NewWriterSize(f, 256*1024), h: sha1.New()}
	var hdr [12]byte
	copy(hdr[:], "PACK")
	binary.BigEndian.PutUint32(hdr[4:], 2)
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(kept)))
	if _, err := out.Write(hdr[:]); err != nil {
		return stats, err
	}

	m := &packMerge{out: out, kept: kept, objects: make([]packObject, 0, len(kept))}
	for i, p := range packs {
		if err := m.copyPack(p, indexes[i]); err != nil {
			return stats, fmt.Errorf("%s: %w", filepath.Base(p.base), err)
		}
	}
	if len(m.objects) != len(kept) {
		return stats, fmt.Errorf("merged %d objects, counted %d", len(m.objects), len(kept))
	}
	pack := &scannedPack{objects: m.objects}
	copy(pack.sum[:], out.h.Sum(nil))
	if _, err := out.w.Write(pack.sum[:]); err != nil {
		return stats, err
	}
	if err := out.w.Flush(); err != nil {
		return stats, err
	}
	if err := publishPack(f, pack); err != nil {
		return stats, err
	}
	return Stats{Packs: len(packs), Objects: len(m.objects), dropped: m.dropped, rebased: m.rebased, sum: pack.sum}, nil
}

// readIndex returns the entries of the pack index at path, in pack order.
func readIndex(path string) ([]idxfile.Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // opened for reading: Close has nothing to report
	idx := idxfile.NewMemoryIndex()
	if err := idxfile.NewDecoder(bufio.NewReader(f)).Decode(idx); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
	}
	iter, err := idx.EntriesByOffset()
	if err != nil {
		return nil, err
	}
	defer iter.Close() // an iterator over memory: Close has nothing to report
	var entries []idxfile.Entry
	for {
		e, err := iter.Next()
		if err == io.EOF {
			return entries, nil
		}
		if err != nil {
			return nil, err
		}
		entries = append(entries, *e)
	}
}

// packMerge is a merge in progress: the new pack, and where each object kept in it is.
type packMerge struct {
	out     *packWriter
	kept    map[plumbing.Hash]int64 // every object id -> its offset in the new pack, -1 until copied
	objects []packObject
	dropped int
	rebased int

	// Of the pack being copied:
	newAt     map[int64]int64 // offset in it -> offset in the new pack
	droppedAt map[int64]bool  // offsets in it of the copies left out
}

// copyPack appends the objects of pack p, whose index entries are entries in pack order,
// to the new pack.
func (m *packMerge) copyPack(p packFile, entries []idxfile.Entry) error {
	f, err := os.Open(p.base + ".pack")
	if err != nil {
		return err
	}
	defer f.Close() // opened for reading: Close has nothing to report
	br := bufio.NewReaderSize(f, 256*1024)
	var hdr [12]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return err
	}
	if !bytes.Equal(hdr[:4], []byte("PACK")) || binary.BigEndian.Uint32(hdr[4:8]) != 2 ||
		binary.BigEndian.Uint32(hdr[8:]) != uint32(len(entries)) {
		return errors.New("pack header does not match its index")
	}
	end := p.size - sha1.Size
	m.newAt = make(map[int64]int64, len(entries))
	m.droppedAt = map[int64]bool{}
	pos := int64(len(hdr))
	for k, e := range entries {
		next := end
		if k+1 < len(entries) {
			next = int64(entries[k+1].Offset)
		}
		if int64(e.Offset) != pos {
			return fmt.Errorf("index entry at %d does not fit the pack", e.Offset)
		}
		if err := m.copyObject(br, pos, next, e.Hash); err != nil {
			return err
		}
		pos = next
	}
	return nil
}

// copyObject appends the object with id h, which takes the bytes from pos to next of the
// pack being copied, read from br, to the new pack; or skips it, if the new pack has it.
func (m *packMerge) copyObject(br *bufio.Reader, pos, next int64, h plumbing.Hash) error {
	hdr, err := readObjectHeader(br, pos)
	if err != nil {
		return fmt.Errorf("object at %d: %w", pos, err)
	}
	data := next - pos - int64(hdr.hdrLen) // the zlib stream, copied as it is
	if data <= 0 {
		return fmt.Errorf("object at %d: no data after its header", pos)
	}
	if at := m.kept[h]; at >= 0 {
		m.newAt[pos], m.droppedAt[pos] = at, true
		m.dropped++
		_, err := br.Discard(int(data))
		return err
	}

	at := m.out.n
	m.newAt[pos], m.kept[h] = at, at
	crc := crc32.NewIEEE()
	w := io.MultiWriter(m.out, crc)
	head := appendObjectHeader(nil, hdr.typ, hdr.size)
	switch hdr.typ {
	case plumbing.OFSDeltaObject:
		newBase, ok := m.newAt[hdr.base]
		if !ok {
			return fmt.Errorf("object at %d: delta base %d is not an object", pos, hdr.base)
		}
		if m.droppedAt[hdr.base] {
			m.rebased++
		}
		head = appendOfs(head, at-newBase)
	case plumbing.REFDeltaObject:
		head = append(head, hdr.ref[:]...)
	}
	if _, err := w.Write(head); err != nil {
		return err
	}
	if _, err := io.CopyN(w, br, data); err != nil {
		return err
	}
	m.objects = append(m.objects, packObject{offset: at, crc: crc.Sum32(), hash: h})
	return nil
}

// packWriter writes a pack, hashing and counting what it writes.
type packWriter struct {
	w   *bufio.Writer
	h   hash.Hash
	n   int64
	err error
}

func (p *packWriter) Write(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	p.h.Write(b)
	p.n += int64(len(b))
	_, p.err = p.w.Write(b)
	return len(b), p.err
}
