// Package pack is the pack store of the git server's repositories: it streams a pushed pack
// into a bare repository's objects/pack and indexes it (Store), reads a pack only to drop it
// (Discard), keeps the number of packs in a repository bounded by merging them
// (Consolidate), and writes the pack a fetch sends by copying stored objects (Packs,
// WritePack), with a stream of large deltas for go-git's lookups (LargeDeltas).
//
// Invariants:
//   - A pack is read by its own structure (the 12-byte header with the object count, each
//     object's header and zlib stream, the 20-byte trailer), never until end of stream, and
//     nothing after its trailer is read: clients that keep their side open after the pack
//     (libgit2) work, and the connection's next bytes are left to the caller.
//   - No object is held in memory whole while a pack streams: it is checked and indexed as it
//     arrives (each whole object hashed, every object's offset and CRC-32 recorded), and only
//     its deltas are resolved once the trailer has arrived, reading the stored pack back.
//     Memory stays bounded whatever the sizes: a delta whose base, instructions or result is
//     over 1 MiB is applied as it streams, its large bases kept in temporary files (unlinked
//     once open, so a crash leaves none), and chains deeper than git's 4095 are refused. An
//     object over the size Store is given (whole, or a delta's result) is refused from its
//     header with a *TooLargeError, before it costs the time to build it.
//   - A pack appears in a repository whole or not at all: it is written to a temporary file,
//     its index next to it, both synced and renamed to pack-<sum>.idx and then pack-<sum>.pack
//     (git and go-git find packs by their .pack file), and the directory synced. A failed
//     Store leaves nothing behind; one cut short by a crash leaves only temporary files,
//     which RemoveTemp removes.
//   - A pack that breaks the format (truncated, a bad checksum, a delta without its base in
//     the pack, an object twice, ...) is the client's fault: its error wraps ErrBad. Any other
//     error is the server's, or its reader's (a size limit of the caller's).
//   - Every tree of a pack, whole or a delta, passes git's fsck rules for tree entries
//     (receive.fsckObjects): no .git in any of its disguises, no ".", "..", empty name or
//     slash, no symbolic link named .gitmodules, no entry twice. A tree that breaks them is a
//     *TreeError, which wraps ErrBad, and nothing of its pack is stored.
//   - A merge holds every object of the packs it replaces, and its caller decides whether
//     those may be removed: a reader that listed them may still open them.
//   - Writers of one repository are serialized by the caller: one Store, Consolidate or
//     RemoveTemp at a time.
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
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"

	"github.com/slipway/slipway/internal/atomicfile"
)

// ErrBad is what the error of a malformed pack wraps: the client's fault. Its text after
// "bad pack: " says what is wrong, fit for the pusher's "unpack" status.
var ErrBad = errors.New("bad pack")

func packErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBad, fmt.Sprintf(format, args...))
}

// Store reads one pack from r into the bare repository at dir: written to a temporary file
// under objects/pack while it is checked and indexed, then published as pack-<sum>.idx and
// pack-<sum>.pack. A pack with no objects stores nothing. On error nothing is left behind.
// An object (whole, or a delta's result) over maxObject bytes is refused with a
// *TooLargeError as soon as its header says so, before it costs the time to inflate or build
// it; maxObject <= 0 means the format's own cap. received is called once the whole pack
// has been read from r, before its deltas are resolved (which may take a while). It returns
// the number of objects stored.
func Store(dir string, r *bufio.Reader, maxObject int64, received func()) (objects int, err error) {
	packDir := filepath.Join(dir, "objects", "pack")
	if err := os.MkdirAll(packDir, 0o755); err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(packDir, "tmp_pack_")
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			// Already failing: the temporary file goes, and its own errors add nothing.
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()

	bw := bufio.NewWriterSize(f, 64*1024)
	pack, err := copyPack(bw, r, maxObject)
	if err != nil {
		return 0, err
	}
	received()
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	if len(pack.objects) == 0 {
		_ = f.Close() // removed next; only the removal matters
		return 0, os.Remove(f.Name())
	}
	if err := resolveDeltas(f, pack); err != nil {
		return 0, err
	}
	if err := publishPack(f, pack); err != nil {
		return 0, err
	}
	return len(pack.objects), nil
}

