package pack

import (
	"bufio"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
)

// resolveDeltas gives every delta of p its id and real type by applying it to its base,
// read back from the stored pack at ra. It walks down from each whole object that some delta
// is based on, so a base is inflated once for all of its deltas, and a chain's bases are
// held in memory only while their descendants are resolved. The walks are independent, and
// run on up to deltaWorkers cores. A delta whose base is not in the pack (a thin pack, which
// the advertisement's no-thin forbids) or does not apply is a bad pack, and so is a tree
// made by a delta that git's fsck would refuse (a *TreeError).
func resolveDeltas(ra io.ReaderAt, p *scannedPack) error {
	r, deltas := newDeltaResolver(p)
	if deltas == 0 {
		return nil
	}
	resolved, err := r.walk(ra, r.roots())
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
}

// newDeltaResolver files the deltas of p by their base, and returns how many there are.
func newDeltaResolver(p *scannedPack) (*deltaResolver, int) {
	r := &deltaResolver{p: p, claimed: make([]atomic.Bool, len(p.objects))}
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
func (r *deltaResolver) walk(ra io.ReaderAt, roots []int) (int, error) {
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
			in := &packReader{ra: ra}
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(roots) {
					return
				}
				o := &r.p.objects[roots[i]]
				content, err := in.inflate(o.data, o.size)
				if err == nil {
					var n int
					n, err = r.resolve(in, o, content)
					resolved.Add(int64(n))
				}
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

// resolve resolves the deltas based on o, whose content is base, and theirs in turn, and
// returns how many it resolved.
func (r *deltaResolver) resolve(in *packReader, o *packObject, base []byte) (int, error) {
	n := 0
	for _, children := range [][]int{r.byOffset[o.offset], r.byHash[o.hash]} {
		for _, i := range children {
			if r.claimed[i].Swap(true) {
				continue
			}
			d := &r.p.objects[i]
			delta, err := in.inflate(d.data, d.size)
			if err != nil {
				return n, fmt.Errorf("read object at %d: %w", d.offset, err)
			}
			content, err := packfile.PatchDelta(base, delta)
			if err != nil {
				return n, packErrorf("delta at %d: %v", d.offset, err)
			}
			d.typ, d.hash = o.typ, plumbing.ComputeHash(o.typ, content)
			if d.typ == plumbing.TreeObject {
				var tree treeChecker
				_, _ = tree.Write(content) // it keeps what it finds for check
				if err := tree.check(d.hash); err != nil {
					return n, err
				}
			}
			n++
			if r.hasDeltas(d) {
				m, err := r.resolve(in, d, content)
				n += m
				if err != nil {
					return n, err
				}
			}
		}
	}
	return n, nil
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
