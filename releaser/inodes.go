package releaser

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"golang.org/x/sys/unix"

	"github.com/slipway/slipway/internal/atomicfile"
)

// The inode record of a release written with LinkFiles: .slipway/inodes/<sha> holds, for
// every regular file Materialize wrote or hard-linked, its path, its inode, that inode's
// ctime right after slipway's last operation on it, its blob, its mode and whether it was
// linked from the base (see reuse.go for what it is trusted for). Materialize writes it
// once the tree is written, before any build runs; CheckLinked reads it; Discard, Prune and
// Recover rewrite the live release's record after they removed names of its inodes (see
// keeper); it goes with its release, and Recover removes those of releases that are not
// complete.
//
// The file is binary and streamed, one entry at a time, both ways: writing and checking a
// release of 100,000 files holds one entry in memory, not 100,000. The two readers that
// need a lookup keep a few dozen bytes per file: openBase (beside the tree's entries it
// keeps anyway) and keeper.
//
//	"slipway-inodes 1\n"
//	base     one byte n (0 or 40), then n bytes: the release files were linked from
//	entries  flags (1 byte: inodeLinked, inodeExec), path (uvarint length, bytes), dev and
//	         ino (uvarints), ctime (8 bytes, big endian, nanoseconds since the epoch),
//	         blob (20 bytes)
//	end      inodeEnd, the entry count (uvarint), SHA-256 of every byte before it (32 bytes)
//
// It is written to a temporary file that is synced and renamed over the record, then the
// directory is synced (as atomicfile does), so a crash leaves the old record or the new
// one, or none. A reader checks the checksum over the whole file before it passes on one
// entry, so a record cut short or damaged counts as none; and no record trusts nothing:
// nothing is linked from that release, and CheckLinked fails for it.

const (
	inodesMagic = "slipway-inodes 1\n"

	inodeLinked = 1 << 0 // hard-linked from the base release
	inodeExec   = 1 << 1 // an executable: mode 0555, else 0444
	inodeEnd    = 0x80   // marks the end of the entries

	// maxInodePath bounds a path read from a record: a release's paths are shorter (1000
	// directories of 255 bytes at most).
	maxInodePath = 1 << 20
)

// errNoInodes is a release with no intact inode record.
var errNoInodes = errors.New("no intact inode record")

func (r *Releaser) inodesDir() string            { return filepath.Join(r.metaDir(), "inodes") }
func (r *Releaser) inodesPath(sha string) string { return filepath.Join(r.inodesDir(), sha) }

// inode is one entry of a record.
type inode struct {
	path     string // slash-separated, relative to the release
	dev, ino uint64
	ctime    int64 // nanoseconds since the epoch
	blob     plumbing.Hash
	linked   bool // an inode of the base release
	exec     bool
}

// perm is the mode Materialize gave the file.
func (in inode) perm() uint32 {
	return uint32(filePerm(in.mode(), true))
}

func (in inode) mode() filemode.FileMode {
	if in.exec {
		return filemode.Executable
	}
	return filemode.Regular
}

func ctimeNs(st *unix.Stat_t) int64 { return st.Ctim.Nano() }

// inodeWriter streams a record to a temporary file; commit puts it in place. Materialize's
// writers add to it concurrently.
type inodeWriter struct {
	final string

	mu  sync.Mutex // guards everything below
	f   *os.File
	w   *bufio.Writer
	sum hash.Hash
	n   uint64
	err error // the first write error: commit returns it
	buf []byte
}

// newInodeWriter starts the record of release sha, whose linked files come from base ("":
// none).
func (r *Releaser) newInodeWriter(sha, base string) (*inodeWriter, error) {
	if err := os.MkdirAll(r.inodesDir(), 0o755); err != nil {
		return nil, err
	}
	final := r.inodesPath(sha)
	// atomicfile's naming, so that atomicfile.RemoveStale knows a leftover for one.
	f, err := os.CreateTemp(r.inodesDir(), "."+sha+".tmp-*")
	if err != nil {
		return nil, err
	}
	w := &inodeWriter{final: final, f: f, sum: sha256.New()}
	w.w = bufio.NewWriterSize(io.MultiWriter(f, w.sum), 64<<10)
	w.buf = append(w.buf[:0], inodesMagic...)
	w.buf = append(w.buf, byte(len(base)))
	w.buf = append(w.buf, base...)
	w.write(w.buf)
	return w, nil
}

// write writes b, for a caller holding mu.
func (w *inodeWriter) write(b []byte) {
	if w.err == nil {
		_, w.err = w.w.Write(b)
	}
}