// Discard reads one pack from r, checking it as Store does except for its deltas, and drops
// it. It returns the number of objects the pack holds.
func Discard(r *bufio.Reader) (objects int, err error) {
	pack, err := copyPack(io.Discard, r, 0)
	if err != nil {
		return 0, err
	}
	return len(pack.objects), nil
}

// packObject is one object of a pack as it streamed past: where it is, the CRC-32 of its
// bytes (the index records both), and its id. A whole object's id is known once it has been
// read; a delta's, and its real type, once resolveDeltas has applied it to its base.
type packObject struct {
	offset int64               // of its type/size header in the pack
	data   int64               // of its zlib stream
	size   uint64              // inflated size of the stream: the object, or a delta's instructions
	base   int64               // OFS delta: the offset of its base
	crc    uint32              // of the object's bytes in the pack, header included
	typ    plumbing.ObjectType // OFSDeltaObject or REFDeltaObject until resolved
	hash   plumbing.Hash       // zero for a delta until resolved
}

// scannedPack is what copyPack learnt from a pack: every object in pack order, the bases of
// its REF deltas (by object index), and the pack's checksum.
type scannedPack struct {
	objects   []packObject
	refBases  map[int]plumbing.Hash
	sum       plumbing.Hash
	maxObject int64 // the largest object allowed, whole or a delta's result
}

// TooLargeError is an object over the size Store was told to allow.
type TooLargeError struct {
	Offset    int64 // of the object in the pack
	Size, Max int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("an object of %d bytes (at offset %d) is over the %d bytes allowed", e.Size, e.Offset, e.Max)
}

// Is makes a TooLargeError an ErrBad.
func (e *TooLargeError) Is(target error) bool { return target == ErrBad }

// copyPack copies exactly one pack from r to w, following its structure: the 12-byte
// header with the object count; per object its type/size header, its delta base (offset or
// object id) and one zlib stream that must inflate to the declared size; then the 20-byte
// SHA-1 trailer, which must match. It reads nothing after the trailer, so a client that
// keeps its side open after the pack (libgit2) is not waited for. No object is held in
// memory, whatever its size: past bufio's window, only a small record per object.
//
// It indexes the pack as it streams: each whole object is hashed as it inflates, and every
// object's offset and CRC-32 are recorded, so that once the trailer has arrived only the
// deltas are left to resolve (resolveDeltas).
func copyPack(w io.Writer, r *bufio.Reader, maxObject int64) (*scannedPack, error) {
	src := &packSource{r: r, w: w, h: sha1.New()}
	count, err := readPackHeader(src)
	if err != nil {
		return nil, err
	}
	if maxObject <= 0 || maxObject > maxObjectSize {
		maxObject = maxObjectSize
	}
	// The count is the client's word; let the slice grow with the objects that do arrive.
	p := &scannedPack{objects: make([]packObject, 0, min(count, 1<<16)), maxObject: maxObject}
	c := &objectCopier{src: src, buf: make([]byte, 64*1024), maxObject: maxObject}
	for i := uint32(0); i < count; i++ {
		o, ref, err := c.next(i)
		if err != nil {
			return nil, err
		}
		if o.typ == plumbing.REFDeltaObject {
			if p.refBases == nil {
				p.refBases = map[int]plumbing.Hash{}
			}
			p.refBases[len(p.objects)] = ref
		}
		p.objects = append(p.objects, o)
	}
	if p.sum, err = copyTrailer(src); err != nil {
		return nil, err
	}
	return p, nil
}

