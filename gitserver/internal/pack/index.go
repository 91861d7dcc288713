package pack

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
)

// resolveDeltas gives every delta of p its id and real type by applying it to its base,
// read back from the stored pack at ra. It walks down from each whole object that some delta
// is based on, so a base is read once for all of its deltas (past the limits on what is
// kept, it streams again), and a chain's bases are kept only while their descendants are
// resolved. The walks are independent, and run on up to
// deltaWorkers cores. A delta whose base is not in the pack (a thin pack, which the
// advertisement's no-thin forbids) or does not apply is a bad pack, and so is a tree made by
// a delta that git's fsck would refuse (a *TreeError), and a chain of more than
// maxDeltaChain deltas.
//
// Memory is bounded whatever the sizes the objects declare (resolveLimits): a delta whose
// result, base or instructions are large is applied as it streams into its hasher, and a
// large base is kept in an unlinked temporary file next to ra's (if ra is an *os.File) for
// the deltas on it, not in memory.
func resolveDeltas(ra io.ReaderAt, p *scannedPack) error {
	dir := os.TempDir()
	if f, ok := ra.(*os.File); ok {
		dir = filepath.Dir(f.Name())
	}
	return resolveDeltasWithin(ra, p, ingestLimits, dir)
}

// resolveDeltasWithin is resolveDeltas within lim, keeping large bases in files under
// spillDir.
func resolveDeltasWithin(ra io.ReaderAt, p *scannedPack, lim resolveLimits, spillDir string) error {
	r, deltas := newDeltaResolver(p, ra, lim, spillDir)
	if deltas == 0 {
		return nil
	}
	resolved, err := r.walk(r.roots())
	if err != nil {
		return err
	}
	if left := deltas - resolved; left > 0 {
		return packErrorf("%d deltas have no base in the pack", left)
	}
	return nil
}

// deltaWorkers bounds the walks resolveDeltas runs at once, and so the bases held.
const deltaWorkers = 4

// deltaResolver holds the deltas of a pack by the base they name. The maps are only read
// while walks run; each delta is claimed by the one walk that resolves it (an object held
// twice in a pack has the same id twice, and its REF deltas would otherwise be met twice).
type deltaResolver struct {
	p        *scannedPack
	byOffset map[int64][]int         // OFS deltas by their base's offset
	byHash   map[plumbing.Hash][]int // REF deltas by their base's id
	claimed  []atomic.Bool

	streams // reads the stored pack for the deltas applied as they stream, keeps large bases
}

// newDeltaResolver files the deltas of p by their base, and returns how many there are.
func newDeltaResolver(p *scannedPack, ra io.ReaderAt, lim resolveLimits, spillDir string) (*deltaResolver, int) {
	r := &deltaResolver{p: p, claimed: make([]atomic.Bool, len(p.objects))}
	r.streams = streams{ra: storedPack{ra}, lim: lim, spillDir: spillDir}
	deltas := 0
	for i := range p.objects {
		o := &p.objects[i]
		switch o.typ {
		case plumbing.OFSDeltaObject:
			if r.byOffset == nil {
				r.byOffset = map[int64][]int{}
			}
			r.byOffset[o.base] = append(r.byOffset[o.base], i)
			deltas++
		case plumbing.REFDeltaObject:
			if r.byHash == nil {
				r.byHash = map[plumbing.Hash][]int{}
			}
			b := p.refBases[i]
			r.byHash[b] = append(r.byHash[b], i)
			deltas++
		}
	}
	return r, deltas
}

// roots returns the whole objects that some delta is based on, by object index.
func (r *deltaResolver) roots() []int {
	var roots []int
	for i := range r.p.objects {
		if o := &r.p.objects[i]; !isDelta(o.typ) && r.hasDeltas(o) {
			roots = append(roots, i)
		}
	}
	return roots
}

