package pack

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/go-git/go-git/v5/plumbing"
)

// Packs reads the objects of a bare repository as they are stored: found through the indexes
// of its packs (and among its loose objects, which slipway does not write but git may
// have), copied as stored into a pack for a client (WritePack), or streamed whole (a delta
// sent whole, LargeDeltas). No object is ever held in memory whole, whatever its size: a
// delta is applied as it streams, on a base held in memory only up to memBase bytes, and
// read again from its start for each copy that goes backwards in it otherwise.
//
// Its methods are safe for concurrent use. The caller keeps the packs it lists from being
// removed while it reads them (the packs lock of a fetch); a pack that appears later is
// found by Refresh.
type Packs struct {
	dir    string
	keep   bool       // pack files stay open until Close; otherwise each read opens its own
	lender PackLender // without keep: open pack files to read through; may be nil

	mu    sync.Mutex // guards packs and files
	packs []*packIndex
	files map[*packIndex]*os.File

	zpool zlibPool
}

// OpenPacks reads the pack indexes of the bare repository at dir. Pack files are opened when
// first read and stay open until Close.
func OpenPacks(dir string) (*Packs, error) {
	s := &Packs{dir: dir, keep: true, files: map[*packIndex]*os.File{}}
	if _, err := s.Refresh(); err != nil {
		return nil, err
	}
	return s, nil
}

// PackLender lends a pack file that someone else holds open: name is the file's base name
// (pack-<sum>.pack). The file stays open until release is called.
type PackLender interface {
	Borrow(name string) (f io.ReaderAt, release func(), ok bool)
}

// openPacksUnkept is OpenPacks for a reader with no Close to call: every read borrows the
// pack file it needs from lender, or opens it and closes it when it is done.
func openPacksUnkept(dir string, lender PackLender) (*Packs, error) {
	s := &Packs{dir: dir, lender: lender}
	if _, err := s.Refresh(); err != nil {
		return nil, err
	}
	return s, nil
}

// Close closes the pack files kept open. Readers from Open must be closed first.
func (s *Packs) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for p, f := range s.files {
		errs = append(errs, f.Close())
		delete(s.files, p)
	}
	return errors.Join(errs...)
}

