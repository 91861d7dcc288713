package releaser

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing/filemode"
)

// linkFiles is the tree the link-mode tests start from.
func linkFiles() map[string]file {
	return map[string]file{
		"index.html":   {filemode.Regular, "hello\n"},
		"app/main.js":  {filemode.Regular, "main()\n"},
		"bin/run":      {filemode.Executable, "#!/bin/sh\n"},
		"changing.txt": {filemode.Regular, "first\n"},
	}
}

// materialize writes a release of files, a new commit of g, and returns it.
func (e *env) materialize(g *repo, files map[string]file) (string, Stats) {
	e.t.Helper()
	sha := g.commit(g.treeOf(files))
	stats, err := e.r.Materialize(e.t.Context(), g.st, sha, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return sha, stats
}

// goLive completes sha and makes it live, as a deploy does after its checks.
func (e *env) goLive(sha string) {
	e.t.Helper()
	must(e.t, e.r.Complete(sha))
	e.activate(sha)
}

// tamper changes the file name as a build running as its owner can without changing its
// mode or mtime: make it writable, append, put the mode back, set the mtime back.
func tamper(t *testing.T, name string) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.Chmod(name, fi.Mode().Perm()|0o200))
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("tampered\n")
	must(t, errors.Join(err, f.Close()))
	must(t, os.Chmod(name, fi.Mode().Perm()))
	must(t, os.Chtimes(name, fi.ModTime(), fi.ModTime()))
	after, err := os.Stat(name)
	if err != nil || after.Mode() != fi.Mode() || !after.ModTime().Equal(fi.ModTime()) || after.Size() == fi.Size() {
		t.Fatalf("tamper %s: mode %v mtime %v size %d, was %v %v %d (%v)", name, after.Mode(), after.ModTime(), after.Size(), fi.Mode(), fi.ModTime(), fi.Size(), err)
	}
}

