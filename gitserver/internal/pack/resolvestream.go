package pack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing"
)

// resolveLimits bound what resolving the deltas of a pack may take, whatever the sizes its
// objects declare: a delta of a few KB may declare a result of a TiB (a delta bomb).
//
// A delta is applied in memory only if its instructions, its base and its result are at
// most large bytes. Any other is applied as it streams: its base read from where it is
// kept, its result written into its hasher (and a tree's checker) and never held in memory
// whole. A result larger than large that some delta is based on (and a large whole object
// some delta is based on) is written to an unlinked temporary file as it streams, which the
// deltas on it read where each of their copies starts: reading a chain costs its size.
// Memory is then bounded by deltaWorkers walks, each holding at most held bytes of bases,
// and large bytes of instructions and of a result.
//
// Past spill bytes of files at once, a large base is not kept: it is streamed again, through
// its chain, for each delta that reads it, and each copy that goes backwards in it reads it
// again from its start. That costs time instead: a chain of k deltas of size S reads about
// k*k*S/2 bytes, and with copies backwards at each level, exponentially more. The bytes read
// while streaming are counted against work times the sizes (result plus base) of the
// deltas that streamed, and a pack past that is refused, as is one whose chain would stream
// through more than nested deltas at once (each holding a zlib stream, about 64 KiB).
type resolveLimits struct {
	large  int64 // results, bases and instructions above this stream
	held   int64 // bytes of bases one walk holds in memory at most
	spill  int64 // bytes of bases kept in files at once, at most
	files  int   // files kept at once (each an open descriptor), at most
	nested int   // deltas streaming through one another, at most
	work   int64 // the bytes streamed may be this many times the deltas' sizes
}

// ingestLimits are the limits of Store: objects up to memBase (1 MiB, as on the fetch
// side) in memory; 16 MiB of bases held by each of the deltaWorkers walks; 2 GiB of bases
// in at most 64 files (max_push_size's default: as much disk as a push may take anyway; a
// chain takes two files at once, a base with several deltas on it one more per level); 128
// nested streams, 8 MiB or so; and 16 times the size of what streams.
var ingestLimits = resolveLimits{large: memBase, held: 16 << 20, spill: 2 << 30, files: 64, nested: 128, work: 16}

// content is an object's content as the deltas on it read it: held in memory, kept in a
// file, or streamed from the stored pack again for each delta that reads it.
type content struct {
	typ   plumbing.ObjectType
	size  int64
	mem   []byte                        // the content, if held
	file  *os.File                      // the content, if kept in a file
	open  func() (io.ReadCloser, error) // streams it, if neither
	depth int                           // zlib streams open reads through at once
}

// streams reads the stored pack for the deltas that are applied as they stream, keeps the
// count of the bytes they read, and keeps large bases in files.
type streams struct {
	ra       storedPack
	lim      resolveLimits
	spillDir string
	zpool    zlibPool

	work      atomic.Int64 // bytes read by the streams
	allowance atomic.Int64 // bytes they may read
	spilled   atomic.Int64 // bytes of the files kept
	files     atomic.Int64 // files kept
}

// applyStreaming applies the delta d, whose result is target bytes, to base as it streams,
// its instructions instr if they were read already (else they stream too). It gives d its
// id, and returns its content if some delta is based on d: held if it is small and there is
// room, else kept in a file if it is large and there is room on disk, else streamed again.
func (w *walker) applyStreaming(d *packObject, base *content, instr []byte, target int64, last bool) (_ *content, err error) {
	r := w.r
	if base.depth+1 > r.lim.nested {
		return nil, packErrorf("delta at %d: its chain streams through more than %d large objects", d.offset, r.lim.nested)
	}
	r.grant(target + base.size)
	// A large result with OFS deltas on it is kept as it streams; one with REF deltas on it
	// is known only once its id is, and is streamed again to be kept.
	var kept *content
	if target > r.lim.large && len(r.byOffset[d.offset]) > 0 {
		f, err := r.newSpill(target)
		if err != nil {
			return nil, err
		}
		if f != nil {
			kept = &content{typ: d.typ, size: target, file: f}
		}
	}
	defer func() {
		if kept != nil && err != nil {
			w.drop(kept)
		}
	}()

	rc, err := r.openDelta(d, base, instr, target)
	if err != nil {
		return nil, r.streamErr(err)
	}
	defer rc.Close() // a reader of this package: Close has nothing to report
	hasher := plumbing.NewHasher(d.typ, target)
	sinks := []io.Writer{hasher}
	var tree *treeChecker
	if d.typ == plumbing.TreeObject {
		tree = &treeChecker{}
		sinks = append(sinks, tree)
	}
	var result *bytes.Buffer
	if target <= r.lim.large && r.mayHaveDeltas(d) {
		result = bytes.NewBuffer(make([]byte, 0, target))
		sinks = append(sinks, result)
	}
	if err := w.copy(io.MultiWriter(sinks...), rc, kept, d, target); err != nil {
		return nil, err
	}
	d.hash = hasher.Sum()
	if tree != nil {
		if err := tree.check(d.hash); err != nil {
			return nil, err
		}
	}
	switch {
	case !r.hasDeltas(d):
		if kept != nil {
			w.drop(kept)
		}
		return nil, nil
	case result != nil:
		return w.keep(d, base, result.Bytes(), last)
	case kept != nil:
		return w.detach(kept, base, last), nil
	}
	f, err := r.newSpill(target)
	if err != nil {
		return nil, err
	}
	if f == nil {
		return r.deltaStreamed(d, base, target), nil
	}
	kept = &content{typ: d.typ, size: target, file: f}
	again, err := r.openDelta(d, base, nil, target)
	if err != nil {
		return nil, r.streamErr(err)
	}
	defer again.Close() // a reader of this package: Close has nothing to report
	if err := w.copy(io.Discard, again, kept, d, target); err != nil {
		return nil, err
	}
	return w.detach(kept, base, last), nil
}

