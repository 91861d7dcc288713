package pack

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// storeWithGit stores pack in the bare repository at dir as git does (index-pack), so that
// what the tests read was not written by this package.
func storeWithGit(t testing.TB, dir string, pack []byte) {
	t.Helper()
	gitIn(t, dir, string(pack), "index-pack", "--stdin")
}

// sendGitCmd is git with args in dir, as gitIn runs it, for a test that checks its failure.
func sendGitCmd(dir string, args ...string) *exec.Cmd {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	return cmd
}

// ids lists the objects reachable from revs in the repository at dir.
func ids(t testing.TB, dir string, revs ...string) []plumbing.Hash {
	t.Helper()
	var hs []plumbing.Hash
	out := gitIn(t, dir, "", append([]string{"rev-list", "--objects"}, revs...)...)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		hs = append(hs, plumbing.NewHash(line[:40]))
	}
	return hs
}

// allObjects lists the objects of the repository at dir, sorted.
func allObjects(t testing.TB, dir string) []string {
	t.Helper()
	out := gitIn(t, dir, "", "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
	return strings.Fields(string(out))
}

// writePack writes a pack of objs from the repository at dir.
func writePack(t testing.TB, dir string, objs []plumbing.Hash, opt SendOptions) ([]byte, SendStats) {
	t.Helper()
	packs, err := OpenPacks(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer packs.Close()
	var out bytes.Buffer
	stats, err := packs.WritePack(t.Context(), &out, objs, opt)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Objects != len(objs) {
		t.Fatalf("WritePack sent %d objects, want %d", stats.Objects, len(objs))
	}
	return out.Bytes(), stats
}

// deltaTypes counts the objects of pack by how they are stored.
func deltaTypes(t testing.TB, pack []byte) map[plumbing.ObjectType]int {
	t.Helper()
	scan, err := copyPack(io.Discard, bufio.NewReader(bytes.NewReader(pack)), 0)
	if err != nil {
		t.Fatalf("the pack written does not parse: %v", err)
	}
	n := map[plumbing.ObjectType]int{}
	for _, o := range scan.objects {
		n[o.typ]++
	}
	return n
}

// TestWritePackCopiesStored: a pack of a whole history, stored with OFS or with REF deltas,
// is sent as stored with its deltas named by offset or by id as the client asks; git takes
// it whole (index-pack --strict), and it holds the repository's objects.
func TestWritePackCopiesStored(t *testing.T) {
	t.Parallel()
	src := historyRepo(t)
	for _, stored := range []string{"ofs", "ref"} {
		for _, ofs := range []bool{true, false} {
			t.Run(fmt.Sprintf("stored=%s/ofs-delta=%v", stored, ofs), func(t *testing.T) {
				t.Parallel()
				args := []string{"pack-objects", "--all", "--stdout", "-q", "--window=50", "--depth=50"}
				if stored == "ofs" {
					args = append(args, "--delta-base-offset")
				}
				dir := bareRepo(t)
				storeWithGit(t, dir, gitIn(t, src, "", args...))
				objs := ids(t, src, "--all")
				pack, stats := writePack(t, dir, objs, SendOptions{OFSDelta: ofs})
				if stats.Deltas < len(objs)/2 || stats.Inflated != 0 || stats.Thin != 0 {
					t.Errorf("stats %+v: want most of %d objects sent as deltas, none inflated or thin", stats, len(objs))
				}
				types := deltaTypes(t, pack)
				if ofs && types[plumbing.REFDeltaObject] != 0 || !ofs && types[plumbing.OFSDeltaObject] != 0 {
					t.Errorf("pack holds %v, with ofs-delta=%v", types, ofs)
				}
				if sum := sha1.Sum(pack[:len(pack)-20]); !bytes.Equal(sum[:], pack[len(pack)-20:]) {
					t.Error("trailer is not the SHA-1 of the pack")
				}
				client := bareRepo(t)
				gitIn(t, client, string(pack), "index-pack", "--stdin", "--strict")
				if got, want := allObjects(t, client), allObjects(t, src); !slices.Equal(got, want) {
					t.Errorf("the client has %d objects, the repository %d", len(got), len(want))
				}
			})
		}
	}
}

// shrinkingRepo makes a bare repository whose files shrink commit by commit, so that git
// stores each newer version as a delta on an older one: a fetch of the newer commits meets
// deltas whose base the client already has.
func shrinkingRepo(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "shrinking.git")
	gitIn(t, "", "", "init", "-q", "--bare", dir)
	var s strings.Builder
	lines := make([][]string, 4)
	for f := range lines {
		for i := range 400 {
			lines[f] = append(lines[f], fmt.Sprintf("file %d line %d: %s", f, i, strings.Repeat("lorem ipsum ", 3+f)))
		}
	}
	for c := 1; c <= 20; c++ {
		fmt.Fprintf(&s, "commit refs/heads/main\ncommitter T <t@example.com> %d +0000\ndata 8\ncommit%02d\n", 1700000000+c, c)
		for f := range lines {
			lines[f] = slices.Delete(lines[f], (c*7+f)%len(lines[f]), (c*7+f)%len(lines[f])+10)
			body := strings.Join(lines[f], "\n") + "\n"
			fmt.Fprintf(&s, "M 100644 inline f%d.txt\ndata %d\n%s\n", f, len(body), body)
		}
	}
	s.WriteString("done\n")
	gitIn(t, dir, s.String(), "fast-import", "--quiet", "--done")
	gitIn(t, dir, "", "repack", "-adq", "--window=50", "--depth=50")
	return dir
}

// TestWritePackThin: a fetch of the newer half of a history, whose deltas are stored on
// objects of the older half. Without thin-pack those deltas are sent whole, and the pack
// stands alone; with it, they are sent as stored, naming their base, and git completes the
// pack with the objects it has.
func TestWritePackThin(t *testing.T) {
	t.Parallel()
	src := shrinkingRepo(t)
	dir := bareRepo(t)
	storeWithGit(t, dir, gitIn(t, src, "", "pack-objects", "--all", "--stdout", "-q", "--delta-base-offset"))
	objs := ids(t, src, "main", "^main~10")
	old := map[plumbing.Hash]bool{}
	for _, h := range ids(t, src, "main~10") {
		old[h] = true
	}
	// A client that has main~10.
	client := func(t *testing.T) string {
		c := bareRepo(t)
		gitIn(t, c, string(gitIn(t, src, "main~10\n", "pack-objects", "--revs", "--stdout", "-q")), "index-pack", "--stdin")
		return c
	}

	t.Run("no-thin", func(t *testing.T) {
		t.Parallel()
		pack, stats := writePack(t, dir, objs, SendOptions{OFSDelta: true})
		if stats.Inflated == 0 || stats.Thin != 0 {
			t.Errorf("stats %+v: want deltas on the client's objects sent whole", stats)
		}
		// index-pack without --fix-thin refuses a pack with deltas on objects it lacks.
		c := client(t)
		gitIn(t, c, string(pack), "index-pack", "--stdin", "--strict")
		gitIn(t, c, "", "fsck", "--strict", "--no-dangling", fmt.Sprint(objs[0]))
	})
	t.Run("thin", func(t *testing.T) {
		t.Parallel()
		has := func(h plumbing.Hash) (bool, error) { return old[h], nil }
		pack, stats := writePack(t, dir, objs, SendOptions{OFSDelta: true, ClientHas: has})
		if stats.Thin == 0 || stats.Inflated != 0 {
			t.Errorf("stats %+v: want deltas on the client's objects sent thin", stats)
		}
		c := client(t)
		cmd := sendGitCmd(c, "index-pack", "--stdin")
		cmd.Stdin = bytes.NewReader(pack)
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "unresolved deltas") {
			t.Errorf("index-pack without --fix-thin: %v, %s; want unresolved deltas", err, out)
		}
		gitIn(t, c, string(pack), "index-pack", "--stdin", "--fix-thin", "--strict")
		gitIn(t, c, "", "fsck", "--strict", "--no-dangling")
		if got, want := allObjects(t, c), allObjects(t, src); !slices.Equal(got, want) {
			t.Errorf("the client has %d objects, the repository %d", len(got), len(want))
		}
	})
}

