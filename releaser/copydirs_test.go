package releaser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
)

const (
	shaLive = "1111111111111111111111111111111111111111"
	shaNew  = "2222222222222222222222222222222222222222"
)

// writeTree writes files (path -> content; "->target" makes a symlink) under dir.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(body, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCopyDir(t *testing.T) {
	e := newEnv(t, Config{})
	live, next := e.r.Dir(shaLive), e.r.Dir(shaNew)
	writeTree(t, live, map[string]string{
		"node_modules/dep/index.js":      "module.exports = 1\n",
		"node_modules/dep/lib/deep/a.js": "a\n",
		"node_modules/.bin/dep":          "->../dep/index.js",
		"node_modules/escape":            "->" + e.sentinel, // copied as a link, never followed
		"node_modules/dep/package.json":  "{}\n",
		"vendor/autoload.php":            "<?php\n",
		"package-lock.json":              "{}\n",
	})
	if err := os.Chmod(filepath.Join(live, "node_modules/dep/index.js"), 0o555); err != nil {
		t.Fatal(err)
	}
	writeTree(t, next, map[string]string{"vendor/autoload.php": "<?php // committed\n", "app.js": "x\n"})

	stats, copied, err := e.r.CopyDir(shaLive, shaNew, "node_modules")
	if err != nil || !copied {
		t.Fatalf("CopyDir = %v, %v", copied, err)
	}
	if stats.Files != 5 || stats.Bytes != int64(len("module.exports = 1\n")+len("a\n")+len("{}\n")) {
		t.Errorf("stats = %+v", stats)
	}
	for _, f := range []string{"dep/index.js", "dep/lib/deep/a.js", "dep/package.json"} {
		a, b := filepath.Join(live, "node_modules", f), filepath.Join(next, "node_modules", f)
		want, _ := os.ReadFile(a)
		got, err := os.ReadFile(b)
		if err != nil || string(got) != string(want) {
			t.Errorf("%s = %q, %v; want %q", f, got, err, want)
		}
		var sa, sb syscall.Stat_t
		if err := syscall.Stat(a, &sa); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Stat(b, &sb); err != nil {
			t.Fatal(err)
		}
		if sa.Ino == sb.Ino || sb.Nlink != 1 {
			t.Errorf("%s: a hard link (inode %d, %d links), not a copy", f, sb.Ino, sb.Nlink)
		}
	}
	if fi, err := os.Stat(filepath.Join(next, "node_modules/dep/index.js")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("mode of a read-only file: %v, %v; want 0755 (kept, made writable by its owner)", fi.Mode(), err)
	}
	for link, want := range map[string]string{".bin/dep": "../dep/index.js", "escape": e.sentinel} {
		if got, err := os.Readlink(filepath.Join(next, "node_modules", link)); err != nil || got != want {
			t.Errorf("link %s = %q, %v; want %q", link, got, err, want)
		}
	}

	// The new release has committed vendor/: left alone.
	if _, copied, err := e.r.CopyDir(shaLive, shaNew, "vendor"); err != nil || copied {
		t.Errorf("vendor: copied %v, %v; want left alone", copied, err)
	}
	if b, _ := os.ReadFile(filepath.Join(next, "vendor/autoload.php")); string(b) != "<?php // committed\n" {
		t.Errorf("the committed vendor/autoload.php was overwritten: %q", b)
	}
	// The live release has none: nothing to copy.
	if _, copied, err := e.r.CopyDir(shaLive, shaNew, "bower_components"); err != nil || copied {
		t.Errorf("a dir the live release lacks: copied %v, %v", copied, err)
	}
	// A path that leaves the release is refused.
	for _, bad := range []string{"../x", "/etc", ""} {
		if _, _, err := e.r.CopyDir(shaLive, shaNew, bad); err == nil {
			t.Errorf("CopyDir(%q) = nil error", bad)
		}
	}
}

