package gitserver

import (
	"bufio"
	"compress/zlib"
	"fmt"
	"io"
	"math"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
)

// resolveDeltas gives every delta of p its id and real type by applying it to its base,
// read back from the stored pack at ra. It walks down from each whole object that some delta
// is based on, so a base is inflated once for all of its deltas, and a chain's bases are
// held in memory only while their descendants are resolved. A delta whose base is not in
// the pack (a thin pack, which the advertisement's no-thin forbids) or does not apply is a
// bad pack.
func resolveDeltas(ra io.ReaderAt, p *scannedPack) error {
	r := &deltaResolver{p: p, in: packReader{ra: ra}}
	for i := range p.objects {
		o := &p.objects[i]
		switch o.typ {
		case plumbing.OFSDeltaObject:
			if r.byOffset == nil {
				r.byOffset = map[int64][]int{}
			}
			r.byOffset[o.base] = append(r.byOffset[o.base], i)
			r.pending++
		case plumbing.REFDeltaObject:
			if r.byHash == nil {
				r.byHash = map[plumbing.Hash][]int{}
			}
			b := p.refBases[i]
			r.byHash[b] = append(r.byHash[b], i)
			r.pending++
		}
	}
	for i := 0; i < len(p.objects) && r.pending > 0; i++ {
		o := &p.objects[i]
		if isDelta(o.typ) || !r.hasDeltas(o) {
			continue
		}
		content, err := r.in.inflate(o.data, o.size)
		if err != nil {
			return fmt.Errorf("read object at %d: %w", o.offset, err)
		}
		if err := r.resolve(o, content); err != nil {
			return err
		}
	}
	if r.pending > 0 {
		return packErrorf("%d deltas have no base in the pack", r.pending)
	}
	return nil
}

// deltaResolver holds the deltas still to resolve, by the base they name.
type deltaResolver struct {
	p        *scannedPack
	in       packReader
	byOffset map[int64][]int         // OFS deltas by their base's offset
	byHash   map[plumbing.Hash][]int // REF deltas by their base's id
	pending  int
}

func (r *deltaResolver) hasDeltas(o *packObject) bool {
	return len(r.byOffset[o.offset]) > 0 || len(r.byHash[o.hash]) > 0
}

// resolve resolves the deltas based on o, whose content is base, and theirs in turn.
func (r *deltaResolver) resolve(o *packObject, base []byte) error {
	children := append(r.byOffset[o.offset], r.byHash[o.hash]...)
	delete(r.byOffset, o.offset)
	delete(r.byHash, o.hash)
	for _, i := range children {
		d := &r.p.objects[i]
		delta, err := r.in.inflate(d.data, d.size)
		if err != nil {
			return fmt.Errorf("read object at %d: %w", d.offset, err)
		}
		content, err := packfile.PatchDelta(base, delta)
		if err != nil {
			return packErrorf("delta at %d: %v", d.offset, err)
		}
		d.typ, d.hash = o.typ, plumbing.ComputeHash(o.typ, content)
		r.pending--
		if r.hasDeltas(d) {
			if err := r.resolve(d, content); err != nil {
				return err
			}
		}
	}
	return nil
}

// index is the pack's index (.idx version 2), once every object has its id.
func (p *scannedPack) index() (*idxfile.MemoryIndex, error) {
	w := new(idxfile.Writer)
	w.OnHeader(uint32(len(p.objects)))
	for _, o := range p.objects {
		w.Add(o.hash, uint64(o.offset), o.crc)
	}
	if err := w.OnFooter(p.sum); err != nil {
		return nil, err
	}
	return w.Index()
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
