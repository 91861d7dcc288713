package gitserver

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

// errPack marks a pack that is malformed: the client's fault, reported as "unpack <reason>".
var errPack = errors.New("bad pack")

func packErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errPack, fmt.Sprintf(format, args...))
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
	objects  []packObject
	refBases map[int]plumbing.Hash
	sum      plumbing.Hash
}

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
func copyPack(w io.Writer, r *bufio.Reader) (*scannedPack, error) {
	src := &packSource{r: r, w: w, h: sha1.New()}
	var hdr [12]byte
	if _, err := io.ReadFull(src, hdr[:]); err != nil {
		return nil, packReadErr("header", err)
	}
	if !bytes.Equal(hdr[:4], []byte("PACK")) {
		return nil, packErrorf("no pack signature")
	}
	if v := binary.BigEndian.Uint32(hdr[4:8]); v != 2 {
		return nil, packErrorf("unsupported pack version %d", v)
	}
	count := binary.BigEndian.Uint32(hdr[8:12])
	// The count is the client's word; let the slice grow with the objects that do arrive.
	p := &scannedPack{objects: make([]packObject, 0, min(count, 1<<16))}

	var zr io.ReadCloser
	buf := make([]byte, 64*1024)
	for i := uint32(0); i < count; i++ {
		if err := src.flush(); err != nil {
			return nil, err
		}
		src.crc = 0
		o := packObject{offset: src.n}
		h, err := readObjectHeader(src, o.offset)
		if err != nil {
			return nil, fmt.Errorf("object %d: %w", i, err)
		}
		o.typ, o.size, o.base = h.typ, h.size, h.base
		if o.typ == plumbing.REFDeltaObject {
			if p.refBases == nil {
				p.refBases = map[int]plumbing.Hash{}
			}
			p.refBases[len(p.objects)] = h.ref
		}
		o.data = src.n
		if zr == nil {
			zr, err = zlib.NewReader(src)
		} else {
			err = zr.(zlib.Resetter).Reset(src, nil)
		}
		if err != nil {
			return nil, packReadErr(fmt.Sprintf("object %d", i), err)
		}
		// A whole object is hashed as it inflates; a delta's instructions are only checked.
		var sink io.Writer = io.Discard
		var hasher plumbing.Hasher
		if !isDelta(o.typ) {
			hasher = plumbing.NewHasher(o.typ, int64(o.size))
			sink = hasher
		}
		// Inflate at most one byte more than declared: a zlib bomb is caught at its size. A
		// stream that ends where declared was read to its end, so its checksum was checked.
		n, err := io.CopyBuffer(sink, io.LimitReader(zr, int64(o.size)+1), buf)
		switch {
		case err != nil:
			return nil, packReadErr(fmt.Sprintf("object %d", i), err)
		case n > int64(o.size):
			return nil, packErrorf("object %d inflates to more than its declared %d bytes", i, o.size)
		case n != int64(o.size):
			return nil, packErrorf("object %d inflates to %d bytes, declared %d", i, n, o.size)
		}
		if err := src.flush(); err != nil {
			return nil, err
		}
		o.crc = src.crc
		if !isDelta(o.typ) {
			o.hash = hasher.Sum()
		}
		p.objects = append(p.objects, o)
	}

	if err := src.flush(); err != nil {
		return nil, err
	}
	copy(p.sum[:], src.h.Sum(nil))
	var trailer [sha1.Size]byte
	if _, err := io.ReadFull(r, trailer[:]); err != nil {
		return nil, packReadErr("trailer", err)
	}
	if !bytes.Equal(p.sum[:], trailer[:]) {
		return nil, packErrorf("checksum mismatch")
	}
	if _, err := w.Write(trailer[:]); err != nil {
		return nil, err
	}
	return p, nil
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
		s.flush()
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
	typ  plumbing.ObjectType
	size uint64        // inflated size of the zlib stream that follows
	base int64         // OFS delta: the offset of its base in the pack
	ref  plumbing.Hash // REF delta: the id of its base
	len  int           // bytes the header takes in the pack
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
		h.len++
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
		// Offset encoding from git's pack format: big-endian 7-bit groups, each continuation
		// adding one so that every value has a single encoding.
		if c, err = next("delta base"); err != nil {
			return h, err
		}
		off := int64(c & 0x7f)
		for c&0x80 != 0 {
			if c, err = next("delta base"); err != nil {
				return h, err
			}
			if off >= pos {
				return h, packErrorf("delta base offset out of range")
			}
			off = (off+1)<<7 | int64(c&0x7f)
		}
		if off <= 0 || off > pos-12 {
			return h, packErrorf("delta base offset out of range")
		}
		h.base = pos - off
	case plumbing.REFDeltaObject:
		for i := range h.ref {
			if h.ref[i], err = next("delta base"); err != nil {
				return h, err
			}
		}
	default:
		return h, packErrorf("unknown object type %d", h.typ)
	}
	return h, nil
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

// storePack reads one pack from r into the bare repository at dir: written to a temporary
// file under objects/pack while it is checked and indexed (copyPack, resolveDeltas), then
// published as pack-<sum>.idx and pack-<sum>.pack (in that order, because go-git finds
// packs by their .pack file). A pack with no objects stores nothing. On error nothing is left behind.
// received is called once the whole pack has been read from r, before its deltas are resolved.
func storePack(dir string, r *bufio.Reader, received func()) (objects uint32, err error) {
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
			f.Close()
			os.Remove(f.Name())
		}
	}()

	bw := bufio.NewWriterSize(f, 64*1024)
	pack, err := copyPack(bw, r)
	if err != nil {
		return 0, err
	}
	received()
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	if len(pack.objects) == 0 {
		f.Close()
		return 0, os.Remove(f.Name())
	}
	if err := resolveDeltas(f, pack); err != nil {
		return 0, err
	}
	if err := publishPack(f, pack); err != nil {
		return 0, err
	}
	return uint32(len(pack.objects)), nil
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
	xf, err := os.CreateTemp(packDir, "tmp_idx_")
	if err != nil {
		return err
	}
	idxName := xf.Name()
	defer func() {
		if err != nil && idxName != "" {
			os.Remove(idxName)
		}
	}()
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
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	base := filepath.Join(packDir, "pack-"+pack.sum.String())
	os.Chmod(idxName, 0o444)
	os.Chmod(f.Name(), 0o444)
	if err := os.Rename(idxName, base+".idx"); err != nil {
		return err
	}
	idxName = ""
	if err := os.Rename(f.Name(), base+".pack"); err != nil {
		return err // an index without its pack is ignored by go-git and git alike
	}
	return atomicfile.SyncDir(packDir)
}