// add records one file, st being its stat after slipway's last operation on it.
func (w *inodeWriter) add(path string, st *unix.Stat_t, blob plumbing.Hash, exec, linked bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.addLocked(inode{path: path, dev: uint64(st.Dev), ino: st.Ino, ctime: ctimeNs(st), blob: blob, exec: exec, linked: linked})
}

func (w *inodeWriter) addLocked(in inode) {
	var flags byte
	if in.linked {
		flags |= inodeLinked
	}
	if in.exec {
		flags |= inodeExec
	}
	b := append(w.buf[:0], flags)
	b = binary.AppendUvarint(b, uint64(len(in.path)))
	b = append(b, in.path...)
	b = binary.AppendUvarint(b, in.dev)
	b = binary.AppendUvarint(b, in.ino)
	b = binary.BigEndian.AppendUint64(b, uint64(in.ctime))
	b = append(b, in.blob[:]...)
	w.buf = b
	w.write(b)
	w.n++
}

// commit ends the record and puts it in place, durably: synced, renamed over the record,
// directory synced. On error the temporary file is removed.
func (w *inodeWriter) commit() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := append(w.buf[:0], inodeEnd)
	b = binary.AppendUvarint(b, w.n)
	w.write(b)
	err := w.err
	if err == nil {
		err = w.w.Flush()
	}
	if err == nil {
		_, err = w.f.Write(w.sum.Sum(nil))
	}
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(w.f.Name(), w.final)
	}
	if err == nil {
		err = atomicfile.SyncDir(filepath.Dir(w.final))
	}
	if err != nil {
		os.Remove(w.f.Name()) // the error to report is the write's; Recover removes a leftover
		return fmt.Errorf("inode record: %w", err)
	}
	return nil
}

// abort gives the record up.
func (w *inodeWriter) abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.f.Close()           // given up: nothing to lose
	os.Remove(w.f.Name()) // if this fails, Recover removes it
}

// inodeReader reads a record whose checksum it checked first.
type inodeReader struct {
	f    *os.File
	br   *bufio.Reader
	base string // the release the linked files came from; "" if none
	n    uint64 // entries read
	path []byte
}