// readPackHeader reads the 12-byte header of a pack and returns its object count.
func readPackHeader(src *packSource) (uint32, error) {
	var hdr [12]byte
	if _, err := io.ReadFull(src, hdr[:]); err != nil {
		return 0, packReadErr("header", err)
	}
	if !bytes.Equal(hdr[:4], []byte("PACK")) {
		return 0, packErrorf("no pack signature")
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 {
		return 0, packErrorf("unsupported pack version %d", v)
	}
	return binary.BigEndian.Uint32(hdr[8:12]), nil
}

// copyTrailer reads the pack's 20-byte SHA-1 trailer, checks it against the bytes that came
// before, and copies it. It returns the pack's checksum.
func copyTrailer(src *packSource) (plumbing.Hash, error) {
	var sum plumbing.Hash
	if err := src.flush(); err != nil {
		return sum, err
	}
	copy(sum[:], src.h.Sum(nil))
	var trailer [sha1.Size]byte
	if _, err := io.ReadFull(src.r, trailer[:]); err != nil {
		return sum, packReadErr("trailer", err)
	}
	if !bytes.Equal(sum[:], trailer[:]) {
		return sum, packErrorf("checksum mismatch")
	}
	if _, err := src.w.Write(trailer[:]); err != nil {
		return sum, err
	}
	return sum, nil
}

// objectCopier reads the objects of a pack one after the other, with one inflater and one
// buffer for all of them.
type objectCopier struct {
	src       *packSource
	zr        io.ReadCloser // reset for each object; nil until the first
	buf       []byte
	maxObject int64 // the largest whole object allowed
}

// next reads object i of the pack, its header and its zlib stream, and returns its record
// and, for a REF delta, the id of its base.
func (c *objectCopier) next(i uint32) (packObject, plumbing.Hash, error) {
	src := c.src
	if err := src.flush(); err != nil {
		return packObject{}, plumbing.ZeroHash, err
	}
	src.crc = 0
	o := packObject{offset: src.n}
	h, err := readObjectHeader(src, o.offset)
	if err != nil {
		return o, plumbing.ZeroHash, fmt.Errorf("object %d: %w", i, err)
	}
	o.typ, o.size, o.base = h.typ, h.size, h.base
	if !isDelta(h.typ) && int64(h.size) > c.maxObject {
		return o, plumbing.ZeroHash, &TooLargeError{Offset: o.offset, Size: int64(h.size), Max: c.maxObject}
	}
	o.data = src.n
	if err := c.inflate(&o, i); err != nil {
		return o, plumbing.ZeroHash, err
	}
	if err := src.flush(); err != nil {
		return o, plumbing.ZeroHash, err
	}
	o.crc = src.crc
	return o, h.ref, nil
}

// inflate reads the zlib stream of object i, o, which must inflate to its declared size. A
// whole object is hashed as it inflates, and gets its id, and a tree is checked as git's
// fsck checks it (treeChecker); a delta's instructions are only checked.
func (c *objectCopier) inflate(o *packObject, i uint32) error {
	var err error
	if c.zr == nil {
		c.zr, err = zlib.NewReader(c.src)
	} else {
		err = c.zr.(zlib.Resetter).Reset(c.src, nil)
	}
	if err != nil {
		return packReadErr(fmt.Sprintf("object %d", i), err)
	}
	var sink io.Writer = io.Discard
	var hasher plumbing.Hasher
	var tree *treeChecker
	if !isDelta(o.typ) {
		hasher = plumbing.NewHasher(o.typ, int64(o.size))
		sink = hasher
	}
	if o.typ == plumbing.TreeObject {
		tree = &treeChecker{}
		sink = io.MultiWriter(hasher, tree)
	}
	// Inflate at most one byte more than declared: a zlib bomb is caught at its size. A
	// stream that ends where declared was read to its end, so its checksum was checked.
	n, err := io.CopyBuffer(sink, io.LimitReader(c.zr, int64(o.size)+1), c.buf)
	switch {
	case err != nil:
		return packReadErr(fmt.Sprintf("object %d", i), err)
	case n > int64(o.size):
		return packErrorf("object %d inflates to more than its declared %d bytes", i, o.size)
	case n != int64(o.size):
		return packErrorf("object %d inflates to %d bytes, declared %d", i, n, o.size)
	}
	if !isDelta(o.typ) {
		o.hash = hasher.Sum()
	}
	if tree != nil {
		if err := tree.check(o.hash); err != nil {
			return err
		}
	}
	return nil
}

func isDelta(t plumbing.ObjectType) bool {
	return t == plumbing.OFSDeltaObject || t == plumbing.REFDeltaObject
}

// packReadErr tells a truncated pack (the client's fault) from other read errors.
func packReadErr(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return packErrorf("%s: pack ends early", what)
	}
	if errors.Is(err, zlib.ErrChecksum) || errors.Is(err, zlib.ErrHeader) || errors.Is(err, zlib.ErrDictionary) {
		return packErrorf("%s: %v", what, err)
	}
	var corrupt flate.CorruptInputError
	if errors.As(err, &corrupt) {
		return packErrorf("%s: %v", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// packSource is the pack as it arrives: every byte read through it is hashed and copied to
// w. It is an io.ByteReader, so zlib/flate read exactly their stream and no further.
type packSource struct {
	r       *bufio.Reader
	w       io.Writer
	h       hash.Hash
	crc     uint32 // CRC-32 of the bytes written since the caller last zeroed it
	n       int64  // bytes consumed
	pending []byte // consumed bytes not yet hashed and copied (batches ReadByte)
	werr    error  // sticky error from w
}

func (s *packSource) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.consume(p[:n])
	}
	if s.werr != nil {
		return n, s.werr
	}
	return n, err
}

func (s *packSource) ReadByte() (byte, error) {
	c, err := s.r.ReadByte()
	if err != nil {
		return 0, err
	}
	s.n++
	s.pending = append(s.pending, c)
	if len(s.pending) >= 32*1024 {
		if err := s.flush(); err != nil {
			return 0, err
		}
	}
	return c, nil
}

func (s *packSource) consume(p []byte) {
	s.n += int64(len(p))
	if len(s.pending)+len(p) > 32*1024 {
		_ = s.flush() // a write error is kept in werr, which Read returns
		s.write(p)
		return
	}
	s.pending = append(s.pending, p...)
}

func (s *packSource) flush() error {
	s.write(s.pending)
	s.pending = s.pending[:0]
	return s.werr
}

func (s *packSource) write(p []byte) {
	if len(p) == 0 || s.werr != nil {
		return
	}
	s.h.Write(p)
	s.crc = crc32.Update(s.crc, crc32.IEEETable, p)
	_, s.werr = s.w.Write(p)
}

// maxObjectSize is what an object header may declare; larger is a corrupt or hostile pack.
const maxObjectSize = 1 << 40

// objectHeader is the header of one object of a pack.
type objectHeader struct {
	typ    plumbing.ObjectType
	size   uint64        // inflated size of the zlib stream that follows
	base   int64         // OFS delta: the offset of its base in the pack
	ref    plumbing.Hash // REF delta: the id of its base
	hdrLen int           // bytes the header takes in the pack
}

// readObjectHeader reads the header of the object at offset pos of a pack: its type and
// size, and a delta's base.
func readObjectHeader(r io.ByteReader, pos int64) (objectHeader, error) {
	var h objectHeader
	next := func(what string) (byte, error) {
		c, err := r.ReadByte()
		if err != nil {
			return 0, packReadErr(what, err)
		}
		h.hdrLen++
		return c, nil
	}
	c, err := next("header")
	if err != nil {
		return h, err
	}
	h.typ = plumbing.ObjectType((c >> 4) & 7)
	h.size = uint64(c & 0x0f)
	for shift := 4; c&0x80 != 0; shift += 7 {
		if c, err = next("header"); err != nil {
			return h, err
		}
		if shift > 40 {
			return h, packErrorf("object size header too long")
		}
		h.size |= uint64(c&0x7f) << shift
	}
	if h.size > maxObjectSize {
		return h, packErrorf("object size %d too large", h.size)
	}
	switch h.typ {
	case plumbing.CommitObject, plumbing.TreeObject, plumbing.BlobObject, plumbing.TagObject:
	case plumbing.OFSDeltaObject:
		h.base, err = readOfsBase(next, pos)
	case plumbing.REFDeltaObject:
		for i := range h.ref {
			if h.ref[i], err = next("delta base"); err != nil {
				return h, err
			}
		}
	default:
		return h, packErrorf("unknown object type %d", h.typ)
	}
	return h, err
}

// readOfsBase reads the base of the OFS delta at offset pos with next, and returns the
// base's offset. The encoding is git's: big-endian 7-bit groups of the distance back to the
// base, each continuation adding one so that every value has a single encoding.
func readOfsBase(next func(what string) (byte, error), pos int64) (int64, error) {
	c, err := next("delta base")
	if err != nil {
		return 0, err
	}
	off := int64(c & 0x7f)
	for c&0x80 != 0 {
		if c, err = next("delta base"); err != nil {
			return 0, err
		}
		if off >= pos {
			return 0, packErrorf("delta base offset out of range")
		}
		off = (off+1)<<7 | int64(c&0x7f)
	}
	if off <= 0 || off > pos-12 {
		return 0, packErrorf("delta base offset out of range")
	}
	return pos - off, nil
}

// appendObjectHeader appends the encoding of an object's type and size (without a delta's
// base) to b.
func appendObjectHeader(b []byte, typ plumbing.ObjectType, size uint64) []byte {
	c := byte(typ)<<4 | byte(size&0x0f)
	for size >>= 4; size > 0; size >>= 7 {
		b = append(b, c|0x80)
		c = byte(size & 0x7f)
	}
	return append(b, c)
}

// appendOfs appends the encoding of an OFS delta's distance to its base: big-endian 7-bit
// groups, each continuation adding one.
func appendOfs(b []byte, off int64) []byte {
	var enc [10]byte
	i := len(enc) - 1
	enc[i] = byte(off & 0x7f)
	for off >>= 7; off > 0; off >>= 7 {
		off--
		i--
		enc[i] = 0x80 | byte(off&0x7f)
	}
	return append(b, enc[i:]...)
}

// publishPack makes the complete pack written to the temporary file f (under objects/pack)
// part of the repository: its index is written next to it, both are synced, made read-only
// and renamed to pack-<sum>.idx and pack-<sum>.pack, in that order (go-git finds packs by
// their .pack file), and the directory is synced. f is closed; on error the caller removes
// it, and no index is left behind.
func publishPack(f *os.File, pack *scannedPack) (err error) {
	idx, err := pack.index()
	if err != nil {
		return err
	}
	packDir := filepath.Dir(f.Name())
	idxName, err := writeIndex(packDir, idx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && idxName != "" {
			_ = os.Remove(idxName) // already failing; a stray temporary file is all it can leave
		}
	}()
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	base := filepath.Join(packDir, "pack-"+pack.sum.String())
	// Read-only as git makes them, against accidental writes; the pack is whole without it.
	_ = os.Chmod(idxName, 0o444)
	_ = os.Chmod(f.Name(), 0o444)
	if err := os.Rename(idxName, base+".idx"); err != nil {
		return err
	}
	idxName = ""
	if err := os.Rename(f.Name(), base+".pack"); err != nil {
		return err // an index without its pack is ignored by go-git and git alike
	}
	return atomicfile.SyncDir(packDir)
}

// writeIndex writes idx to a new temporary file under packDir, synced and closed, and
// returns its name. On error it leaves no file behind.
func writeIndex(packDir string, idx *idxfile.MemoryIndex) (name string, err error) {
	xf, err := os.CreateTemp(packDir, "tmp_idx_")
	if err != nil {
		return "", err
	}
	xw := bufio.NewWriter(xf)
	_, err = idxfile.NewEncoder(xw).Encode(idx)
	if err == nil {
		err = xw.Flush()
	}
	if err == nil {
		err = xf.Sync()
	}
	if cerr := xf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(xf.Name()) // already failing; a stray temporary file is all it can leave
		return "", err
	}
	return xf.Name(), nil
}