// A dir of the live release that is a symlink (to shared/, or anywhere) is not copied:
// copying through it would read outside the release.
func TestCopyDirSymlinkedDir(t *testing.T) {
	e := newEnv(t, Config{})
	writeTree(t, e.sentinel+"-outside", map[string]string{"secret": "s\n"})
	writeTree(t, e.r.Dir(shaLive), map[string]string{"node_modules": "->" + e.sentinel + "-outside"})
	if err := os.MkdirAll(e.r.Dir(shaNew), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, copied, err := e.r.CopyDir(shaLive, shaNew, "node_modules"); err != nil || copied {
		t.Fatalf("CopyDir through a symlink: copied %v, %v", copied, err)
	}
	if _, err := os.Lstat(filepath.Join(e.r.Dir(shaNew), "node_modules")); !os.IsNotExist(err) {
		t.Errorf("node_modules in the new release: %v", err)
	}
}

func TestSameFiles(t *testing.T) {
	e := newEnv(t, Config{})
	writeTree(t, e.r.Dir(shaLive), map[string]string{"package-lock.json": "{\"v\":1}\n"})
	writeTree(t, e.r.Dir(shaNew), map[string]string{"package-lock.json": "{\"v\":1}\n"})
	if same, err := e.r.SameFiles(shaLive, shaNew, []string{"package-lock.json", "yarn.lock"}); err != nil || !same {
		t.Errorf("same lockfiles (and both without yarn.lock): %v, %v", same, err)
	}
	writeTree(t, e.r.Dir(shaNew), map[string]string{"yarn.lock": "x\n"})
	if same, err := e.r.SameFiles(shaLive, shaNew, []string{"package-lock.json", "yarn.lock"}); err != nil || same {
		t.Errorf("a key file only the new release has: %v, %v", same, err)
	}
	if err := os.WriteFile(filepath.Join(e.r.Dir(shaNew), "package-lock.json"), []byte("{\"v\":2}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if same, err := e.r.SameFiles(shaLive, shaNew, []string{"package-lock.json"}); err != nil || same {
		t.Errorf("a changed lockfile: %v, %v", same, err)
	}
}

// BenchmarkCopyDir copies a node_modules-shaped tree (200 packages, 2,400 files of 1-12 KB,
// 12 MB) the way copy_dirs does, next to cp -a of the same tree: the baseline to compare.
//
//	go test -run '^$' -bench CopyDir ./releaser
func BenchmarkCopyDir(b *testing.B) {
	r, err := New(Config{Path: filepath.Join(b.TempDir(), "deploy")}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	files := map[string]string{}
	var bytes int64
	for p := range 200 {
		for f := range 12 {
			body := strings.Repeat(fmt.Sprintf("// package %d file %d\n", p, f), 40+(p*7+f*13)%500)
			files[fmt.Sprintf("node_modules/pkg%d/lib/sub%d/f%d.js", p, f%3, f)] = body
			bytes += int64(len(body))
		}
		files[fmt.Sprintf("node_modules/.bin/pkg%d", p)] = fmt.Sprintf("->../pkg%d/lib/sub0/f0.js", p)
	}
	writeTree(b, r.Dir(shaLive), files)
	b.SetBytes(bytes)
	n := 0
	fresh := func(b *testing.B) string { // a new release to copy into, made outside the timing
		b.StopTimer()
		defer b.StartTimer()
		n++
		sha := fmt.Sprintf("%040x", n)
		if err := os.MkdirAll(r.Dir(sha), 0o755); err != nil {
			b.Fatal(err)
		}
		return sha
	}
	b.Run("slipway", func(b *testing.B) {
		for b.Loop() {
			if _, copied, err := r.CopyDir(shaLive, fresh(b), "node_modules"); err != nil || !copied {
				b.Fatal(copied, err)
			}
		}
	})
	b.Run("cp-a", func(b *testing.B) {
		for b.Loop() {
			if out, err := exec.Command("cp", "-a", filepath.Join(r.Dir(shaLive), "node_modules"), r.Dir(fresh(b))).CombinedOutput(); err != nil {
				b.Fatal(err, string(out))
			}
		}
	})
}

// A spare is a copy of the live directory made ahead; the next deploy takes it with a
// rename, and only while the live directory is unchanged since it was copied.
func TestSpare(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, Config{})
	live := e.r.Dir(shaLive)
	writeTree(t, live, map[string]string{
		"node_modules/dep/index.js": "module.exports = 1\n",
		"node_modules/.bin/dep":     "->../dep/index.js",
	})
	if err := os.MkdirAll(e.r.Dir(shaNew), 0o755); err != nil {
		t.Fatal(err)
	}
	if made, err := e.r.PrepareSpare(ctx, shaLive, "node_modules"); err != nil || !made {
		t.Fatalf("PrepareSpare = %v, %v", made, err)
	}
	if made, err := e.r.PrepareSpare(ctx, shaLive, "node_modules"); err != nil || made {
		t.Fatalf("PrepareSpare again = %v, %v; want the one made before kept", made, err)
	}
	if made, err := e.r.PrepareSpare(ctx, shaLive, "vendor"); err != nil || made {
		t.Fatalf("PrepareSpare of a dir the release lacks = %v, %v", made, err)
	}
	stats, taken, err := e.r.TakeSpare(shaLive, shaNew, "node_modules")
	if err != nil || !taken || stats.Files != 2 {
		t.Fatalf("TakeSpare = %+v, %v, %v", stats, taken, err)
	}
	if b, err := os.ReadFile(filepath.Join(e.r.Dir(shaNew), "node_modules/dep/index.js")); err != nil || string(b) != "module.exports = 1\n" {
		t.Errorf("taken file = %q, %v", b, err)
	}
	if got, _ := os.Readlink(filepath.Join(e.r.Dir(shaNew), "node_modules/.bin/dep")); got != "../dep/index.js" {
		t.Errorf("taken link = %q", got)
	}
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(live, "node_modules/dep/index.js"), &a)
	syscall.Stat(filepath.Join(e.r.Dir(shaNew), "node_modules/dep/index.js"), &b)
	if a.Ino == b.Ino {
		t.Error("the taken file is the live one (a hard link), not a copy")
	}
	if _, taken, err := e.r.TakeSpare(shaLive, shaNew, "node_modules"); err != nil || taken {
		t.Errorf("a spare taken twice: %v, %v", taken, err)
	}
	if entries, _ := os.ReadDir(e.r.spareRoot()); len(entries) != 0 {
		t.Errorf("spare/ after the take: %d entries", len(entries))
	}

	// The live directory changes after the spare was made (the running app writes to it):
	// the spare is not taken, and is removed.
	if _, err := e.r.PrepareSpare(ctx, shaLive, "node_modules"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(live, "node_modules/dep/index.js"), []byte("module.exports = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := "3333333333333333333333333333333333333333"
	if err := os.MkdirAll(e.r.Dir(other), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, taken, err := e.r.TakeSpare(shaLive, other, "node_modules"); err != nil || taken {
		t.Errorf("an outdated spare was taken: %v, %v", taken, err)
	}
	if entries, _ := os.ReadDir(e.r.spareRoot()); len(entries) != 0 {
		t.Errorf("the outdated spare stays: %d entries", len(entries))
	}

	// A spare of another release goes when the live release's is made; a release that has
	// the path committed keeps its own.
	if _, err := e.r.PrepareSpare(ctx, shaLive, "node_modules"); err != nil {
		t.Fatal(err)
	}
	writeTree(t, e.r.Dir(other), map[string]string{"node_modules/own.js": "own\n"})
	if _, taken, err := e.r.TakeSpare(shaLive, other, "node_modules"); err != nil || taken {
		t.Errorf("a spare over a committed dir: %v, %v", taken, err)
	}
	writeTree(t, e.r.Dir(other), map[string]string{"node_modules/x": "x\n"})
	if made, err := e.r.PrepareSpare(ctx, other, "node_modules"); err != nil || !made {
		t.Fatalf("PrepareSpare of the new live release = %v, %v", made, err)
	}
	entries, _ := os.ReadDir(e.r.spareRoot())
	if len(entries) != 1 || !strings.HasPrefix(entries[0].Name(), other) {
		t.Errorf("spares = %v; want only the live release's", entries)
	}

	// A copy cut short (shutdown) leaves nothing in spare/, and its work in tmp/, which
	// ClearTemp clears at start.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if made, err := e.r.PrepareSpare(cancelled, shaLive, "node_modules"); err == nil || made {
		t.Errorf("PrepareSpare with its context ended = %v, %v", made, err)
	}
	entries, _ = os.ReadDir(e.r.spareRoot())
	if len(entries) != 0 {
		t.Errorf("a spare of another release stayed, or a cut-short one was kept: %v", entries)
	}
}