// Refresh reads the list of packs again: the indexes of new packs are read, removed ones
// forgotten. It reports whether the list changed.
func (s *Packs) Refresh() (bool, error) {
	packDir := filepath.Join(s.dir, "objects", "pack")
	found, err := listPacks(packDir)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	old := make(map[string]*packIndex, len(s.packs))
	for _, p := range s.packs {
		old[p.path] = p
	}
	s.mu.Unlock()
	packs := make([]*packIndex, 0, len(found))
	changed := len(found) != len(old)
	for _, f := range found {
		path := f.base + ".pack"
		if p, ok := old[path]; ok {
			packs = append(packs, p)
			continue
		}
		changed = true
		p, err := readPackIndex(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a merge since it was listed
		}
		if err != nil {
			return false, err
		}
		packs = append(packs, p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, f := range s.files {
		if !slices.Contains(packs, p) {
			_ = f.Close() // opened for reading only: Close has nothing to report
			delete(s.files, p)
		}
	}
	s.packs = packs
	return changed, nil
}

// location is where an object is stored: at off in pack p, or loose (p nil) under id h.
type location struct {
	p   *packIndex
	pos int // in p's index
	off int64
	h   plumbing.Hash
}

func (l location) String() string {
	if l.p == nil {
		return "loose object " + l.h.String()
	}
	return fmt.Sprintf("object at %d of %s", l.off, filepath.Base(l.p.path))
}

// locate finds object h: in the first pack that holds it, else loose.
func (s *Packs) locate(h plumbing.Hash) (location, bool, error) {
	s.mu.Lock()
	packs := s.packs
	s.mu.Unlock()
	for _, p := range packs {
		if pos, ok := p.find(h); ok {
			off, err := p.offset(pos)
			return location{p: p, pos: pos, off: off, h: h}, err == nil, err
		}
	}
	fi, err := os.Stat(s.loosePath(h))
	if err == nil && fi.Mode().IsRegular() {
		return location{h: h}, true, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return location{}, false, err
	}
	return location{}, false, nil
}

func (s *Packs) loosePath(h plumbing.Hash) string {
	hex := h.String()
	return filepath.Join(s.dir, "objects", hex[:2], hex[2:])
}

// file returns pack p's file for reading, and what to call once done with it.
func (s *Packs) file(p *packIndex) (io.ReaderAt, func(), error) {
	if !s.keep {
		if s.lender != nil {
			if f, release, ok := s.lender.Borrow(filepath.Base(p.path)); ok {
				return f, release, nil
			}
		}
		f, err := os.Open(p.path)
		if err != nil {
			return nil, nil, err
		}
		return f, func() { _ = f.Close() }, nil // opened for reading: Close has nothing to report
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.files[p]; ok {
		return f, func() {}, nil
	}
	f, err := os.Open(p.path)
	if err != nil {
		return nil, nil, err
	}
	s.files[p] = f
	return f, func() {}, nil
}

// header reads the header of the packed object at l.
func (s *Packs) header(l location) (objectHeader, error) {
	f, release, err := s.file(l.p)
	if err != nil {
		return objectHeader{}, err
	}
	defer release()
	var buf [64]byte
	n, err := f.ReadAt(buf[:], l.off)
	if n == 0 && err != nil {
		return objectHeader{}, fmt.Errorf("%s: %w", l, err)
	}
	h, err := readObjectHeader(bytes.NewReader(buf[:n]), l.off)
	if err != nil {
		return h, fmt.Errorf("%s: %w", l, err)
	}
	return h, nil
}

// zlibReader inflates one zlib stream of a pack, read from its file at an offset.
type zlibReader struct {
	br *bufio.Reader
	zr io.ReadCloser
}

// inflate returns the stream of n inflated bytes that starts at off in f, from the pool.
// It fails if the stream holds fewer or more bytes than n, or fails its checksum.
func (s *Packs) inflate(f io.ReaderAt, off, n int64, release func()) io.ReadCloser {
	return s.zpool.inflate(f, off, n, release)
}

// zlibPool keeps the inflaters of streams that were closed, for the next ones: a stream
// applied through a chain of deltas opens one per delta, again and again.
type zlibPool struct {
	pool sync.Pool // of *zlibReader
}

// inflate returns the stream of n inflated bytes that starts at off in f. It fails if the
// stream holds fewer or more bytes than n, or fails its checksum. release is called once
// it is closed.
func (zp *zlibPool) inflate(f io.ReaderAt, off, n int64, release func()) io.ReadCloser {
	z, _ := zp.pool.Get().(*zlibReader)
	if z == nil {
		z = &zlibReader{br: bufio.NewReaderSize(nil, 16*1024)}
	}
	z.br.Reset(io.NewSectionReader(f, off, 1<<62))
	return &sizedReader{pool: zp, z: z, left: n, release: release}
}

// sizedReader reads exactly its left bytes from a zlib stream, then makes sure the stream
// ends there (which checks its checksum).
type sizedReader struct {
	pool    *zlibPool
	z       *zlibReader
	started bool
	left    int64
	err     error
	release func()
}

func (r *sizedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if !r.started {
		r.started = true
		var err error
		if r.z.zr == nil {
			r.z.zr, err = zlib.NewReader(r.z.br)
		} else {
			err = r.z.zr.(zlib.Resetter).Reset(r.z.br, nil)
		}
		if err != nil {
			r.err = fmt.Errorf("inflate: %w", err)
			return 0, r.err
		}
	}
	if r.left == 0 {
		var one [1]byte
		if n, err := io.ReadFull(r.z.zr, one[:]); n > 0 {
			r.err = errors.New("inflate: stream longer than its declared size")
		} else if err != io.EOF {
			r.err = fmt.Errorf("inflate: %w", err)
		} else {
			r.err = io.EOF
		}
		return 0, r.err
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.z.zr.Read(p)
	r.left -= int64(n)
	if err == io.EOF {
		if r.left > 0 {
			err = errors.New("inflate: stream shorter than its declared size")
		} else {
			err = nil
		}
	}
	if err != nil {
		r.err = err
		if !errors.Is(err, io.EOF) {
			r.err = fmt.Errorf("inflate: %w", err)
		}
	}
	return n, r.err
}

func (r *sizedReader) Close() error {
	if r.z != nil {
		r.pool.pool.Put(r.z) // reusable whatever its state: the next use resets it
		r.z = nil
		r.release()
	}
	if r.err == nil {
		r.err = errors.New("read after close")
	}
	return nil
}

// maxDeltaChain bounds the deltas followed to reach an object's content (git caps its
// pack.depth at 4095 too): a longer chain, or one that loops, is a corrupt repository.
const maxDeltaChain = 4095

// memBase is the largest delta base held in memory while a delta is applied. A larger one
// streams, and is read again from its start for a copy that goes backwards in it.
const memBase = 1 << 20

// objectInfo is what a lookup learns of an object: where it is, its real type and size, and,
// for a delta, its stored header.
type objectInfo struct {
	loc  location
	hdr  objectHeader // packed objects only
	typ  plumbing.ObjectType
	size int64
	// A delta: its base, and the sizes its instructions declare.
	base       location
	baseSize   int64
	deltaBytes int64 // inflated size of its instructions
}

// stat learns what object is at l, following a delta's chain down to its whole object for
// its type, but not reading its content.
func (s *Packs) stat(l location) (objectInfo, error) {
	o, err := s.statShallow(l)
	if err == nil && isDelta(o.hdr.typ) {
		o.typ, err = s.chainType(o.base)
	}
	return o, err
}

// statShallow is stat without a delta's type, which takes a walk down its chain.
func (s *Packs) statShallow(l location) (objectInfo, error) {
	o := objectInfo{loc: l}
	if l.p == nil {
		typ, size, err := s.looseHeader(l.h)
		o.typ, o.size = typ, size
		return o, err
	}
	hdr, err := s.header(l)
	if err != nil {
		return o, err
	}
	o.hdr = hdr
	if !isDelta(hdr.typ) {
		o.typ, o.size = hdr.typ, int64(hdr.size)
		return o, nil
	}
	o.deltaBytes = int64(hdr.size)
	if o.base, err = s.deltaBase(l, hdr); err != nil {
		return o, err
	}
	src, target, err := s.deltaSizes(l, hdr)
	if err != nil {
		return o, err
	}
	o.baseSize, o.size = int64(src), int64(target)
	return o, nil
}

// largeDelta reports whether the object at l is a delta whose result, base or instructions
// weigh more than threshold bytes. It reads the pack once: the object's header and the
// start of its instructions are in the same few hundred bytes.
func (s *Packs) largeDelta(l location, threshold int64) (bool, error) {
	f, release, err := s.file(l.p)
	if err != nil {
		return false, err
	}
	defer release()
	var buf [512]byte
	n, err := f.ReadAt(buf[:], l.off)
	if n == 0 && err != nil {
		return false, fmt.Errorf("%s: %w", l, err)
	}
	hdr, err := readObjectHeader(bytes.NewReader(buf[:n]), l.off)
	if err != nil {
		return false, fmt.Errorf("%s: %w", l, err)
	}
	if !isDelta(hdr.typ) {
		return false, nil
	}
	if int64(hdr.size) > threshold {
		return true, nil
	}
	z := s.inflate(bytes.NewReader(buf[hdr.hdrLen:n]), 0, int64(hdr.size), func() {})
	defer z.Close() // a reader of this package: Close has nothing to report
	br := byteReader{r: z}
	src, err := readVarint(&br)
	var target uint64
	if err == nil {
		target, err = readVarint(&br)
	}
	if err != nil {
		// The sizes are further in than the bytes read: read them from the file.
		if src, target, err = s.deltaSizes(l, hdr); err != nil {
			return false, err
		}
	}
	return int64(src) > threshold || int64(target) > threshold, nil
}

// deltaBase returns where the base of the delta at l, with header hdr, is.
func (s *Packs) deltaBase(l location, hdr objectHeader) (location, error) {
	if hdr.typ == plumbing.OFSDeltaObject {
		_, pos, err := l.p.hashAt(hdr.base)
		if err != nil {
			return location{}, fmt.Errorf("%s: delta base: %w", l, err)
		}
		return location{p: l.p, pos: pos, off: hdr.base, h: l.p.name(pos)}, nil
	}
	base, ok, err := s.locate(hdr.ref)
	if err != nil {
		return location{}, err
	}
	if !ok {
		return location{}, fmt.Errorf("%s: delta base %s not found", l, hdr.ref)
	}
	return base, nil
}

// chainType follows the delta chain from l down to its whole object, and returns its type.
func (s *Packs) chainType(l location) (plumbing.ObjectType, error) {
	for range maxDeltaChain {
		if l.p == nil {
			typ, _, err := s.looseHeader(l.h)
			return typ, err
		}
		hdr, err := s.header(l)
		if err != nil {
			return plumbing.InvalidObject, err
		}
		if !isDelta(hdr.typ) {
			return hdr.typ, nil
		}
		if l, err = s.deltaBase(l, hdr); err != nil {
			return plumbing.InvalidObject, err
		}
	}
	return plumbing.InvalidObject, fmt.Errorf("%s: delta chain longer than %d", l, maxDeltaChain)
}

// deltaSizes reads the base and result sizes at the start of the instructions of the delta
// at l.
func (s *Packs) deltaSizes(l location, hdr objectHeader) (src, target uint64, err error) {
	f, release, err := s.file(l.p)
	if err != nil {
		return 0, 0, err
	}
	r := s.inflate(f, l.off+int64(hdr.hdrLen), int64(hdr.size), release)
	defer r.Close() // a reader from inflate: Close has nothing to report
	br := byteReader{r: r}
	if src, err = readVarint(&br); err == nil {
		target, err = readVarint(&br)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%s: delta header: %w", l, err)
	}
	if src > maxObjectSize || target > maxObjectSize {
		return 0, 0, fmt.Errorf("%s: delta declares a size over %d", l, int64(maxObjectSize))
	}
	return src, target, nil
}

// byteReader reads one byte at a time from r, without buffering ahead.
type byteReader struct {
	r   io.Reader
	buf [1]byte
}

func (b *byteReader) ReadByte() (byte, error) {
	if _, err := io.ReadFull(b.r, b.buf[:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	return b.buf[0], nil
}

// readVarint reads a delta's size: little-endian 7-bit groups.
func readVarint(r io.ByteReader) (uint64, error) {
	var v uint64
	for shift := uint(0); ; shift += 7 {
		if shift > 63 {
			return 0, errors.New("size too long")
		}
		c, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
}

// looseHeader reads the type and size of loose object h.
func (s *Packs) looseHeader(h plumbing.Hash) (plumbing.ObjectType, int64, error) {
	rc, typ, size, err := s.openLoose(h)
	if err != nil {
		return plumbing.InvalidObject, 0, err
	}
	_ = rc.Close() // opened for reading: Close has nothing to report
	return typ, size, nil
}

// openLoose returns the content of loose object h, its type and size.
func (s *Packs) openLoose(h plumbing.Hash) (io.ReadCloser, plumbing.ObjectType, int64, error) {
	f, err := os.Open(s.loosePath(h))
	if err != nil {
		return nil, plumbing.InvalidObject, 0, err
	}
	fail := func(err error) (io.ReadCloser, plumbing.ObjectType, int64, error) {
		_ = f.Close() // opened for reading: Close has nothing to report
		return nil, plumbing.InvalidObject, 0, fmt.Errorf("loose object %s: %w", h, err)
	}
	zr, err := zlib.NewReader(bufio.NewReaderSize(f, 16*1024))
	if err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(zr, 4096)
	head, err := br.ReadSlice(0)
	if err != nil {
		return fail(fmt.Errorf("header: %w", err))
	}
	kind, sizeText, ok := strings.Cut(string(head[:len(head)-1]), " ")
	typ, terr := plumbing.ParseObjectType(kind)
	size, serr := strconv.ParseInt(sizeText, 10, 64)
	if !ok || terr != nil || serr != nil || size < 0 || size > maxObjectSize || isDelta(typ) {
		return fail(fmt.Errorf("bad header %q", head))
	}
	r := &sizedLoose{r: br, left: size, closers: []io.Closer{zr, f}}
	return r, typ, size, nil
}

// sizedLoose reads exactly the declared size of a loose object's content.
type sizedLoose struct {
	r       *bufio.Reader
	left    int64
	closers []io.Closer
}

func (r *sizedLoose) Read(p []byte) (int, error) {
	if r.left == 0 {
		if _, err := r.r.ReadByte(); err != io.EOF {
			return 0, errors.New("loose object longer than its declared size")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.r.Read(p)
	r.left -= int64(n)
	if err == io.EOF && r.left > 0 {
		err = io.ErrUnexpectedEOF
	} else if err == io.EOF {
		err = nil
	}
	return n, err
}

func (r *sizedLoose) Close() error {
	for _, c := range r.closers {
		_ = c.Close() // a reader of a file opened for reading: Close has nothing to report
	}
	r.closers = nil
	return nil
}

// open returns the content of the object at l, with its type and size, streaming: a whole
// object inflates as it is read, a delta is applied as it is read.
func (s *Packs) open(l location) (io.ReadCloser, plumbing.ObjectType, int64, error) {
	return s.openDepth(l, 0)
}

func (s *Packs) openDepth(l location, depth int) (io.ReadCloser, plumbing.ObjectType, int64, error) {
	if depth > maxDeltaChain {
		return nil, plumbing.InvalidObject, 0, fmt.Errorf("%s: delta chain longer than %d", l, maxDeltaChain)
	}
	if l.p == nil {
		return s.openLoose(l.h)
	}
	o, err := s.statShallow(l)
	if err != nil {
		return nil, plumbing.InvalidObject, 0, err
	}
	if !isDelta(o.hdr.typ) {
		f, release, err := s.file(l.p)
		if err != nil {
			return nil, plumbing.InvalidObject, 0, err
		}
		return s.inflate(f, l.off+int64(o.hdr.hdrLen), o.size, release), o.typ, o.size, nil
	}

	var base *deltaBase
	if o.baseSize <= memBase {
		b, typ, err := s.readSmall(o.base, o.baseSize, depth)
		if err != nil {
			return nil, plumbing.InvalidObject, 0, err
		}
		o.typ, base = typ, &deltaBase{mem: b, size: o.baseSize}
	} else {
		if o.typ, err = s.chainType(o.base); err != nil {
			return nil, plumbing.InvalidObject, 0, err
		}
		base = &deltaBase{size: o.baseSize, open: func() (io.ReadCloser, int64, error) {
			rc, _, size, err := s.openDepth(o.base, depth+1)
			return rc, size, err
		}}
	}
	f, release, err := s.file(l.p)
	if err != nil {
		_ = base.Close() // nothing was opened yet
		return nil, plumbing.InvalidObject, 0, err
	}
	deltaRC := s.inflate(f, l.off+int64(o.hdr.hdrLen), o.deltaBytes, release)
	delta := bufio.NewReaderSize(deltaRC, 4096)
	// The two sizes were read by stat; they are read again to get past them.
	for range 2 {
		if _, err := readVarint(delta); err != nil {
			// Readers of this package: Close has nothing to report.
			_ = base.Close()
			_ = deltaRC.Close()
			return nil, plumbing.InvalidObject, 0, fmt.Errorf("%s: delta header: %w", l, err)
		}
	}
	return &patchReader{loc: l, delta: delta, deltaRC: deltaRC, base: base, left: uint64(o.size)}, o.typ, o.size, nil
}

// readSmall returns the whole content of the object at l, which the delta on it expects
// to be size bytes (at most memBase), and its type.
func (s *Packs) readSmall(l location, size int64, depth int) ([]byte, plumbing.ObjectType, error) {
	rc, typ, n, err := s.openDepth(l, depth+1)
	if err != nil {
		return nil, typ, err
	}
	defer rc.Close() // a reader of this package: Close has nothing to report
	if n != size {
		return nil, typ, fmt.Errorf("%s: delta base of %d bytes, the delta expects %d", l, n, size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, typ, fmt.Errorf("%s: %w", l, err)
	}
	// Read to the end of the stream, which checks it whole.
	if _, err := rc.Read(make([]byte, 1)); err != io.EOF {
		return nil, typ, fmt.Errorf("%s: read past its %d bytes: %v", l, size, err)
	}
	return b, typ, nil
}

// deltaBase is the base a delta copies from: in memory, in a file read where each copy
// starts, or a stream that is opened again when a copy goes backwards.
type deltaBase struct {
	mem  []byte
	file io.ReaderAt // of size bytes, if not nil
	size int64
	open func() (io.ReadCloser, int64, error)
	r    io.ReadCloser
	pos  int64 // of r
	// The copy under way.
	at, left int64
}

// seek starts a copy of n bytes at off.
func (b *deltaBase) seek(off, n int64) error {
	b.at, b.left = off, n
	if b.mem != nil || b.file != nil {
		return nil
	}
	if b.r == nil || off < b.pos {
		if b.r != nil {
			_ = b.r.Close() // a reader of this package: Close has nothing to report
			b.r = nil
		}
		r, size, err := b.open()
		if err != nil {
			return err
		}
		b.r, b.pos = r, 0
		if size != b.size {
			return fmt.Errorf("delta base of %d bytes, the delta expects %d", size, b.size)
		}
	}
	if skip := off - b.pos; skip > 0 {
		n, err := io.CopyN(io.Discard, b.r, skip)
		b.pos += n
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *deltaBase) Read(p []byte) (int, error) {
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	if b.mem != nil {
		n := copy(p, b.mem[b.at:])
		b.at += int64(n)
		b.left -= int64(n)
		return n, nil
	}
	if b.file != nil {
		n, err := b.file.ReadAt(p, b.at)
		b.at += int64(n)
		b.left -= int64(n)
		if n == len(p) || err == io.EOF && n > 0 {
			err = nil
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	n, err := b.r.Read(p)
	b.pos += int64(n)
	b.left -= int64(n)
	switch {
	case err == io.EOF && b.left > 0:
		err = io.ErrUnexpectedEOF
	case err == io.EOF:
		err = nil
	}
	return n, err
}

func (b *deltaBase) Close() error {
	if b.r != nil {
		_ = b.r.Close() // a reader of this package: Close has nothing to report
		b.r = nil
	}
	b.mem, b.file = nil, nil
	return nil
}

// patchReader applies a delta as it is read: its instructions, read as they stream, copy
// from the base or insert their own bytes.
type patchReader struct {
	loc     fmt.Stringer  // where the delta is, for errors
	delta   *bufio.Reader // over deltaRC
	deltaRC io.ReadCloser
	base    *deltaBase
	left    uint64 // bytes of the result not yet read
	// The instruction under way: a copy from the base, or an insert of insert bytes.
	copying bool
	insert  int
	err     error
}

func (r *patchReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for !r.copying && r.insert == 0 {
		if r.left == 0 {
			// The instructions must end with the result: read to their end, which also
			// checks the stream's checksum.
			if _, err := r.delta.ReadByte(); err != io.EOF {
				r.err = r.fail(errors.New("instructions go on past the result"))
				return 0, r.err
			}
			r.err = io.EOF
			return 0, io.EOF
		}
		if err := r.next(); err != nil {
			r.err = r.fail(err)
			return 0, r.err
		}
	}
	var n int
	var err error
	if r.copying {
		n, err = r.base.Read(p)
		if r.base.left == 0 {
			r.copying = false
		}
	} else {
		if len(p) > r.insert {
			p = p[:r.insert]
		}
		n, err = io.ReadFull(r.delta, p)
		r.insert -= n
	}
	r.left -= uint64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.err = r.fail(err)
	}
	return n, r.err
}

// next reads the next instruction.
func (r *patchReader) next() error {
	cmd, err := r.delta.ReadByte()
	if err != nil {
		return err
	}
	if cmd == 0 {
		return errors.New("reserved delta instruction 0")
	}
	if cmd&0x80 == 0 { // insert cmd bytes
		if uint64(cmd) > r.left {
			return errors.New("insert past the end of the result")
		}
		r.insert = int(cmd)
		return nil
	}
	var off, size uint64
	for i := range 4 {
		if cmd&(1<<i) != 0 {
			c, err := r.delta.ReadByte()
			if err != nil {
				return err
			}
			off |= uint64(c) << (8 * i)
		}
	}
	for i := range 3 {
		if cmd&(0x10<<i) != 0 {
			c, err := r.delta.ReadByte()
			if err != nil {
				return err
			}
			size |= uint64(c) << (8 * i)
		}
	}
	if size == 0 {
		size = 0x10000
	}
	if size > r.left || off+size > uint64(r.base.size) {
		return errors.New("copy out of range")
	}
	if err := r.base.seek(int64(off), int64(size)); err != nil {
		return fmt.Errorf("delta base: %w", err)
	}
	r.copying = true
	return nil
}

func (r *patchReader) fail(err error) error {
	return fmt.Errorf("%s: apply delta: %w", r.loc, err)
}

func (r *patchReader) Close() error {
	// Readers of this package: Close has nothing to report.
	_ = r.base.Close()
	_ = r.deltaRC.Close()
	if r.err == nil {
		r.err = errors.New("read after close")
	}
	return nil
}