// TestWritePackLooseAndOutOfOrder: a loose object is deflated into the pack, and a REF delta
// stored before its base is sent after it.
func TestWritePackLooseAndOutOfOrder(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	base := bytes.Repeat([]byte("the base of a delta stored before it\n"), 50)
	baseID := plumbing.ComputeHash(plumbing.BlobObject, base)
	// The base with its last line changed.
	delta := appendDeltaHeader(nil, len(base), len(base))
	delta = appendCopy(delta, 0, len(base)-4)
	delta = append(delta, 4, 'e', 'n', 'd', '\n')
	result := append(bytes.Clone(base[:len(base)-4]), "end\n"...)
	storeWithGit(t, dir, rawPack(
		rawObject{typ: plumbing.REFDeltaObject, ref: baseID, data: delta},
		rawObject{typ: plumbing.BlobObject, data: base},
	))
	loose := strings.TrimSpace(string(gitIn(t, dir, "a loose blob\n", "hash-object", "-w", "--stdin")))

	objs := []plumbing.Hash{plumbing.ComputeHash(plumbing.BlobObject, result), baseID, plumbing.NewHash(loose)}
	for _, ofs := range []bool{true, false} {
		pack, stats := writePack(t, dir, objs, SendOptions{OFSDelta: ofs})
		if stats.Loose != 1 || stats.Deltas != 1 {
			t.Errorf("ofs-delta=%v: stats %+v, want 1 loose, 1 delta", ofs, stats)
		}
		client := bareRepo(t)
		gitIn(t, client, string(pack), "index-pack", "--stdin", "--strict")
		if got := gitIn(t, client, "", "cat-file", "blob", objs[0].String()); !bytes.Equal(got, result) {
			t.Errorf("ofs-delta=%v: the delta reads %q", ofs, got)
		}
	}
}