func inodeOf(t *testing.T, name string) uint64 {
	t.Helper()
	fi, err := os.Lstat(name)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func readString(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCheckLinkedTamper: a build that changes, in place, a file its release shares with
// the live release, and then puts its mode and mtime back, changes the live release's file
// (one inode); CheckLinked fails with the path, and no later release links that inode.
func TestCheckLinkedTamper(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	files := linkFiles()
	first, _ := e.materialize(g, files)
	must(t, e.r.CheckLinked(first))
	e.goLive(first)

	files["changing.txt"] = file{filemode.Regular, "second\n"}
	second, stats := e.materialize(g, files)
	if stats.Reused != 3 {
		t.Fatalf("second release: stats %+v, want 3 files linked", stats)
	}
	live := filepath.Join(e.r.Dir(first), "index.html")
	if inodeOf(t, live) != inodeOf(t, filepath.Join(e.r.Dir(second), "index.html")) {
		t.Fatal("index.html is not linked from the live release")
	}
	tamper(t, filepath.Join(e.r.Dir(second), "index.html"))
	if got := readString(t, live); got != "hello\ntampered\n" {
		t.Fatalf("live index.html = %q: the tamper did not reach the shared inode", got)
	}

	err := e.r.CheckLinked(second)
	var lf *LinkedFileError
	if !errors.As(err, &lf) || lf.Path != "index.html" || lf.More != 0 {
		t.Fatalf("CheckLinked = %v, want a *LinkedFileError for index.html alone", err)
	}
	want := `"index.html" was changed in place by the build, and it is shared with the live release (release_files = "link"), whose file changed with it`
	if reason, ok := Reason(err); !ok || reason != want {
		t.Errorf("Reason() = %q, %v; want %q", reason, ok, want)
	}
	must(t, e.r.Discard(second)) // what the pipeline does with a failed release

	// The next release of the same tree gets a fresh index.html from the object store; the
	// untouched files are linked as before.
	third, stats := e.materialize(g, files)
	if stats.Reused != 2 {
		t.Errorf("third release: stats %+v, want 2 files linked (not index.html)", stats)
	}
	fresh := filepath.Join(e.r.Dir(third), "index.html")
	if inodeOf(t, fresh) == inodeOf(t, live) {
		t.Error("the tampered index.html was linked into a later release")
	}
	if got := readString(t, fresh); got != "hello\n" {
		t.Errorf("third release's index.html = %q, want the commit's", got)
	}
	for _, name := range []string{"app/main.js", "bin/run"} {
		if inodeOf(t, filepath.Join(e.r.Dir(third), name)) != inodeOf(t, filepath.Join(e.r.Dir(first), name)) {
			t.Errorf("%s: not linked from the live release", name)
		}
	}
	must(t, e.r.CheckLinked(third))
}

// TestMaterializeSkipsTamperedOwnFile: a file a build changed in its own release (no other
// release shares it yet) and whose mode and mtime it put back is never linked from it.
func TestMaterializeSkipsTamperedOwnFile(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	files := linkFiles()
	first, _ := e.materialize(g, files)
	tamper(t, filepath.Join(e.r.Dir(first), "app/main.js"))
	must(t, e.r.CheckLinked(first)) // its own file: nothing live changed
	e.goLive(first)

	files["changing.txt"] = file{filemode.Regular, "second\n"}
	second, stats := e.materialize(g, files)
	if stats.Reused != 2 {
		t.Errorf("stats %+v, want 2 files linked (not app/main.js)", stats)
	}
	if got := readString(t, filepath.Join(e.r.Dir(second), "app/main.js")); got != "main()\n" {
		t.Errorf("app/main.js = %q, want the commit's", got)
	}
}

// TestCheckLinkedUntouched: a build that leaves the shared files alone passes, and so does
// one that only removes, renames, touches or re-chmods them (their ctime moves, their
// content and mode do not). Those are not linked again; the others are.
func TestCheckLinkedUntouched(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	files := linkFiles()
	files["gone.txt"] = file{filemode.Regular, "the build removes me\n"}
	files["moved.txt"] = file{filemode.Regular, "the build renames me\n"}
	files["touched.txt"] = file{filemode.Regular, "the build touches me\n"}
	files["rechmod.txt"] = file{filemode.Regular, "the build chmods me to my mode\n"}
	first, _ := e.materialize(g, files)
	e.goLive(first)

	files["changing.txt"] = file{filemode.Regular, "second\n"}
	second, stats := e.materialize(g, files)
	if stats.Reused != 7 {
		t.Fatalf("stats %+v, want 7 files linked", stats)
	}
	must(t, e.r.CheckLinked(second))
	dir := e.r.Dir(second)
	must(t, os.Remove(filepath.Join(dir, "gone.txt")))
	must(t, os.Rename(filepath.Join(dir, "moved.txt"), filepath.Join(dir, "elsewhere.txt")))
	must(t, os.Chtimes(filepath.Join(dir, "touched.txt"), time.Now(), time.Now()))
	must(t, os.Chmod(filepath.Join(dir, "rechmod.txt"), 0o444))
	must(t, os.WriteFile(filepath.Join(dir, "built.txt"), []byte("output"), 0o644))
	must(t, e.r.CheckLinked(second))
	e.goLive(second)

	files["changing.txt"] = file{filemode.Regular, "third\n"}
	third, stats := e.materialize(g, files)
	// index.html, app/main.js, bin/run; gone.txt and moved.txt are not in the live
	// release any more, touched.txt and rechmod.txt are untrusted.
	if stats.Reused != 3 {
		t.Errorf("third release: stats %+v, want 3 files linked", stats)
	}
	for _, name := range []string{"touched.txt", "rechmod.txt"} {
		if inodeOf(t, filepath.Join(e.r.Dir(third), name)) == inodeOf(t, filepath.Join(dir, name)) {
			t.Errorf("%s: linked, though its ctime moved", name)
		}
	}
	must(t, e.r.CheckLinked(third))
}

// TestCheckLinkedChangedAndMoved: a build that moves a shared file away, changes it and
// puts it back elsewhere still changed the live release's file: CheckLinked finds it
// through the live release, and counts every changed file.
func TestCheckLinkedChangedAndMoved(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	files := linkFiles()
	first, _ := e.materialize(g, files)
	e.goLive(first)
	files["changing.txt"] = file{filemode.Regular, "second\n"}
	second, _ := e.materialize(g, files)
	dir := e.r.Dir(second)
	must(t, os.Rename(filepath.Join(dir, "app/main.js"), filepath.Join(dir, "hidden")))
	tamper(t, filepath.Join(dir, "hidden"))
	must(t, os.Chmod(filepath.Join(dir, "bin/run"), 0o755)) // writable: the live one too
	err := e.r.CheckLinked(second)
	var lf *LinkedFileError
	if !errors.As(err, &lf) || lf.More != 1 || (lf.Path != "app/main.js" && lf.Path != "bin/run") {
		t.Fatalf("CheckLinked = %v, want a *LinkedFileError for app/main.js and bin/run", err)
	}
}

// TestCheckLinkedAfterPrune: a prune removes names of inodes the live release and the
// release being built share, which moves their ctime. The live release's record follows
// (the next release links them again), and CheckLinked neither fails for it nor misses a
// change made after it.
func TestCheckLinkedAfterPrune(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true, KeepReleases: 1})
	g := newRepo(t)
	files := linkFiles()
	var shas []string
	for i, content := range []string{"1\n", "2\n", "3\n"} {
		files["changing.txt"] = file{filemode.Regular, content}
		sha, stats := e.materialize(g, files)
		if i > 0 && stats.Reused != 3 {
			t.Fatalf("release %d: stats %+v, want 3 files linked", i+1, stats)
		}
		must(t, e.r.CheckLinked(sha))
		e.goLive(sha)
		removed, err := e.r.Prune()
		must(t, err)
		if i == 2 && (len(removed) != 1 || removed[0] != shas[0]) {
			t.Fatalf("prune removed %v, want the first release", removed)
		}
		shas = append(shas, sha)
	}
	// The prune moved the ctime of the shared inodes: the live release's record says so.
	files["changing.txt"] = file{filemode.Regular, "4\n"}
	fourth, stats := e.materialize(g, files)
	if stats.Reused != 3 {
		t.Fatalf("fourth release: stats %+v, want 3 files linked after the prune", stats)
	}
	must(t, e.r.CheckLinked(fourth))
	e.goLive(fourth)

	// A prune between the checkout of a release and its check.
	files["changing.txt"] = file{filemode.Regular, "5\n"}
	fifth, _ := e.materialize(g, files)
	removed, err := e.r.Prune()
	must(t, err)
	if len(removed) != 1 || removed[0] != shas[1] {
		t.Fatalf("prune removed %v, want the second release", removed)
	}
	must(t, e.r.CheckLinked(fifth))
	tamper(t, filepath.Join(e.r.Dir(fifth), "index.html"))
	var lf *LinkedFileError
	if err := e.r.CheckLinked(fifth); !errors.As(err, &lf) || lf.Path != "index.html" {
		t.Fatalf("CheckLinked after the prune and a change = %v, want a *LinkedFileError for index.html", err)
	}
	must(t, e.r.Discard(fifth))
	sixth, _ := e.materialize(g, files)
	if inodeOf(t, filepath.Join(e.r.Dir(sixth), "index.html")) == inodeOf(t, filepath.Join(e.r.Dir(fourth), "index.html")) {
		t.Error("the changed index.html was linked into a later release")
	}
	if got := readString(t, filepath.Join(e.r.Dir(sixth), "index.html")); got != "hello\n" {
		t.Errorf("sixth release's index.html = %q, want the commit's", got)
	}
}

