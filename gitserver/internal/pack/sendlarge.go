package pack

import (
	"errors"
	"io"
	"io/fs"
	"sync"

	"github.com/go-git/go-git/v5/plumbing"
)

// LargeDeltas reads, in go-git's place, the deltas that go-git v5 cannot read right or
// within bounded memory: those whose result, base or instructions weigh more than a
// threshold (the storage's LargeObjectThreshold). go-git streams such a delta's result
// with packfile.ReaderFromDelta, which returns wrong bytes, silently, once a copy goes
// backwards in the base and a later one forwards (go-git#2378, open as of v5.19.3; fix
// proposed in #2379, #2295); and it applies a delta with a smaller result on a base it
// inflates whole, and reads a delta's instructions whole.
//
// Get is meant to be consulted first by the go-git storage's object cache: go-git asks its
// cache for every object before it decodes it, and for a large delta's content before it
// streams it, and uses what the cache returns. For any other object, Get says no and go-git
// reads it itself. It needs no Close: it keeps no file open between reads, and reads through
// the pack files its lender (the go-git storage) holds open when it can.
type LargeDeltas struct {
	dir       string
	threshold int64
	lender    PackLender

	mu     sync.Mutex // guards the fields below
	packs  *Packs     // nil until the first Get
	recent [16]verdict
	next   int
}

// verdict is Get's answer for one object, remembered: go-git asks twice per lookup.
type verdict struct {
	set bool
	h   plumbing.Hash
	obj plumbing.EncodedObject // nil: go-git reads it
}

// NewLargeDeltas reads the large deltas of the bare repository at dir, those whose result,
// base or instructions weigh more than threshold bytes. lender, if not nil, lends the pack
// files the go-git storage holds open.
func NewLargeDeltas(dir string, threshold int64, lender PackLender) *LargeDeltas {
	return &LargeDeltas{dir: dir, threshold: threshold, lender: lender}
}

// Get returns a streaming object for h if h is a large delta. Any failure to read h says
// no: go-git then reads it itself, and reports what is wrong with it.
func (l *LargeDeltas) Get(h plumbing.Hash) (plumbing.EncodedObject, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range l.recent {
		if v.set && v.h == h {
			return v.obj, v.obj != nil
		}
	}
	obj, err := l.lookup(h)
	if err != nil {
		return nil, false
	}
	l.recent[l.next] = verdict{set: true, h: h, obj: obj}
	l.next = (l.next + 1) % len(l.recent)
	return obj, obj != nil
}

// lookup returns a streaming object for h if it is a large delta, nil otherwise. The
// caller holds mu.
func (l *LargeDeltas) lookup(h plumbing.Hash) (plumbing.EncodedObject, error) {
	if l.packs == nil {
		packs, err := openPacksUnkept(l.dir, l.lender)
		if err != nil {
			return nil, err
		}
		l.packs = packs
	}
	for attempt := 0; ; attempt++ {
		obj, err := l.find(h)
		if attempt == 0 && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, plumbing.ErrObjectNotFound)) {
			// A pack stored or merged since the packs were listed.
			if changed, rerr := l.packs.Refresh(); rerr == nil && changed {
				continue
			}
		}
		return obj, err
	}
}

// find is lookup with the packs as listed.
func (l *LargeDeltas) find(h plumbing.Hash) (plumbing.EncodedObject, error) {
	loc, ok, err := l.packs.locate(h)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, plumbing.ErrObjectNotFound
	}
	if loc.p == nil {
		return nil, nil // loose: go-git streams those above its threshold itself
	}
	large, err := l.packs.largeDelta(loc, l.threshold)
	if err != nil || !large {
		return nil, err
	}
	o, err := l.packs.stat(loc)
	if err != nil {
		return nil, err
	}
	return &streamedObject{packs: l.packs, loc: loc, typ: o.typ, size: o.size}, nil
}

// streamedObject is an object go-git reads through Packs: its content streams, the delta
// applied as it is read.
type streamedObject struct {
	packs *Packs
	loc   location
	typ   plumbing.ObjectType
	size  int64
}

var _ plumbing.EncodedObject = (*streamedObject)(nil)

func (o *streamedObject) Hash() plumbing.Hash         { return o.loc.h }
func (o *streamedObject) Type() plumbing.ObjectType   { return o.typ }
func (o *streamedObject) SetType(plumbing.ObjectType) {}
func (o *streamedObject) Size() int64                 { return o.size }
func (o *streamedObject) SetSize(int64)               {}
func (o *streamedObject) Writer() (io.WriteCloser, error) {
	return nil, errors.New("stored objects are read-only")
}

// Reader streams the object's content.
func (o *streamedObject) Reader() (io.ReadCloser, error) {
	rc, _, _, err := o.packs.open(o.loc)
	return rc, err
}