// TestWritePackCorruptStoredObject: stored bytes that do not match the index's CRC-32 are
// not sent.
func TestWritePackCorruptStoredObject(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	blob := bytes.Repeat([]byte("corrupt me\n"), 100)
	pack := rawPack(rawObject{typ: plumbing.BlobObject, data: blob})
	storeWithGit(t, dir, pack)
	name := filepath.Join(dir, "objects", "pack", fmt.Sprintf("pack-%x.pack", pack[len(pack)-20:]))
	if err := os.Chmod(name, 0o644); err != nil {
		t.Fatal(err)
	}
	stored, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	stored[len(stored)-25] ^= 0xff
	if err := os.WriteFile(name, stored, 0o644); err != nil {
		t.Fatal(err)
	}
	packs, err := OpenPacks(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer packs.Close()
	_, err = packs.WritePack(t.Context(), io.Discard, []plumbing.Hash{plumbing.ComputeHash(plumbing.BlobObject, blob)}, SendOptions{})
	if err == nil || !strings.Contains(err.Error(), "CRC-32") {
		t.Errorf("WritePack of a corrupt object: %v", err)
	}
}

// appendDeltaHeader appends the sizes that start a delta's instructions.
func appendDeltaHeader(b []byte, src, target int) []byte {
	for _, v := range []int{src, target} {
		for v >= 0x80 {
			b = append(b, byte(v)|0x80)
			v >>= 7
		}
		b = append(b, byte(v))
	}
	return b
}

// appendCopy appends an instruction that copies n bytes (at most 0xffffff) at off of the
// base.
func appendCopy(b []byte, off, n int) []byte {
	cmd := byte(0x80)
	var args []byte
	for i := range 4 {
		if c := byte(off >> (8 * i)); c != 0 {
			cmd |= 1 << i
			args = append(args, c)
		}
	}
	for i := range 3 {
		if c := byte(n >> (8 * i)); c != 0 {
			cmd |= 0x10 << i
			args = append(args, c)
		}
	}
	return append(append(b, cmd), args...)
}

// largeDeltaPack is a pack of a 3 MiB blob and deltas on it (and on each other) with more
// than 1 MiB each, whose copies go backwards in the base and then forwards again past where
// the previous copy ended: the case go-git v5's streaming reader gets wrong (go-git#2378).
// It returns the pack and the content of each of its objects, in order.
func largeDeltaPack() ([]byte, [][]byte) {
	const mib = 1 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	base := make([]byte, 3*mib)
	for i := range base {
		base[i] = byte(rng.Uint32())
	}
	d1 := appendDeltaHeader(nil, len(base), 2*mib+mib/2)
	d1 = appendCopy(d1, mib, mib)         // base[1M:2M]
	d1 = appendCopy(d1, 0, 16)            // back to the start
	d1 = appendCopy(d1, 2*mib+100, mib/2) // forwards again, past 2M+16
	d1 = append(d1, 3, 'x', 'y', 'z')
	d1 = appendCopy(d1, 5, mib-19) // back again
	r1 := slices.Concat(base[mib:2*mib], base[:16], base[2*mib+100:2*mib+100+mib/2], []byte("xyz"), base[5:5+mib-19])

	// A delta on the first delta, by id: a chain of two large objects.
	d2 := appendDeltaHeader(nil, len(r1), 2*mib)
	d2 = appendCopy(d2, mib+7, mib)
	d2 = appendCopy(d2, 3, mib)
	r2 := slices.Concat(r1[mib+7:2*mib+7], r1[3:mib+3])

	// A small delta on the large base.
	d3 := appendDeltaHeader(nil, len(base), 300)
	d3 = appendCopy(d3, 2*mib+5, 200)
	d3 = appendCopy(d3, 10, 100)
	r3 := slices.Concat(base[2*mib+5:2*mib+205], base[10:110])

	pack := rawPack(
		rawObject{typ: plumbing.BlobObject, data: base},
		rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: d1},
		rawObject{typ: plumbing.REFDeltaObject, ref: plumbing.ComputeHash(plumbing.BlobObject, r1), data: d2},
		rawObject{typ: plumbing.OFSDeltaObject, ofsTo: 12, data: d3},
	)
	return pack, [][]byte{base, r1, r2, r3}
}