// TestInodeRecordCrash: a live release whose inode record is missing (a crash before it
// was written), cut short or damaged has nothing linked from it, though its files look
// untouched; one of them was not. CheckLinked of a release without its record fails.
func TestInodeRecordCrash(t *testing.T) {
	damage := map[string]func(t *testing.T, name string){
		"missing": func(t *testing.T, name string) { must(t, os.Remove(name)) },
		"empty":   func(t *testing.T, name string) { must(t, os.Truncate(name, 0)) },
		"cut short": func(t *testing.T, name string) {
			fi, err := os.Stat(name)
			must(t, err)
			must(t, os.Truncate(name, fi.Size()/2))
		},
		"without its checksum": func(t *testing.T, name string) {
			fi, err := os.Stat(name)
			must(t, err)
			must(t, os.Truncate(name, fi.Size()-32))
		},
		"a byte flipped": func(t *testing.T, name string) {
			b, err := os.ReadFile(name)
			must(t, err)
			b[len(b)/2] ^= 1
			must(t, os.WriteFile(name, b, 0o644))
		},
	}
	for what, fn := range damage {
		t.Run(what, func(t *testing.T) {
			e := newEnv(t, Config{LinkFiles: true})
			g := newRepo(t)
			files := linkFiles()
			first, _ := e.materialize(g, files)
			tamper(t, filepath.Join(e.r.Dir(first), "index.html"))
			fn(t, e.r.inodesPath(first))
			if err := e.r.CheckLinked(first); !errors.Is(err, errNoInodes) {
				t.Errorf("CheckLinked without an intact record = %v, want errNoInodes", err)
			}
			e.goLive(first)

			files["changing.txt"] = file{filemode.Regular, "second\n"}
			second, stats := e.materialize(g, files)
			if stats.Reused != 0 {
				t.Errorf("stats %+v: files linked from a release without an intact record", stats)
			}
			for _, name := range []string{"index.html", "app/main.js"} {
				if inodeOf(t, filepath.Join(e.r.Dir(second), name)) == inodeOf(t, filepath.Join(e.r.Dir(first), name)) {
					t.Errorf("%s: linked", name)
				}
			}
			must(t, e.r.CheckLinked(second))
		})
	}
}

