package pack

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// buildPack makes a version-2 pack of whole (non-delta) objects by hand.
func buildPack(t *testing.T, objs []plumbing.ObjectType, data [][]byte) []byte {
	t.Helper()
	raw := make([]rawObject, len(objs))
	for i, typ := range objs {
		raw[i] = rawObject{typ: typ, data: data[i]}
	}
	return rawPack(raw...)
}

func TestCopyPackStopsAtTrailer(t *testing.T) {
	t.Parallel()
	pack := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject, plumbing.BlobObject},
		[][]byte{[]byte("hello\n"), bytes.Repeat([]byte("big blob "), 10000)})
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(pack), strings.NewReader("AFTER")))
	var out bytes.Buffer
	p, err := copyPack(&out, r, 0)
	if err != nil || len(p.objects) != 2 {
		t.Fatalf("copyPack = %v, %v", p, err)
	}
	if !bytes.Equal(out.Bytes(), pack) {
		t.Error("copied bytes differ from the pack")
	}
	if rest, _ := io.ReadAll(r); string(rest) != "AFTER" { // a bytes and strings reader: no error
		t.Errorf("copyPack read past the trailer: left %q", rest)
	}

	// Discard reads the same pack just as far, and counts its objects.
	r = bufio.NewReader(io.MultiReader(bytes.NewReader(pack), strings.NewReader("AFTER")))
	if n, err := Discard(r); err != nil || n != 2 {
		t.Fatalf("Discard = %d, %v; want 2 objects", n, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "AFTER" { // a bytes and strings reader: no error
		t.Errorf("Discard read past the trailer: left %q", rest)
	}
}

func TestCopyPackRejectsBadPacks(t *testing.T) {
	t.Parallel()
	good := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject}, [][]byte{[]byte("hello world\n")})
	flip := func(i int) []byte {
		p := bytes.Clone(good)
		p[i] ^= 0x01
		return p
	}
	// A blob that declares 3 bytes but inflates to 12.
	lying := bytes.Clone(good)
	lying[12] = byte(plumbing.BlobObject)<<4 | 3
	sum := sha1.Sum(lying[:len(lying)-20])
	copy(lying[len(lying)-20:], sum[:])

	for name, p := range map[string][]byte{
		"empty":       nil,
		"truncated":   good[:len(good)-5],
		"checksum":    flip(len(good) - 1),
		"signature":   flip(0),
		"version":     flip(7),
		"zlib data":   flip(len(good) - 25),
		"lying size":  lying,
		"bad type":    append(append([]byte{}, good[:12]...), 0x50, 0x00),
		"zero offset": append(append([]byte{}, good[:12]...), 0x60, 0x00),
	} {
		_, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(p)), 0)
		if !errors.Is(err, ErrBad) {
			t.Errorf("%s: err = %v, want ErrBad", name, err)
		}
		if _, err := Discard(bufio.NewReader(bytes.NewReader(p))); !errors.Is(err, ErrBad) {
			t.Errorf("%s: Discard: err = %v, want ErrBad", name, err)
		}
	}
}

func TestStorePack(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	blob := []byte("stored blob\n")
	pack := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject}, [][]byte{blob})
	n, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {})
	if err != nil || n != 1 {
		t.Fatalf("Store = %d, %v", n, err)
	}
	st := filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault())
	h := plumbing.ComputeHash(plumbing.BlobObject, blob)
	if _, err := st.EncodedObject(plumbing.BlobObject, h); err != nil {
		t.Errorf("stored blob not found: %v", err)
	}

	// An empty pack stores nothing; a bad one leaves nothing behind.
	if n, err := Store(dir, bufio.NewReader(bytes.NewReader(buildPack(t, nil, nil))), 0, func() {}); err != nil || n != 0 {
		t.Errorf("empty pack: Store = %d, %v", n, err)
	}
	bad := bytes.Clone(pack)
	bad[len(bad)-1] ^= 1
	if _, err := Store(dir, bufio.NewReader(bytes.NewReader(bad)), 0, func() {}); !errors.Is(err, ErrBad) {
		t.Errorf("bad pack: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "objects", "pack"))
	if err != nil || len(entries) != 2 {
		t.Errorf("objects/pack holds %v (%v), want one .idx and one .pack", entries, err)
	}
}

// TestRemoveTemp: the temporary files of a Store cut short are removed, the packs stay, and
// a repository without objects/pack is no error.
func TestRemoveTemp(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	pack := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject}, [][]byte{[]byte("kept\n")})
	if _, err := Store(dir, bufio.NewReader(bytes.NewReader(pack)), 0, func() {}); err != nil {
		t.Fatal(err)
	}
	packDir := filepath.Join(dir, "objects", "pack")
	for _, name := range []string{"tmp_pack_123", "tmp_idx_456"} {
		if err := os.WriteFile(filepath.Join(packDir, name), []byte("half a pack"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveTemp(dir); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(packDir)
	if err != nil || len(entries) != 2 {
		t.Errorf("objects/pack holds %v (%v), want one .idx and one .pack", entries, err)
	}
	if err := RemoveTemp(filepath.Join(t.TempDir(), "none.git")); err != nil {
		t.Errorf("no objects/pack: %v", err)
	}
}

// TestStoreRefusesTooLargeObjects: an object over the size Store allows, whole or as a
// delta's result, is refused from its header, and nothing is stored.
func TestStoreRefusesTooLargeObjects(t *testing.T) {
	whole := buildPack(t, []plumbing.ObjectType{plumbing.BlobObject}, [][]byte{bytes.Repeat([]byte{'x'}, 2<<20)})
	bomb, _ := deltaBomb(8 << 20)
	for name, p := range map[string][]byte{"whole object": whole, "delta result": bomb} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := Store(dir, bufio.NewReader(bytes.NewReader(p)), 1<<20, func() {})
			var big *TooLargeError
			if !errors.As(err, &big) || !errors.Is(err, ErrBad) || big.Max != 1<<20 || big.Size < 2<<20 {
				t.Fatalf("Store with a 1 MiB cap = %v, want a *TooLargeError", err)
			}
			if packs, _ := filepath.Glob(filepath.Join(dir, "objects", "pack", "*")); len(packs) != 0 {
				t.Errorf("left behind: %v", packs)
			}
			if _, err := Store(dir, bufio.NewReader(bytes.NewReader(p)), 0, func() {}); err != nil {
				t.Errorf("Store without a cap: %v", err)
			}
		})
	}
}