// walk resolves the deltas below each of roots, on up to deltaWorkers goroutines, and
// returns how many it resolved. It stops at the first error.
func (r *deltaResolver) walk(roots []int) (int, error) {
	var (
		next     atomic.Int64
		resolved atomic.Int64
		failed   atomic.Bool
		wg       sync.WaitGroup
		errs     = make([]error, min(runtime.GOMAXPROCS(0), deltaWorkers))
	)
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk := &walker{r: r, in: &packReader{ra: r.ra}}
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(roots) {
					return
				}
				n, err := wk.root(&r.p.objects[roots[i]])
				resolved.Add(int64(n))
				if err != nil {
					errs[w] = err
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	return int(resolved.Load()), errors.Join(errs...)
}

func (r *deltaResolver) hasDeltas(o *packObject) bool {
	return len(r.byOffset[o.offset]) > 0 || len(r.byHash[o.hash]) > 0
}

// mayHaveDeltas is hasDeltas for a delta whose id is not known yet.
func (r *deltaResolver) mayHaveDeltas(o *packObject) bool {
	return len(r.byOffset[o.offset]) > 0 || len(r.byHash) > 0
}

// walker is one walk of resolveDeltas, down from one root at a time.
type walker struct {
	r    *deltaResolver
	in   *packReader // inflates small objects whole
	held int64       // bytes of the contents held in memory (content.mem)
	buf  []byte      // for streaming a result into its hasher
}

// root resolves the deltas below the whole object o, and returns how many it resolved.
func (w *walker) root(o *packObject) (int, error) {
	c, err := w.whole(o)
	if err != nil {
		return 0, err
	}
	n, err := w.resolve(o, c, 0)
	w.drop(c)
	return n, err
}

// resolve resolves the deltas based on o, whose content is base, and theirs in turn, and
// returns how many it resolved. o is depth deltas down its chain.
func (w *walker) resolve(o *packObject, base *content, depth int) (int, error) {
	r := w.r
	lists := [2][]int{r.byOffset[o.offset], r.byHash[o.hash]}
	total := len(lists[0]) + len(lists[1])
	n, k := 0, 0
	for _, children := range lists {
		for _, i := range children {
			k++
			if r.claimed[i].Swap(true) {
				continue
			}
			d := &r.p.objects[i]
			if depth+1 > maxDeltaChain {
				return n, packErrorf("delta at %d: delta chain longer than %d", d.offset, maxDeltaChain)
			}
			c, err := w.apply(d, base, k == total)
			if err != nil {
				return n, err
			}
			n++
			if c != nil {
				m, err := w.resolve(d, c, depth+1)
				w.drop(c)
				n += m
				if err != nil {
					return n, err
				}
			}
		}
	}
	return n, nil
}

// apply applies the delta d to base, giving d its type and id, and returns d's content if
// some delta is based on d (else nil). last says d is the last delta on base: base may then
// be dropped. A small delta on a base held in memory is applied in memory; any other
// streams (applyStreaming).
func (w *walker) apply(d *packObject, base *content, last bool) (*content, error) {
	r := w.r
	var instr []byte // the delta's instructions, if small
	var src, target uint64
	var err error
	if int64(d.size) <= r.lim.large {
		if instr, err = w.in.inflate(d.data, d.size); err != nil {
			return nil, fmt.Errorf("read object at %d: %w", d.offset, err)
		}
		src, target, err = readDeltaSizes(bytes.NewReader(instr))
	} else {
		src, target, err = r.deltaSizes(d)
	}
	if err != nil {
		return nil, r.streamErr(fmt.Errorf("delta at %d: header: %w", d.offset, err))
	}
	switch {
	case src != uint64(base.size):
		return nil, packErrorf("delta at %d: its base has %d bytes, the delta expects %d", d.offset, base.size, src)
	case target > uint64(r.p.maxObject):
		return nil, &TooLargeError{Offset: d.offset, Size: int64(min(target, uint64(math.MaxInt64))), Max: r.p.maxObject}
	}
	d.typ = base.typ
	if base.mem == nil || instr == nil || int64(target) > r.lim.large {
		return w.applyStreaming(d, base, instr, int64(target), last)
	}
	content, err := packfile.PatchDelta(base.mem, instr)
	if err != nil {
		return nil, packErrorf("delta at %d: %v", d.offset, err)
	}
	d.hash = plumbing.ComputeHash(d.typ, content)
	if d.typ == plumbing.TreeObject {
		var tree treeChecker
		_, _ = tree.Write(content) // it keeps what it finds for check
		if err := tree.check(d.hash); err != nil {
			return nil, err
		}
	}
	if !r.hasDeltas(d) {
		return nil, nil
	}
	return w.keep(d, base, content, last)
}

// whole returns the content of the whole object o: held if it is small and there is room,
// else kept in a file if there is room on disk, else streamed from the stored pack.
func (w *walker) whole(o *packObject) (*content, error) {
	size := int64(o.size)
	if size <= w.r.lim.large && size <= w.r.lim.held-w.held {
		b, err := w.in.inflate(o.data, o.size)
		if err != nil {
			return nil, fmt.Errorf("read object at %d: %w", o.offset, err)
		}
		w.held += size
		return &content{typ: o.typ, size: size, mem: b}, nil
	}
	f, err := w.r.newSpill(size)
	if err != nil {
		return nil, err
	}
	if f == nil {
		return w.r.wholeStreamed(o), nil
	}
	c := &content{typ: o.typ, size: size, file: f}
	if err := w.r.spillWhole(o, f); err != nil {
		w.drop(c)
		return nil, err
	}
	return c, nil
}

// keep returns the content of the delta d, result, which some delta is based on: held in
// memory if there is room (base dropped first if d is the last delta on it), else kept in
// a file if there is room on disk, else streamed again from base when needed.
func (w *walker) keep(d *packObject, base *content, result []byte, last bool) (*content, error) {
	size := int64(len(result))
	room := w.r.lim.held - w.held
	if last && base.mem != nil {
		room += base.size
	}
	if size > room {
		f, err := w.r.newSpill(size)
		if err != nil {
			return nil, err
		}
		if f == nil {
			return w.r.deltaStreamed(d, base, size), nil
		}
		c := &content{typ: d.typ, size: size, file: f}
		if _, err := f.WriteAt(result, 0); err != nil {
			w.drop(c)
			return nil, fmt.Errorf("keep the delta at %d: %w", d.offset, err)
		}
		return w.detach(c, base, last), nil
	}
	if result == nil {
		result = []byte{} // held, though empty
	}
	w.held += size
	return w.detach(&content{typ: d.typ, size: size, mem: result}, base, last), nil
}

// detach returns c, the content of a delta on base held in memory or in a file, which does
// not need base: base is dropped if no other delta is based on it (last).
func (w *walker) detach(c, base *content, last bool) *content {
	if last {
		w.drop(base)
	}
	return c
}

// drop forgets c once no delta needs it any more.
func (w *walker) drop(c *content) {
	if c.mem != nil {
		w.held -= c.size
		c.mem = nil
	}
	if c.file != nil {
		w.r.unspill(c.file, c.size)
		c.file = nil
	}
	c.open = nil
}

// index is the pack's index (.idx version 2), once every object has its id.
// An object may appear once: git never sends one twice, and an index with fewer entries
// than its pack has objects could not be merged (mergePacks walks a pack by its index).
func (p *scannedPack) index() (*idxfile.MemoryIndex, error) {
	w := new(idxfile.Writer)
	if err := w.OnHeader(uint32(len(p.objects))); err != nil {
		return nil, err
	}
	for _, o := range p.objects {
		w.Add(o.hash, uint64(o.offset), o.crc)
	}
	if err := w.OnFooter(p.sum); err != nil {
		return nil, err
	}
	idx, err := w.Index()
	if err != nil {
		return nil, err
	}
	n, err := idx.Count()
	if err != nil {
		return nil, err
	}
	if n != int64(len(p.objects)) {
		return nil, packErrorf("%d objects appear more than once", int64(len(p.objects))-n)
	}
	return idx, nil
}

// packReader inflates objects of a stored pack.
type packReader struct {
	ra io.ReaderAt
	br *bufio.Reader
	zr io.ReadCloser
}

// inflate returns the size bytes of the zlib stream at off.
func (r *packReader) inflate(off int64, size uint64) ([]byte, error) {
	sr := io.NewSectionReader(r.ra, off, math.MaxInt64-off)
	if r.br == nil {
		r.br = bufio.NewReaderSize(sr, 64*1024)
	} else {
		r.br.Reset(sr)
	}
	var err error
	if r.zr == nil {
		r.zr, err = zlib.NewReader(r.br)
	} else {
		err = r.zr.(zlib.Resetter).Reset(r.br, nil)
	}
	if err != nil {
		return nil, err
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r.zr, b); err != nil {
		return nil, err
	}
	return b, nil
}
