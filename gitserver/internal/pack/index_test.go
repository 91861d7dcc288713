package pack

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"crypto/sha1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
)

// gitIn runs git in dir with stdin and returns its stdout.
func gitIn(t testing.TB, dir, stdin string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %v: %v: %s", args, err, stderr.Bytes())
	}
	return out
}

// bareRepo makes an empty bare repository.
func bareRepo(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "r.git")
	gitIn(t, "", "", "init", "-q", "--bare", dir)
	return dir
}

// historyRepo makes a bare repository whose history packs into long delta chains: ten files
// that each grow by a line in each of 60 commits, and an annotated tag.
func historyRepo(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "history.git")
	gitIn(t, "", "", "init", "-q", "--bare", dir)
	var s strings.Builder
	files := make([]string, 10)
	for c := 1; c <= 60; c++ {
		fmt.Fprintf(&s, "commit refs/heads/main\ncommitter T <t@example.com> %d +0000\ndata 8\ncommit%02d\n", 1700000000+c, c)
		for f := range files {
			if (c+f)%3 != 0 {
				continue
			}
			files[f] += fmt.Sprintf("file %d line %d: %s\n", f, c, strings.Repeat("lorem ipsum dolor ", 5+f))
			fmt.Fprintf(&s, "M 100644 inline src/f%d.txt\ndata %d\n%s\n", f, len(files[f]), files[f])
		}
	}
	s.WriteString("tag v1\nfrom refs/heads/main\ntagger T <t@example.com> 1700000100 +0000\ndata 4\nv1!\ndone\n")
	gitIn(t, dir, s.String(), "fast-import", "--quiet", "--done")
	return dir
}

// TestStorePackMatchesGitIndexPack: the index Store writes for a pack full of delta chains
// is byte for byte the one git index-pack writes, with OFS deltas (what git push sends) and
// with REF deltas.
func TestStorePackMatchesGitIndexPack(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	for name, deltaType := range map[string]plumbing.ObjectType{
		"ofs": plumbing.OFSDeltaObject,
		"ref": plumbing.REFDeltaObject,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := []string{"pack-objects", "--all", "--stdout", "-q", "--window=50", "--depth=50"}
			if deltaType == plumbing.OFSDeltaObject {
				args = append(args, "--delta-base-offset")
			}
			pack := gitIn(t, src, "", args...)

			scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
			if err != nil {
				t.Fatal(err)
			}
			deltas := 0
			for _, o := range scan.objects {
				if o.typ == deltaType {
					deltas++
				}
			}
			if deltas < 100 {
				t.Fatalf("the pack has %d deltas of type %s, want a pack made of them", deltas, deltaType)
			}

			dir := bareRepo(t)
			n, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {})
			if err != nil || n != len(scan.objects) {
				t.Fatalf("Store = %d, %v; want %d objects", n, err, len(scan.objects))
			}
			sum := scan.sum.String()
			got, err := os.ReadFile(filepath.Join(dir, "objects", "pack", "pack-"+sum+".idx"))
			if err != nil {
				t.Fatal(err)
			}
			work := t.TempDir()
			if err := os.WriteFile(filepath.Join(work, "p.pack"), pack, 0o644); err != nil {
				t.Fatal(err)
			}
			gitIn(t, work, "", "index-pack", "-o", "want.idx", "p.pack")
			want, err := os.ReadFile(filepath.Join(work, "want.idx"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("index differs from git index-pack's (%d and %d bytes)", len(got), len(want))
			}
			// And git reads the stored repository whole.
			gitIn(t, dir, "", "fsck", "--strict", "--no-dangling")
		})
	}
}

// TestStorePackRefusesBadObjects: a thin pack (deltas on objects the pack lacks), a delta
// whose instructions do not fit its base, an OFS delta whose base offset is inside another
// object, and an object sent twice are bad packs, and leave nothing behind.
func TestStorePackRefusesBadObjects(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	thin := gitIn(t, src, "main\n^main~5\n", "pack-objects", "--revs", "--thin", "--stdout", "-q")

	base := []byte("hello, world\n")
	baseID := plumbing.ComputeHash(plumbing.BlobObject, base)
	// Copy 10 bytes from offset 100 of a 13-byte base.
	badDelta := []byte{byte(len(base)), 10, 0x80 | 0x01 | 0x10, 100, 10}
	badRef := rawPack(rawObject{typ: plumbing.BlobObject, data: base},
		rawObject{typ: plumbing.REFDeltaObject, ref: baseID, data: badDelta})
	// Offset 13 is the first object's zlib stream, not an object.
	goodDelta := []byte{byte(len(base)), byte(len(base)), 0x80 | 0x10, byte(len(base))}
	inside := rawPack(rawObject{typ: plumbing.BlobObject, data: base},
		rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 13, data: goodDelta})

	twice := rawPack(rawObject{typ: plumbing.BlobObject, data: base}, rawObject{typ: plumbing.BlobObject, data: base})

	for name, pack := range map[string][]byte{"thin": thin, "bad delta": badRef, "base inside an object": inside, "twice": twice} {
		dir := bareRepo(t)
		_, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {})
		if !errors.Is(err, ErrBad) {
			t.Errorf("%s: err = %v, want ErrBad", name, err)
		}
		if entries, err := os.ReadDir(filepath.Join(dir, "objects", "pack")); err != nil || len(entries) != 0 {
			t.Errorf("%s: objects/pack holds %v (%v)", name, entries, err)
		}
	}

	// The same delta on its whole base resolves.
	ok := rawPack(rawObject{typ: plumbing.BlobObject, data: base},
		rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: goodDelta})
	scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(ok)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := resolveDeltas(bytes.NewReader(ok), scan); err != nil {
		t.Fatal(err)
	}
	if d := scan.objects[1]; d.typ != plumbing.BlobObject || d.hash != baseID {
		t.Errorf("delta resolved to %s %s, want blob %s", d.typ, d.hash, baseID)
	}
}

// rawObject is one object of a hand-made pack: whole, or a delta on the object at pack
// offset ofsTo (OFS) or with id ref (REF).
type rawObject struct {
	typ   plumbing.ObjectType
	ofsTo int64
	ref   plumbing.Hash
	data  []byte
}

// rawPack makes a version-2 pack of objs, deltas included, by hand.
func rawPack(objs ...rawObject) []byte {
	var b bytes.Buffer
	b.WriteString("PACK")
	// Writes to a bytes.Buffer do not fail.
	_ = binary.Write(&b, binary.BigEndian, uint32(2))
	_ = binary.Write(&b, binary.BigEndian, uint32(len(objs)))
	for _, o := range objs {
		start := int64(b.Len())
		head := appendObjectHeader(nil, o.typ, uint64(len(o.data)))
		switch o.typ {
		case plumbing.OFSDeltaObject:
			head = appendOfs(head, start-o.ofsTo)
		case plumbing.REFDeltaObject:
			head = append(head, o.ref[:]...)
		}
		b.Write(head)
		zw := zlib.NewWriter(&b)
		// Into a bytes.Buffer: neither fails.
		_, _ = zw.Write(o.data)
		_ = zw.Close()
	}
	sum := sha1.Sum(b.Bytes())
	b.Write(sum[:])
	return b.Bytes()
}
