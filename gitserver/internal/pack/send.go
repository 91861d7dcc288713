package pack

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"slices"

	"github.com/go-git/go-git/v5/plumbing"
)

// sendChunk is the most WritePack writes at once.
const sendChunk = 32 * 1024

// SendOptions is what the client of a fetch accepts in the pack it is sent.
type SendOptions struct {
	// OFSDelta (capability ofs-delta): a delta may name its base in the pack by offset.
	// Without it, every delta names its base by id (REF_DELTA).
	OFSDelta bool
	// ClientHas (capability thin-pack) reports whether the client has object h, so that a
	// delta on it may be sent as it is stored (a thin pack: the client completes it). Nil:
	// no thin pack.
	ClientHas func(h plumbing.Hash) (bool, error)
}

// SendStats is how the objects of a pack were sent.
type SendStats struct {
	Objects  int // in the pack
	Deltas   int // sent as deltas, on a base in the pack or (Thin) on one the client has
	Thin     int // deltas on a base the client has
	Inflated int // stored as deltas on a base the client lacks, sent whole
	Loose    int // loose objects, compressed for the pack
}

// WritePack writes to w a pack of the objects objs (each at most once), as they are stored:
// a whole object is copied as stored, header and zlib stream; a delta whose base is in the
// pack is copied with its base named anew (an offset rewritten for the new pack, where the
// base always comes first); a delta on a base the client has (opt.ClientHas) is copied
// naming its base by id; any other delta is applied as it streams and sent whole, deflated
// again. Loose objects are deflated as they stream. No object is held in memory whole.
// The trailer is the SHA-1 of all that was written. ctx is checked between objects. w gets
// writes of at most 32 KiB.
func (s *Packs) WritePack(ctx context.Context, w io.Writer, objs []plumbing.Hash, opt SendOptions) (SendStats, error) {
	plan, err := s.plan(objs, opt)
	if err != nil {
		return SendStats{}, err
	}
	// Writes to w are at most sendChunk bytes: one sideband packet each.
	out := &sendWriter{w: bufio.NewWriterSize(w, sendChunk), h: sha1.New()}
	var hdr [12]byte
	copy(hdr[:], "PACK")
	binary.BigEndian.PutUint32(hdr[4:], 2)
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(plan.order)))
	if _, err := out.Write(hdr[:]); err != nil {
		return SendStats{}, err
	}
	buf := make([]byte, sendChunk)
	cur := &packCursor{s: s}
	defer cur.close()
	for _, e := range plan.order {
		if err := ctx.Err(); err != nil {
			return plan.stats, err
		}
		if err := plan.write(s, cur, out, e, buf); err != nil {
			return plan.stats, err
		}
	}
	sum := out.h.Sum(nil)
	if _, err := out.w.Write(sum); err != nil {
		return plan.stats, err
	}
	return plan.stats, out.w.Flush()
}

// How one object of a fetch's pack is sent.
const (
	sendCopy     = iota // as stored: a whole object, or a delta on a base in the pack
	sendThin            // a delta on a base the client has, named by id
	sendInflated        // a delta on a base the client lacks: applied, sent whole
	sendLoose           // a loose object, deflated
)

// sendEntry is one object of a fetch's pack.
type sendEntry struct {
	h    plumbing.Hash
	loc  location
	hdr  objectHeader // packed only
	how  int
	base *sendEntry // sendCopy of a delta: its base, in the pack
	at   int64      // its offset in the new pack, once written; -1 before
	// sendThin: the base's id.
	baseID plumbing.Hash
}

// sendPlan is the pack to send: its objects in the order written, each base before its
// deltas.
type sendPlan struct {
	order []*sendEntry
	opt   SendOptions
	stats SendStats
	zw    *zlib.Writer // reused for every object deflated
}