// copy copies the result of the delta d, target bytes, from rc to sink, and to the file of
// kept if it is not nil.
func (w *walker) copy(sink io.Writer, rc io.Reader, kept *content, d *packObject, target int64) error {
	if w.buf == nil {
		w.buf = make([]byte, 64*1024)
	}
	var fw *bufio.Writer
	if kept != nil {
		fw = bufio.NewWriterSize(fileWriter{kept.file}, 64*1024)
		sink = io.MultiWriter(sink, fw)
	}
	n, err := io.CopyBuffer(sink, rc, w.buf)
	if err == nil && fw != nil {
		err = fw.Flush()
	}
	switch {
	case err != nil:
		return w.r.streamErr(err)
	case n != target:
		return packErrorf("delta at %d: makes %d bytes, declares %d", d.offset, n, target)
	}
	return nil
}

// newSpill returns a new unlinked temporary file for a base of size bytes, or nil if the
// files kept would then be more, or take more, than the limits.
func (s *streams) newSpill(size int64) (*os.File, error) {
	if n, files := s.spilled.Add(size), s.files.Add(1); n > s.lim.spill || files > int64(s.lim.files) {
		s.spilled.Add(-size)
		s.files.Add(-1)
		return nil, nil
	}
	f, err := os.CreateTemp(s.spillDir, "tmp_pack_base_")
	if err != nil {
		s.spilled.Add(-size)
		s.files.Add(-1)
		return nil, fmt.Errorf("keep a delta base: %w", err)
	}
	// Unlinked: its space goes when it is closed, or when the process ends.
	if err := os.Remove(f.Name()); err != nil {
		s.unspill(f, size)
		return nil, fmt.Errorf("keep a delta base: %w", err)
	}
	return f, nil
}

// unspill closes f, a file from newSpill of size bytes.
func (s *streams) unspill(f *os.File, size int64) {
	_ = f.Close() // unlinked, and read no more: its Close has nothing to report
	s.spilled.Add(-size)
	s.files.Add(-1)
}

// spillWhole writes the content of the whole object o to f.
func (s *streams) spillWhole(o *packObject, f *os.File) error {
	rc := s.zpool.inflate(s.ra, o.data, int64(o.size), func() {})
	defer rc.Close() // a reader of this package: Close has nothing to report
	fw := bufio.NewWriterSize(f, 64*1024)
	_, err := io.Copy(fw, rc)
	if err == nil {
		err = fw.Flush()
	}
	if err != nil {
		return fmt.Errorf("keep the object at %d: %w", o.offset, err)
	}
	return nil
}

// wholeStreamed is the content of the whole object o, inflated from the stored pack each
// time it is read.
func (s *streams) wholeStreamed(o *packObject) *content {
	size := int64(o.size)
	return &content{typ: o.typ, size: size, depth: 1, open: func() (io.ReadCloser, error) {
		return s.counted(s.zpool.inflate(s.ra, o.data, size, func() {})), nil
	}}
}

// deltaStreamed is the content of the delta d, of size bytes, applied to base each time it
// is read.
func (s *streams) deltaStreamed(d *packObject, base *content, size int64) *content {
	return &content{typ: d.typ, size: size, depth: base.depth + 1, open: func() (io.ReadCloser, error) {
		return s.openDelta(d, base, nil, size)
	}}
}

