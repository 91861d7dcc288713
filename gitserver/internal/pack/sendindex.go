package pack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/go-git/go-git/v5/plumbing"
)

// packIndex is one pack of a repository as its index (.idx version 2) describes it, held as
// the file's own tables: an object's id, offset and CRC-32 are found without allocating.
// The objects in pack order (the reverse index, which tells where an object's bytes end)
// are sorted only when the pack is first copied from. It is safe for concurrent use.
type packIndex struct {
	path   string // of the .pack
	size   int64  // of the .pack, trailer included
	count  int
	fanout [256]uint32
	names  []byte // count ids, sorted
	crcs   []byte // count big-endian CRC-32s, in the order of names
	off32  []byte // count big-endian offsets, in the order of names; high bit: index into off64
	off64  []byte

	revOnce sync.Once
	rev     []uint32 // positions in names, in pack order; nil until revOnce
	revErr  error
}

// idxHeader starts every version-2 index: a magic number and the version.
var idxHeader = []byte{0xff, 't', 'O', 'c', 0, 0, 0, 2}

// readPackIndex reads the index of the pack at packPath (its name with ".idx").
func readPackIndex(packPath string) (*packIndex, error) {
	fi, err := os.Stat(packPath)
	if err != nil {
		return nil, err
	}
	idxPath := strings.TrimSuffix(packPath, ".pack") + ".idx"
	b, err := os.ReadFile(idxPath)
	if err != nil {
		return nil, err
	}
	p, err := parsePackIndex(b, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(idxPath), err)
	}
	p.path = packPath
	return p, nil
}

// parsePackIndex checks the structure of the index b of a pack of packSize bytes, and
// returns it.
func parsePackIndex(b []byte, packSize int64) (*packIndex, error) {
	const head = 8 + 256*4
	if len(b) < head+2*20 || !bytes.Equal(b[:8], idxHeader) {
		return nil, errors.New("not a version 2 pack index")
	}
	p := &packIndex{size: packSize}
	prev := uint32(0)
	for i := range p.fanout {
		p.fanout[i] = binary.BigEndian.Uint32(b[8+4*i:])
		if p.fanout[i] < prev {
			return nil, errors.New("pack index fanout is not sorted")
		}
		prev = p.fanout[i]
	}
	n := int(p.fanout[255])
	tables := int64(n) * (20 + 4 + 4)
	rest := int64(len(b)) - head - 2*20 - tables
	if rest < 0 || rest%8 != 0 {
		return nil, fmt.Errorf("pack index of %d bytes cannot hold %d objects", len(b), n)
	}
	p.count = n
	at := head
	p.names = b[at : at+20*n]
	at += 20 * n
	p.crcs = b[at : at+4*n]
	at += 4 * n
	p.off32 = b[at : at+4*n]
	at += 4 * n
	p.off64 = b[at : at+int(rest)]
	if n > 0 && packSize < 12+20 {
		return nil, errors.New("pack too short for its index")
	}
	return p, nil
}

// find returns the position of object h in the index.
func (p *packIndex) find(h plumbing.Hash) (int, bool) {
	lo := 0
	if h[0] > 0 {
		lo = int(p.fanout[h[0]-1])
	}
	hi := int(p.fanout[h[0]])
	i := lo + sort.Search(hi-lo, func(i int) bool {
		return bytes.Compare(p.names[20*(lo+i):20*(lo+i+1)], h[:]) >= 0
	})
	if i < hi && bytes.Equal(p.names[20*i:20*(i+1)], h[:]) {
		return i, true
	}
	return 0, false
}

func (p *packIndex) name(pos int) plumbing.Hash {
	var h plumbing.Hash
	copy(h[:], p.names[20*pos:])
	return h
}

func (p *packIndex) crc(pos int) uint32 {
	return binary.BigEndian.Uint32(p.crcs[4*pos:])
}

// offset returns where the object at position pos starts in the pack; an offset the pack
// cannot hold is an error (a corrupt index).
func (p *packIndex) offset(pos int) (int64, error) {
	o := binary.BigEndian.Uint32(p.off32[4*pos:])
	off := int64(o)
	if o&0x80000000 != 0 {
		i := int(o & 0x7fffffff)
		if 8*i+8 > len(p.off64) {
			return 0, errors.New("pack index: large offset out of range")
		}
		off = int64(binary.BigEndian.Uint64(p.off64[8*i:]))
	}
	if off < 12 || off >= p.size-20 {
		return 0, fmt.Errorf("pack index: offset %d out of the pack's %d bytes", off, p.size)
	}
	return off, nil
}

// reverse returns the positions of the objects in pack order, sorted once.
func (p *packIndex) reverse() ([]uint32, error) {
	p.revOnce.Do(func() {
		offs := make([]int64, p.count)
		for i := range offs {
			if offs[i], p.revErr = p.offset(i); p.revErr != nil {
				return
			}
		}
		rev := make([]uint32, p.count)
		for i := range rev {
			rev[i] = uint32(i)
		}
		slices.SortFunc(rev, func(a, b uint32) int {
			switch {
			case offs[a] < offs[b]:
				return -1
			case offs[a] > offs[b]:
				return 1
			}
			return 0
		})
		for i := 1; i < len(rev); i++ {
			if offs[rev[i]] == offs[rev[i-1]] {
				p.revErr = fmt.Errorf("pack index: two objects at offset %d", offs[rev[i]])
				return
			}
		}
		p.rev = rev
	})
	return p.rev, p.revErr
}

// rank returns where the object at offset off comes in pack order, if an object starts
// there.
func (p *packIndex) rank(off int64) (int, bool, error) {
	rev, err := p.reverse()
	if err != nil {
		return 0, false, err
	}
	var ierr error
	i := sort.Search(len(rev), func(i int) bool {
		o, err := p.offset(int(rev[i]))
		if err != nil {
			ierr = err
		}
		return o >= off
	})
	if ierr != nil {
		return 0, false, ierr
	}
	if i == len(rev) {
		return i, false, nil
	}
	o, _ := p.offset(int(rev[i])) // checked by reverse
	return i, o == off, nil
}

// end returns where the bytes of the object at offset off end: where the next object
// starts, or the trailer.
func (p *packIndex) end(off int64) (int64, error) {
	i, ok, err := p.rank(off)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("no object at offset %d of %s", off, filepath.Base(p.path))
	}
	if i+1 == p.count {
		return p.size - 20, nil
	}
	return p.offset(int(p.rev[i+1]))
}

// hashAt returns the id of the object at offset off: an OFS delta's base.
func (p *packIndex) hashAt(off int64) (plumbing.Hash, int, error) {
	i, ok, err := p.rank(off)
	if err != nil {
		return plumbing.ZeroHash, 0, err
	}
	if !ok {
		return plumbing.ZeroHash, 0, fmt.Errorf("no object at offset %d of %s", off, filepath.Base(p.path))
	}
	pos := int(p.rev[i])
	return p.name(pos), pos, nil
}