// plan finds each object of objs, reads how it is stored, and decides how it is sent and in
// what order.
func (s *Packs) plan(objs []plumbing.Hash, opt SendOptions) (*sendPlan, error) {
	byID := make(map[plumbing.Hash]*sendEntry, len(objs))
	entries := make([]sendEntry, 0, len(objs))
	for _, h := range objs {
		if _, dup := byID[h]; dup {
			continue
		}
		loc, ok, err := s.locate(h)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("object %s: %w", h, plumbing.ErrObjectNotFound)
		}
		entries = append(entries, sendEntry{h: h, loc: loc, at: -1})
		byID[h] = nil
	}
	// Stored order, pack by pack: reads go forward through each file, and the client gets
	// the objects in the order git wrote them (recent first, commits before trees before
	// blobs). Loose objects come last.
	packRank := map[*packIndex]int{}
	s.mu.Lock()
	for i, p := range s.packs {
		packRank[p] = i
	}
	s.mu.Unlock()
	slices.SortFunc(entries, func(a, b sendEntry) int {
		ra, rb := len(packRank), len(packRank)
		if a.loc.p != nil {
			ra = packRank[a.loc.p]
		}
		if b.loc.p != nil {
			rb = packRank[b.loc.p]
		}
		if ra != rb {
			return ra - rb
		}
		switch {
		case a.loc.off < b.loc.off:
			return -1
		case a.loc.off > b.loc.off:
			return 1
		}
		return bytes.Compare(a.h[:], b.h[:])
	})
	for i := range entries {
		byID[entries[i].h] = &entries[i]
	}

	p := &sendPlan{opt: opt, order: make([]*sendEntry, 0, len(entries))}
	cur := &packCursor{s: s}
	defer cur.close()
	for i := range entries {
		e := &entries[i]
		if e.loc.p == nil {
			e.how = sendLoose
			continue
		}
		if err := cur.seek(e.loc.p, e.loc.off); err != nil {
			return nil, err
		}
		hdr, err := readObjectHeader(cur, e.loc.off)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.loc, err)
		}
		e.hdr = hdr
		if !isDelta(hdr.typ) {
			continue
		}
		baseID := hdr.ref
		if hdr.typ == plumbing.OFSDeltaObject {
			if baseID, _, err = e.loc.p.hashAt(hdr.base); err != nil {
				return nil, fmt.Errorf("%s: delta base: %w", e.loc, err)
			}
		}
		switch base, inPack := byID[baseID]; {
		case inPack:
			e.base = base
		case opt.ClientHas != nil:
			has, err := opt.ClientHas(baseID)
			if err != nil {
				return nil, err
			}
			e.how, e.baseID = sendThin, baseID
			if !has {
				e.how = sendInflated
			}
		default:
			e.how = sendInflated
		}
	}

	// Each base before its deltas. An OFS base comes earlier in its pack already; a REF
	// base may not. A loop (copies of objects in two packs, each a delta on the other) is
	// broken by sending one whole, if its own chain leads to a whole object.
	const (
		unvisited = iota
		visiting
		done
	)
	state := make(map[*sendEntry]int, len(entries))
	for i := range entries {
		if state[&entries[i]] != unvisited {
			continue
		}
		// Down the chain to a base already placed (or a whole object), then the chain
		// from there up.
		var chain []*sendEntry
		for c := &entries[i]; c != nil && state[c] == unvisited; c = c.base {
			state[c] = visiting
			chain = append(chain, c)
		}
		if last := chain[len(chain)-1]; last.base != nil && state[last.base] == visiting {
			last.base, last.how = nil, sendInflated
		}
		for j := len(chain) - 1; j >= 0; j-- {
			state[chain[j]] = done
			p.order = append(p.order, chain[j])
		}
	}
	p.stats.Objects = len(p.order)
	return p, nil
}

// write writes entry e to out.
func (p *sendPlan) write(s *Packs, cur *packCursor, out *sendWriter, e *sendEntry, buf []byte) error {
	e.at = out.n
	if e.how == sendLoose || e.how == sendInflated {
		if e.how == sendLoose {
			p.stats.Loose++
		} else {
			p.stats.Inflated++
		}
		rc, typ, size, err := s.open(e.loc)
		if err != nil {
			return err
		}
		defer rc.Close() // a reader of this package: Close has nothing to report
		if err := p.deflate(out, typ, size, rc, buf); err != nil {
			return fmt.Errorf("%s: %w", e.loc, err)
		}
		return nil
	}

	var head []byte
	switch {
	case !isDelta(e.hdr.typ):
	case e.how == sendThin:
		p.stats.Deltas++
		p.stats.Thin++
		head = appendObjectHeader(head, plumbing.REFDeltaObject, e.hdr.size)
		head = append(head, e.baseID[:]...)
	case p.opt.OFSDelta:
		p.stats.Deltas++
		if e.base.at < 0 {
			return fmt.Errorf("%s: delta written before its base", e.loc)
		}
		head = appendObjectHeader(head, plumbing.OFSDeltaObject, e.hdr.size)
		head = appendOfs(head, e.at-e.base.at)
	default:
		p.stats.Deltas++
		head = appendObjectHeader(head, plumbing.REFDeltaObject, e.hdr.size)
		head = append(head, e.base.h[:]...)
	}
	return copyStored(cur, out, e, head, buf)
}