// TestInodeRecordsFollowReleases: a release's record goes with it, and Recover removes the
// records of releases that are not complete, and temporary ones.
func TestInodeRecordsFollowReleases(t *testing.T) {
	e := newEnv(t, Config{LinkFiles: true})
	g := newRepo(t)
	files := linkFiles()
	first, _ := e.materialize(g, files)
	e.goLive(first)
	files["changing.txt"] = file{filemode.Regular, "second\n"}
	second, _ := e.materialize(g, files)
	must(t, e.r.Discard(second))
	if _, err := os.Stat(e.r.inodesPath(second)); !os.IsNotExist(err) {
		t.Errorf("record of a discarded release: %v", err)
	}
	third, _ := e.materialize(g, files) // a crash in its build
	stale := filepath.Join(e.r.inodesDir(), "."+third+".tmp-1")
	must(t, os.WriteFile(stale, []byte("half"), 0o644))
	must(t, e.r.Recover())
	entries, err := os.ReadDir(e.r.inodesDir())
	must(t, err)
	if len(entries) != 1 || entries[0].Name() != first {
		t.Errorf("records after Recover: %v, want the live release's only", entries)
	}
	// The crashed release's removal kept the live release's files trusted.
	fourth, stats := e.materialize(g, files)
	if stats.Reused != 3 {
		t.Errorf("stats %+v, want 3 files linked", stats)
	}
	must(t, e.r.CheckLinked(fourth))
}

// TestCheckLinkedCopyMode: without LinkFiles there is nothing shared to check.
func TestCheckLinkedCopyMode(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	first, _ := e.materialize(g, linkFiles())
	if err := e.r.CheckLinked(first); err != nil {
		t.Errorf("CheckLinked in copy mode = %v", err)
	}
	if _, err := os.Stat(e.r.inodesPath(first)); !os.IsNotExist(err) {
		t.Errorf("inode record in copy mode: %v", err)
	}
}