// openDelta returns the result of the delta d, target bytes, applied to base as it is
// read; its instructions are instr if not nil, else inflated as they are read.
func (s *streams) openDelta(d *packObject, base *content, instr []byte, target int64) (io.ReadCloser, error) {
	var deltaRC io.ReadCloser
	if instr != nil {
		deltaRC = io.NopCloser(bytes.NewReader(instr))
	} else {
		deltaRC = s.zpool.inflate(s.ra, d.data, int64(d.size), func() {})
	}
	delta := bufio.NewReaderSize(deltaRC, 4096)
	// apply read the two sizes already; they are read again to get past them.
	for range 2 {
		if _, err := readVarint(delta); err != nil {
			_ = deltaRC.Close() // a reader of this package: Close has nothing to report
			return nil, fmt.Errorf("delta at %d: header: %w", d.offset, err)
		}
	}
	db := &deltaBase{mem: base.mem, size: base.size}
	if base.file != nil {
		db.file = base.file
	} else if base.mem == nil {
		if base.open == nil {
			_ = deltaRC.Close() // a reader of this package: Close has nothing to report
			return nil, fmt.Errorf("delta at %d: its base was dropped", d.offset)
		}
		db.open = func() (io.ReadCloser, int64, error) {
			rc, err := base.open()
			return rc, base.size, err
		}
	}
	pr := &patchReader{loc: deltaAt(d.offset), delta: delta, deltaRC: deltaRC, base: db, left: uint64(target)}
	return s.counted(pr), nil
}

// deltaSizes reads the base and result sizes at the start of the instructions of the delta
// d, inflating no more of them than that.
func (s *streams) deltaSizes(d *packObject) (src, target uint64, err error) {
	rc := s.zpool.inflate(s.ra, d.data, int64(d.size), func() {})
	defer rc.Close() // a reader of this package: Close has nothing to report
	return readDeltaSizes(&byteReader{r: rc})
}

// readDeltaSizes reads the two sizes a delta's instructions start with.
func readDeltaSizes(r io.ByteReader) (src, target uint64, err error) {
	if src, err = readVarint(r); err == nil {
		target, err = readVarint(r)
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return src, target, err
}

// grant lets the streams read work times n more bytes.
func (s *streams) grant(n int64) {
	// Past 2^61 bytes nothing counts any more; each grant is at most work * 2^41.
	if s.allowance.Load() < 1<<61 {
		s.allowance.Add(s.lim.work * n)
	}
}

// errStreamWork is what a stream fails with once the streams have read more than they may.
var errStreamWork = errors.New("streamed more than allowed")

// counted counts the bytes read from rc against the allowance.
func (s *streams) counted(rc io.ReadCloser) io.ReadCloser {
	return &countedReader{ReadCloser: rc, s: s}
}

type countedReader struct {
	io.ReadCloser
	s *streams
}

func (c *countedReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 && c.s.work.Add(int64(n)) > c.s.allowance.Load() {
		return n, errStreamWork
	}
	return n, err
}

// streamErr tells what failed while a delta streamed: the pack (ErrBad), or the server's
// own files (a *fileError).
func (s *streams) streamErr(err error) error {
	var fe *fileError
	switch {
	case errors.Is(err, errStreamWork):
		return packErrorf("its deltas would take more than %d times their size to apply (long chains of large deltas, or copies back and forth in large objects)", s.lim.work)
	case errors.As(err, &fe):
		return err
	}
	return packErrorf("%v", err)
}

// deltaAt names the delta at an offset of the pack being stored, for errors.
type deltaAt int64

func (d deltaAt) String() string { return fmt.Sprintf("delta at %d", int64(d)) }

// storedPack is the pack being stored, read back from its file: a read that fails is the
// server's fault, not the pack's, and its error is a *fileError to tell them apart.
type storedPack struct{ ra io.ReaderAt }

func (s storedPack) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.ra.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = &fileError{fmt.Errorf("read the pack back: %w", err)}
	}
	return n, err
}

// fileWriter writes a kept base to its file: a write that fails is the server's fault,
// and its error is a *fileError.
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = &fileError{fmt.Errorf("keep a delta base: %w", err)}
	}
	return n, err
}

// fileError is a failure of the server's own files while deltas stream: the stored pack,
// or a kept base.
type fileError struct{ err error }

func (e *fileError) Error() string { return e.err.Error() }
func (e *fileError) Unwrap() error { return e.err }