// copyStored copies the object of e as stored: its header (or head, if not nil, in its
// place) and its zlib stream, checking the stored bytes against the index's CRC-32.
func copyStored(cur *packCursor, out *sendWriter, e *sendEntry, head []byte, buf []byte) error {
	end, err := e.loc.p.end(e.loc.off)
	if err != nil {
		return err
	}
	data := e.loc.off + int64(e.hdr.hdrLen)
	if data >= end {
		return fmt.Errorf("%s: no data after its header", e.loc)
	}
	if err := cur.seek(e.loc.p, e.loc.off); err != nil {
		return err
	}
	crc := crc32.NewIEEE()
	if head == nil {
		_, err = io.CopyBuffer(io.MultiWriter(out, crc), io.LimitReader(cur, end-e.loc.off), buf)
	} else {
		_, err = io.CopyBuffer(crc, io.LimitReader(cur, data-e.loc.off), buf)
		if err == nil {
			_, err = out.Write(head)
		}
		if err == nil {
			_, err = io.CopyBuffer(io.MultiWriter(out, crc), io.LimitReader(cur, end-data), buf)
		}
	}
	if err == nil && cur.pos != end {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("%s: %w", e.loc, err)
	}
	if crc.Sum32() != e.loc.p.crc(e.loc.pos) {
		return fmt.Errorf("%s: stored bytes do not match the CRC-32 of its index", e.loc)
	}
	return nil
}

// packCursor reads packs forwards through one buffer: objects read in pack order cost one
// read per buffer, not one per object. A read outside the buffer starts a new one there.
type packCursor struct {
	s       *Packs
	p       *packIndex
	release func()
	f       io.ReaderAt
	br      *bufio.Reader
	pos     int64 // offset in p of br's next byte
}

// seek moves the cursor to off in pack p.
func (c *packCursor) seek(p *packIndex, off int64) error {
	if c.p != p {
		c.close()
		f, release, err := c.s.file(p)
		if err != nil {
			return err
		}
		c.p, c.f, c.release = p, f, release
	} else if off >= c.pos && off-c.pos <= int64(c.br.Buffered()) {
		_, err := c.br.Discard(int(off - c.pos))
		c.pos = off
		return err
	}
	r := io.NewSectionReader(c.f, off, p.size-off)
	if c.br == nil {
		c.br = bufio.NewReaderSize(r, 64*1024)
	} else {
		c.br.Reset(r)
	}
	c.pos = off
	return nil
}

func (c *packCursor) Read(b []byte) (int, error) {
	n, err := c.br.Read(b)
	c.pos += int64(n)
	return n, err
}

func (c *packCursor) ReadByte() (byte, error) {
	b, err := c.br.ReadByte()
	if err == nil {
		c.pos++
	}
	return b, err
}

func (c *packCursor) close() {
	if c.release != nil {
		c.release()
	}
	c.p, c.f, c.release = nil, nil, nil
}

// deflate writes a whole object of type typ and size bytes, read from r, compressing it as
// it streams.
func (p *sendPlan) deflate(out *sendWriter, typ plumbing.ObjectType, size int64, r io.Reader, buf []byte) error {
	if _, err := out.Write(appendObjectHeader(nil, typ, uint64(size))); err != nil {
		return err
	}
	if p.zw == nil {
		p.zw = zlib.NewWriter(out)
	} else {
		p.zw.Reset(out)
	}
	n, err := io.CopyBuffer(p.zw, r, buf)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("object of %d bytes declared %d", n, size)
	}
	return p.zw.Close()
}

// sendWriter writes a pack, hashing and counting what it writes.
type sendWriter struct {
	w *bufio.Writer
	h hash.Hash
	n int64
}

func (w *sendWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.h.Write(b[:n])
	w.n += int64(n)
	return n, err
}