// TestOpenStreamsDeltas: the content of large deltas, and of a small one on a large base,
// streams right, within bounded memory.
func TestOpenStreamsDeltas(t *testing.T) {
	dir := bareRepo(t)
	pack, contents := largeDeltaPack()
	storeWithGit(t, dir, pack)
	packs, err := OpenPacks(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer packs.Close()
	for i, want := range contents {
		h := plumbing.ComputeHash(plumbing.BlobObject, want)
		loc, ok, err := packs.locate(h)
		if err != nil || !ok {
			t.Fatalf("object %d: %v, %v", i, ok, err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		rc, typ, size, err := packs.open(loc)
		if err != nil {
			t.Fatal(err)
		}
		hasher := plumbing.NewHasher(typ, size)
		n, err := io.Copy(hasher, rc)
		if err != nil {
			t.Fatalf("object %d: %v", i, err)
		}
		rc.Close()
		runtime.ReadMemStats(&after)
		if got := hasher.Sum(); got != h || n != int64(len(want)) {
			t.Errorf("object %d reads as %s (%d bytes), want %s", i, got, n, h)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 && i != 3 {
			t.Errorf("object %d of %d bytes: reading it allocated %d bytes", i, len(want), alloc)
		}
	}
}

// TestLargeDeltasMendGoGit: go-git reads the large deltas of largeDeltaPack right through a
// cache that hands them to LargeDeltas, as gitserver opens its storages.
func TestLargeDeltasMendGoGit(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	pack, contents := largeDeltaPack()
	storeWithGit(t, dir, pack)
	for _, mended := range []bool{false, true} {
		var c cache.Object = cache.NewObjectLRU(8 * cache.MiByte)
		if mended {
			c = &mendingCache{Object: c, large: NewLargeDeltas(dir, 1<<20, nil)}
		}
		st := filesystem.NewStorageWithOptions(osfs.New(dir), c, filesystem.Options{KeepDescriptors: true, LargeObjectThreshold: 1 << 20})
		for i, want := range contents {
			h := plumbing.ComputeHash(plumbing.BlobObject, want)
			blob, err := object.GetBlob(st, h)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := blob.Reader()
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			switch {
			case !mended && i == 1 && bytes.Equal(got, want):
				t.Log("go-git reads the large delta right by itself now: go-git#2378 is fixed, LargeDeltas may go")
			case !mended:
			case err != nil || !bytes.Equal(got, want):
				t.Errorf("object %d: %d bytes, %v; want its %d bytes", i, len(got), err, len(want))
			}
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// mendingCache is gitserver's storage cache: go-git's LRU, then LargeDeltas.
type mendingCache struct {
	cache.Object
	large *LargeDeltas
}

func (c *mendingCache) Get(h plumbing.Hash) (plumbing.EncodedObject, bool) {
	if o, ok := c.Object.Get(h); ok {
		return o, true
	}
	return c.large.Get(h)
}

// TestLargeDeltasFindsNewPacks: a pack stored after LargeDeltas listed the packs (a push
// while a storage is open) is found when one of its objects is asked for.
func TestLargeDeltasFindsNewPacks(t *testing.T) {
	t.Parallel()
	dir := bareRepo(t)
	small := []byte("small\n")
	storeWithGit(t, dir, rawPack(rawObject{typ: plumbing.BlobObject, data: small}))
	l := NewLargeDeltas(dir, 1<<20, nil)
	if _, ok := l.Get(plumbing.ComputeHash(plumbing.BlobObject, small)); ok {
		t.Fatal("a small whole blob is taken from go-git")
	}
	pack, contents := largeDeltaPack()
	storeWithGit(t, dir, pack)
	for i, c := range contents {
		obj, ok := l.Get(plumbing.ComputeHash(plumbing.BlobObject, c))
		if ok != (i > 0) {
			t.Errorf("object %d: Get says %v", i, ok)
			continue
		}
		if ok && (obj.Size() != int64(len(c)) || obj.Type() != plumbing.BlobObject) {
			t.Errorf("object %d: %s of %d bytes, want a blob of %d", i, obj.Type(), obj.Size(), len(c))
		}
	}
}