// openInodes opens the record of release sha, checks it whole and reads its header. An
// error wraps errNoInodes if the record is missing, cut short or damaged.
func (r *Releaser) openInodes(sha string) (*inodeReader, error) {
	f, err := os.Open(r.inodesPath(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", sha, errNoInodes)
	}
	if err != nil {
		return nil, err
	}
	rd, err := readInodes(f)
	if err != nil {
		f.Close() // read only: closing it loses nothing
		return nil, fmt.Errorf("%s: %w", sha, err)
	}
	return rd, nil
}

func readInodes(f *os.File) (*inodeReader, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	body := fi.Size() - sha256.Size
	if body < int64(len(inodesMagic)) {
		return nil, fmt.Errorf("%w: %d bytes", errNoInodes, fi.Size())
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(f, 0, body)); err != nil {
		return nil, err
	}
	want := make([]byte, sha256.Size)
	if _, err := f.ReadAt(want, body); err != nil {
		return nil, err
	}
	if !bytes.Equal(sum.Sum(nil), want) {
		return nil, fmt.Errorf("%w: checksum mismatch", errNoInodes)
	}
	rd := &inodeReader{f: f, br: bufio.NewReaderSize(io.NewSectionReader(f, 0, body), 64<<10)}
	magic := make([]byte, len(inodesMagic))
	if _, err := io.ReadFull(rd.br, magic); err != nil || string(magic) != inodesMagic {
		return nil, fmt.Errorf("%w: not an inode record", errNoInodes)
	}
	n, err := rd.br.ReadByte()
	if err != nil || (n != 0 && n != 40) {
		return nil, fmt.Errorf("%w: bad header", errNoInodes)
	}
	base := make([]byte, n)
	if _, err := io.ReadFull(rd.br, base); err != nil || (n != 0 && !validSHA(string(base))) {
		return nil, fmt.Errorf("%w: bad header", errNoInodes)
	}
	rd.base = string(base)
	return rd, nil
}

// next returns the next entry; io.EOF after the last one, once the count is checked.
// Any other error wraps errNoInodes.
func (rd *inodeReader) next() (inode, error) {
	bad := func(what string) (inode, error) {
		return inode{}, fmt.Errorf("%w: %s after %d entries", errNoInodes, what, rd.n)
	}
	flags, err := rd.br.ReadByte()
	if err != nil {
		return bad("cut short")
	}
	if flags == inodeEnd {
		n, err := binary.ReadUvarint(rd.br)
		if err != nil || n != rd.n {
			return bad("bad end")
		}
		if _, err := rd.br.ReadByte(); err != io.EOF {
			return bad("bytes after the end")
		}
		return inode{}, io.EOF
	}
	if flags&^(inodeLinked|inodeExec) != 0 {
		return bad("bad flags")
	}
	l, err := binary.ReadUvarint(rd.br)
	if err != nil || l == 0 || l > maxInodePath {
		return bad("bad path")
	}
	if uint64(cap(rd.path)) < l {
		rd.path = make([]byte, l)
	}
	rd.path = rd.path[:l]
	if _, err := io.ReadFull(rd.br, rd.path); err != nil {
		return bad("cut short")
	}
	in := inode{path: string(rd.path), linked: flags&inodeLinked != 0, exec: flags&inodeExec != 0}
	if in.dev, err = binary.ReadUvarint(rd.br); err != nil {
		return bad("cut short")
	}
	if in.ino, err = binary.ReadUvarint(rd.br); err != nil {
		return bad("cut short")
	}
	var fixed [8 + len(plumbing.Hash{})]byte
	if _, err := io.ReadFull(rd.br, fixed[:]); err != nil {
		return bad("cut short")
	}
	in.ctime = int64(binary.BigEndian.Uint64(fixed[:8]))
	copy(in.blob[:], fixed[8:])
	rd.n++
	return in, nil
}

func (rd *inodeReader) close() {
	rd.f.Close() // read only: closing it loses nothing
}

// eachInode calls fn with every entry of release sha's record. The record is checked whole
// first; an error wraps errNoInodes if there is no intact record, or is fn's.
func (r *Releaser) eachInode(sha string, fn func(inode) error) (base string, err error) {
	rd, err := r.openInodes(sha)
	if err != nil {
		return "", err
	}
	defer rd.close()
	for {
		in, err := rd.next()
		if err == io.EOF {
			return rd.base, nil
		}
		if err != nil {
			return "", err
		}
		if err := fn(in); err != nil {
			return "", err
		}
	}
}

// removeInodes removes the record of release sha, if any.
func (r *Releaser) removeInodes(sha string) error {
	err := os.Remove(r.inodesPath(sha))
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// CheckLinked checks, after the build and tests of release sha and before it goes live,
// that the build changed none of the files sha shares with the live release (LinkFiles):
// each inode Materialize hard-linked into sha must still have the ctime it had when
// Materialize recorded it. One whose ctime moved (the build removed, renamed, touched it,
// or chmod-ed it to the mode it had) must still be a regular file of the commit's content
// and read-only mode, read in full, wherever it now is: at its path in sha, or in the live
// release. A changed one is a *LinkedFileError naming it (see Reason); its inode, shared
// with the live release, keeps a ctime that no record holds, so nothing links it again.
//
// Without LinkFiles it returns nil at once. A record of sha that is missing or damaged is
// an error: nothing then proves the shared files intact.
func (r *Releaser) CheckLinked(sha string) error {
	if !r.linkFiles {
		return nil
	}
	if err := checkSHA(sha); err != nil {
		return fmt.Errorf("check linked: %w", err)
	}
	rd, err := r.openInodes(sha)
	if err != nil {
		return fmt.Errorf("check linked: %w", err)
	}
	defer rd.close()
	rel, err := os.OpenRoot(r.Dir(sha))
	if err != nil {
		return fmt.Errorf("check linked %s: %w", sha, err)
	}
	defer rel.Close() // a directory: closing it loses nothing
	var live *os.Root
	if rd.base != "" {
		// Gone, the base holds none of the inodes: they are found in sha or not at all.
		if live, err = os.OpenRoot(r.Dir(rd.base)); err == nil {
			defer live.Close() // a directory: closing it loses nothing
		}
	}
	var changed *LinkedFileError
	for {
		in, err := rd.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("check linked %s: %w", sha, err)
		}
		if !in.linked || r.linkIntact(in, rel, live) {
			continue
		}
		if changed == nil {
			changed = &LinkedFileError{Path: in.path}
		} else {
			changed.More++
		}
	}
	if changed != nil {
		return fmt.Errorf("check linked %s: %w", sha, changed)
	}
	return nil
}

// linkIntact reports whether the inode in is as Materialize left it, looked for at its
// path in the release, then in the base.
func (r *Releaser) linkIntact(in inode, roots ...*os.Root) bool {
	for _, root := range roots {
		if root == nil {
			continue
		}
		fi, err := root.Lstat(in.path)
		if err != nil {
			continue // not there, or not reachable: the other root, if any
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || uint64(st.Dev) != in.dev || st.Ino != in.ino {
			continue
		}
		if st.Ctim.Nano() == in.ctime {
			return true
		}
		return sameContent(root, in)
	}
	// Neither the release nor the live release holds the inode at that path any more: what
	// remains of it is no file either of them serves.
	r.log.Warn().Str("path", in.path).Msg("a linked file is in neither the release nor the one it was linked from")
	return true
}

// sameContent reports whether the file at in's path in root is in's inode, a regular file
// of in's mode with its blob's content, and unchanged while it was read.
func sameContent(root *os.Root, in inode) bool {
	f, err := root.OpenFile(in.path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close() // read only: closing it loses nothing
	var before, after unix.Stat_t
	fd := int(f.Fd())
	if err := unix.Fstat(fd, &before); err != nil || before.Mode&unix.S_IFMT != unix.S_IFREG ||
		uint64(before.Dev) != in.dev || before.Ino != in.ino || before.Mode&0o7777 != in.perm() {
		return false
	}
	h := plumbing.NewHasher(plumbing.BlobObject, before.Size)
	n, err := io.Copy(h, io.LimitReader(f, before.Size+1))
	if err != nil || n != before.Size || h.Sum() != in.blob {
		return false
	}
	return unix.Fstat(fd, &after) == nil && ctimeNs(&after) == ctimeNs(&before)
}

// keeper is the live release's record while Discard, Prune or Recover remove releases that
// share inodes with it: removing a name of an inode moves its ctime, which would make the live
// release's files untrusted, and so inflated again by the next release. Before each such
// removal, the inode is checked untouched (its ctime is the one the live release's record
// or the removed release's record holds); after it, its new ctime is kept, and save
// writes it into the live release's record. An inode that was not untouched keeps its old
// entry, which no longer matches.
type keeper struct {
	r       *Releaser
	sha     string
	ctimes  map[inodeKey]*keptCtime
	changed bool
}

type inodeKey struct{ dev, ino uint64 }

type keptCtime struct {
	was, now int64 // in the record; after slipway's removals
}

// openKeeper returns the keeper of the live release, or nil if there is nothing to keep
// (no LinkFiles, no live release, a held one, or no intact record of it).
func (r *Releaser) openKeeper() *keeper {
	if !r.linkFiles {
		return nil
	}
	live, held, err := r.target()
	if err != nil || live == "" || held {
		return nil
	}
	k := &keeper{r: r, sha: live, ctimes: map[inodeKey]*keptCtime{}}
	_, err = r.eachInode(live, func(in inode) error {
		k.ctimes[inodeKey{in.dev, in.ino}] = &keptCtime{was: in.ctime, now: in.ctime}
		return nil
	})
	if err != nil {
		return nil // the live release's files are not trusted: nothing to keep
	}
	return k
}

// untangle unlinks, from release sha (about to be removed), the names of the live
// release's inodes its record lists, keeping their new ctimes if they were untouched.
// What it leaves, the removal of the release removes.
func (k *keeper) untangle(sha string) {
	if k == nil || sha == k.sha {
		return
	}
	root, err := os.OpenRoot(k.r.Dir(sha))
	if err != nil {
		return
	}
	defer root.Close() // a directory: closing it loses nothing
	// Without an intact record of sha, nothing is untangled: the removal only costs speed.
	k.r.eachInode(sha, func(in inode) error {
		kc := k.ctimes[inodeKey{in.dev, in.ino}]
		if kc == nil {
			return nil
		}
		f, err := root.OpenFile(in.path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		if err != nil {
			return nil
		}
		defer f.Close() // read only: closing it loses nothing
		var before, after unix.Stat_t
		if unix.Fstat(int(f.Fd()), &before) != nil || uint64(before.Dev) != in.dev || before.Ino != in.ino || before.Nlink < 2 {
			return nil
		}
		if err := root.Remove(in.path); err != nil {
			return nil
		}
		// Untouched: its ctime is the last one slipway recorded, in either record.
		c := ctimeNs(&before)
		if (c == kc.now || c == in.ctime) && unix.Fstat(int(f.Fd()), &after) == nil && after.Nlink > 0 {
			kc.now = ctimeNs(&after)
			k.changed = true
		}
		return nil
	})
}

// save writes the new ctimes into the live release's record, durably; a crash before it
// only leaves entries that no longer match.
func (k *keeper) save() error {
	if k == nil || !k.changed {
		return nil
	}
	rd, err := k.r.openInodes(k.sha)
	if err != nil {
		return fmt.Errorf("update inode record: %w", err)
	}
	defer rd.close()
	w, err := k.r.newInodeWriter(k.sha, rd.base)
	if err != nil {
		return fmt.Errorf("update inode record: %w", err)
	}
	for {
		in, err := rd.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			w.abort()
			return fmt.Errorf("update inode record: %w", err)
		}
		if kc := k.ctimes[inodeKey{in.dev, in.ino}]; kc != nil && in.ctime == kc.was {
			in.ctime = kc.now
		}
		w.mu.Lock()
		w.addLocked(in)
		w.mu.Unlock()
	}
	return w.commit()
}
