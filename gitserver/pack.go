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
	"io"
	"os"
	"path/filepath"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"

	"github.com/slipway/slipway/internal/atomicfile"
)

// errPack marks a pack that is malformed: the client's fault, reported as "unpack <reason>".
var errPack = errors.New("bad pack")

func packErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errPack, fmt.Sprintf(format, args...))
}

// copyPack copies exactly one pack from r to w, following its structure: the 12-byte
// header with the object count; per object its type/size header, its delta base (offset or
// object id) and one zlib stream that must inflate to the declared size; then the 20-byte
// SHA-1 trailer, which must match. It reads nothing after the trailer, so a client that
// keeps its side open after the pack (libgit2) is not waited for. Nothing is buffered
// beyond bufio's window, whatever the pack's size.
func copyPack(w io.Writer, r *bufio.Reader) (objects uint32, err error) {
	src := &packSource{r: r, w: w, h: sha1.New()}
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
	objects = binary.BigEndian.Uint32(hdr[8:12])

	var zr io.ReadCloser
	for i := uint32(0); i < objects; i++ {
		start := src.n
		size, err := src.objectHeader(start)
		if err != nil {
			return 0, fmt.Errorf("object %d: %w", i, err)
		}
		if zr == nil {
			zr, err = zlib.NewReader(src)
		} else {
			err = zr.(zlib.Resetter).Reset(src, nil)
		}
		if err != nil {
			return 0, packReadErr(fmt.Sprintf("object %d", i), err)
		}
		// Inflate at most one byte more than declared: a zlib bomb is caught at its size.
		n, err := io.CopyN(io.Discard, zr, int64(size)+1)
		switch {
		case err == nil:
			return 0, packErrorf("object %d inflates to more than its declared %d bytes", i, size)
		case err != io.EOF:
			return 0, packReadErr(fmt.Sprintf("object %d", i), err)
		case n != int64(size):
			return 0, packErrorf("object %d inflates to %d bytes, declared %d", i, n, size)
		}
	}

	if err := src.flush(); err != nil {
		return 0, err
	}
	sum := src.h.Sum(nil)
	var trailer [sha1.Size]byte
	if _, err := io.ReadFull(r, trailer[:]); err != nil {
		return 0, packReadErr("trailer", err)
	}
	if !bytes.Equal(sum, trailer[:]) {
		return 0, packErrorf("checksum mismatch")
	}
	if _, err := w.Write(trailer[:]); err != nil {
		return 0, err
	}
	return objects, nil
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
	_, s.werr = s.w.Write(p)
}

// maxObjectSize is what an object header may declare; larger is a corrupt or hostile pack.
const maxObjectSize = 1 << 40

// objectHeader reads one object's type/size header and its delta base, and returns the
// declared (inflated) size. start is the object's offset in the pack.
func (s *packSource) objectHeader(start int64) (uint64, error) {
	c, err := s.ReadByte()
	if err != nil {
		return 0, packReadErr("header", err)
	}
	typ := plumbing.ObjectType((c >> 4) & 7)
	size := uint64(c & 0x0f)
	for shift := 4; c&0x80 != 0; shift += 7 {
		if c, err = s.ReadByte(); err != nil {
			return 0, packReadErr("header", err)
		}
		if shift > 40 {
			return 0, packErrorf("object size header too long")
		}
		size |= uint64(c&0x7f) << shift
	}
	if size > maxObjectSize {
		return 0, packErrorf("object size %d too large", size)
	}
	switch typ {
	case plumbing.CommitObject, plumbing.TreeObject, plumbing.BlobObject, plumbing.TagObject:
	case plumbing.OFSDeltaObject:
		// Offset encoding from git's pack format: big-endian 7-bit groups, each continuation
		// adding one so that every value has a single encoding.
		if c, err = s.ReadByte(); err != nil {
			return 0, packReadErr("delta base", err)
		}
		off := int64(c & 0x7f)
		for c&0x80 != 0 {
			if c, err = s.ReadByte(); err != nil {
				return 0, packReadErr("delta base", err)
			}
			if off >= start {
				return 0, packErrorf("delta base offset out of range")
			}
			off = (off+1)<<7 | int64(c&0x7f)
		}
		if off <= 0 || off > start-12 {
			return 0, packErrorf("delta base offset out of range")
		}
	case plumbing.REFDeltaObject:
		var base [20]byte
		if _, err := io.ReadFull(s, base[:]); err != nil {
			return 0, packReadErr("delta base", err)
		}
	default:
		return 0, packErrorf("unknown object type %d", typ)
	}
	return size, nil
}

// storePack reads one pack from r into the bare repository at dir: written to a temporary
// file under objects/pack while it is checked, indexed with go-git's parser, then published
// as pack-<sum>.idx and pack-<sum>.pack (in that order, because go-git finds packs by their
// .pack file). A pack with no objects stores nothing. On error nothing is left behind.
// received is called once the whole pack has been read from r, before indexing.
func storePack(dir string, r *bufio.Reader, received func()) (objects uint32, err error) {
	packDir := filepath.Join(dir, "objects", "pack")
	if err := os.MkdirAll(packDir, 0o755); err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(packDir, "tmp_pack_")
	if err != nil {
		return 0, err
	}
	var idxName string
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			if idxName != "" {
				os.Remove(idxName)
			}
		}
	}()

	bw := bufio.NewWriterSize(f, 64*1024)
	objects, err = copyPack(bw, r)
	if err != nil {
		return 0, err
	}
	received()
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	if objects == 0 {
		f.Close()
		return 0, os.Remove(f.Name())
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}

	idxw := new(idxfile.Writer)
	parser, err := packfile.NewParser(packfile.NewScanner(f), idxw)
	if err != nil {
		return 0, err
	}
	sum, err := parser.Parse()
	if err != nil {
		// The structure and checksum were fine, so this is about the objects themselves,
		// e.g. a delta against an object that is not in the pack (a thin pack).
		return 0, packErrorf("%v", err)
	}
	idx, err := idxw.Index()
	if err != nil {
		return 0, packErrorf("%v", err)
	}

	xf, err := os.CreateTemp(packDir, "tmp_idx_")
	if err != nil {
		return 0, err
	}
	idxName = xf.Name()
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
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}

	base := filepath.Join(packDir, "pack-"+sum.String())
	os.Chmod(idxName, 0o444)
	os.Chmod(f.Name(), 0o444)
	if err := os.Rename(idxName, base+".idx"); err != nil {
		return 0, err
	}
	idxName = ""
	if err := os.Rename(f.Name(), base+".pack"); err != nil {
		return 0, err
	}
	return objects, atomicfile.SyncDir(packDir)
}
