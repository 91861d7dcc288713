package releaser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing/filemode"
)

func TestLinkShared(t *testing.T) {
	tree := map[string]file{
		"config/.env":       {filemode.Regular, "committed"},
		"config/app.yml":    {filemode.Regular, "app"},
		"storage/cache/x":   {filemode.Regular, "x"},
		"public/index.html": {filemode.Regular, "hi"},
		"conf":              {filemode.Symlink, "../../../sentinel"},
		"docs":              {filemode.Symlink, "public"},
		"README":            {filemode.Regular, "readme"},
	}
	tests := []struct {
		name        string
		files, dirs []string
		shared      []string          // files to create in shared/ first
		want        map[string]string // changes to the release's snapshot; "" = gone
		wantShared  []string          // dirs that must exist in shared/ afterwards
		wantErr     string            // "": success
		wantMissing string            // MissingSharedError.Path, relative to the deploy root
	}{{
		name:   "files and dirs, replacing what the tree has",
		files:  []string{"config/.env", "README"},
		dirs:   []string{"storage", "logs/app", "public/uploads/"},
		shared: []string{"config/.env", "README"},
		want: map[string]string{
			"config/.env":     "link ../../../shared/config/.env",
			"README":          "link ../../shared/README",
			"storage":         "link ../../shared/storage",
			"storage/cache":   "",
			"storage/cache/x": "",
			"logs":            "dir 0755",
			"logs/app":        "link ../../../shared/logs/app",
			"public/uploads":  "link ../../../shared/public/uploads",
		},
		wantShared: []string{"storage", "logs/app", "public/uploads"},
	}, {
		name:        "missing shared file",
		files:       []string{"config/.env"},
		dirs:        []string{"storage"},
		wantMissing: "shared/config/.env",
	}, {
		name:    "absolute path",
		files:   []string{"/etc/passwd"},
		wantErr: `"/etc/passwd"`,
	}, {
		name:    "escaping path",
		dirs:    []string{"../x"},
		wantErr: `"../x"`,
	}, {
		name:    "escaping after cleaning",
		files:   []string{"a/../../x"},
		wantErr: `"a/../../x"`,
	}, {
		name:    "the release itself",
		dirs:    []string{"."},
		wantErr: `"."`,
	}, {
		name:    "empty path",
		files:   []string{""},
		wantErr: `""`,
	}, {
		name:    "through a committed symlink leaving the release",
		files:   []string{"conf/x"},
		shared:  []string{"conf/x"},
		wantErr: "conf is not a directory",
	}, {
		name:    "through a committed symlink inside the release",
		dirs:    []string{"docs/uploads"},
		wantErr: "docs is not a directory",
	}, {
		name:    "shared file is a directory",
		files:   []string{"config"},
		shared:  []string{"config/.env"},
		wantErr: "is a directory",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			g := newRepo(t)
			sha := g.commit(g.treeOf(tree))
			if _, err := e.r.Materialize(t.Context(), g.st, sha, nil); err != nil {
				t.Fatal(err)
			}
			for _, p := range tt.shared {
				p = filepath.Join(e.r.Path(), "shared", p)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("real "+p), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshot(t, e.r.Dir(sha))
			want := snapshot(t, e.r.Dir(sha))
			for k, v := range tt.want {
				if v == "" {
					delete(want, k)
				} else {
					want[k] = v
				}
			}

			err := e.r.LinkShared(sha, tt.files, tt.dirs)
			if tt.wantMissing != "" {
				var me *MissingSharedError
				if !errors.As(err, &me) {
					t.Fatalf("LinkShared: %v, want a *MissingSharedError", err)
				}
				abs := filepath.Join(e.r.Path(), tt.wantMissing)
				if me.Path != abs || err.Error() != "shared file "+abs+" does not exist: create it on the server" {
					t.Errorf("error %q, path %q", err, me.Path)
				}
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("LinkShared: %v, want an error with %s", err, tt.wantErr)
			}
			if tt.wantErr != "" || tt.wantMissing != "" {
				assertSnapshot(t, snapshot(t, e.r.Dir(sha)), before)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			assertSnapshot(t, snapshot(t, e.r.Dir(sha)), want)
			for _, d := range tt.wantShared {
				if !isDir(filepath.Join(e.r.Path(), "shared", d)) {
					t.Errorf("shared/%s is not a directory", d)
				}
			}
			// The links resolve to the shared content.
			for _, p := range tt.files {
				b, err := os.ReadFile(filepath.Join(e.r.Dir(sha), p))
				if err != nil || string(b) != "real "+filepath.Join(e.r.Path(), "shared", p) {
					t.Errorf("%s reads %q, %v", p, b, err)
				}
			}
			// Idempotent: every activation links again.
			if err := e.r.LinkShared(sha, tt.files, tt.dirs); err != nil {
				t.Fatalf("second LinkShared: %v", err)
			}
			assertSnapshot(t, snapshot(t, e.r.Dir(sha)), want)
		})
	}
}

// TestDiscardRemovesCreatedSharedDirs: a deploy that fails leaves shared/ as it found it.
// The shared dirs LinkShared created for it go with Discard, with what the build wrote into
// them; those that existed before stay as they are, and so do those created for a release
// that went live.
func TestDiscardRemovesCreatedSharedDirs(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	shared := filepath.Join(e.r.Path(), "shared")
	write := func(rel string) {
		t.Helper()
		p := filepath.Join(shared, rel)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(rel), 0o644))
	}

	// uploads is created for a release that goes live: it is that release's now.
	live := g.commit(g.treeOf(map[string]file{"live": {filemode.Regular, "live"}}))
	_, err := e.r.Materialize(t.Context(), g.st, live, nil)
	must(t, err)
	must(t, e.r.LinkShared(live, nil, []string{"uploads"}))
	must(t, e.r.Complete(live))
	e.activate(live)
	write("uploads/photo.jpg")
	write("keep/k")
	before := snapshot(t, shared)

	failed := g.commit(g.treeOf(map[string]file{"failed": {filemode.Regular, "failed"}}))
	_, err = e.r.Materialize(t.Context(), g.st, failed, nil)
	must(t, err)
	must(t, e.r.LinkShared(failed, nil, []string{"uploads", "new/deep/dir", "logs", "keep/sub"}))
	must(t, e.r.LinkShared(failed, nil, []string{"uploads", "new/deep/dir", "logs", "keep/sub"})) // again: idempotent
	for _, d := range []string{"new/deep/dir", "logs", "keep/sub"} {
		if !isDir(filepath.Join(shared, d)) {
			t.Fatalf("shared/%s was not created", d)
		}
	}
	// What the failed build wrote.
	write("new/deep/dir/out")
	write("logs/build.log")
	write("keep/sub/z")
	write("keep/written-by-the-build")
	write("uploads/u")
	must(t, e.r.Discard(failed))

	want := before
	want["keep/written-by-the-build"] = "file 0644 keep/written-by-the-build"
	want["uploads/u"] = "file 0644 uploads/u"
	assertSnapshot(t, snapshot(t, shared), want)

	// Another failed release that created nothing removes nothing; nor does a second Discard.
	other := g.commit(g.treeOf(map[string]file{"other": {filemode.Regular, "other"}}))
	_, err = e.r.Materialize(t.Context(), g.st, other, nil)
	must(t, err)
	must(t, e.r.LinkShared(other, nil, []string{"uploads", "keep"}))
	must(t, e.r.Discard(other))
	must(t, e.r.Discard(failed))
	assertSnapshot(t, snapshot(t, shared), want)
}

// TestDiscardAfterLiveKeepsSharedDirs: once a release went live, the dirs created for it
// are no longer Discard's, not even when that release is discarded later (a redeploy after
// a rollback): the live release may use them.
func TestDiscardAfterLiveKeepsSharedDirs(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	a := g.commit(g.treeOf(map[string]file{"a": {filemode.Regular, "a"}}))
	_, err := e.r.Materialize(t.Context(), g.st, a, nil)
	must(t, err)
	must(t, e.r.LinkShared(a, nil, []string{"uploads"}))
	must(t, e.r.Complete(a))
	e.activate(a)
	b := e.release(g)
	must(t, e.r.LinkShared(b, nil, []string{"uploads"}))
	e.activate(b)
	must(t, e.r.Discard(a))
	if !isDir(filepath.Join(e.r.Path(), "shared", "uploads")) {
		t.Error("shared/uploads, made for a release that went live, was removed when it was discarded")
	}
}

// TestDiscardCreatedSharedDirsNotThroughSymlinks: a build that puts a symlink in place of a
// created shared dir, or of its parent, cannot make Discard remove anything elsewhere.
func TestDiscardCreatedSharedDirsNotThroughSymlinks(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	shared := filepath.Join(e.r.Path(), "shared")
	victim := filepath.Join(e.base, "victim")
	for _, p := range []string{"top/k", "x/k"} {
		must(t, os.MkdirAll(filepath.Join(victim, filepath.Dir(p)), 0o755))
		must(t, os.WriteFile(filepath.Join(victim, p), []byte("precious"), 0o644))
	}
	must(t, os.Mkdir(filepath.Join(shared, "pre"), 0o755))
	sha := g.commit(g.treeOf(map[string]file{"a": {filemode.Regular, "a"}}))
	_, err := e.r.Materialize(t.Context(), g.st, sha, nil)
	must(t, err)
	must(t, e.r.LinkShared(sha, nil, []string{"top", "pre/x"})) // creates top, and x in pre
	// The build swaps both for symlinks to the victim's.
	must(t, os.RemoveAll(filepath.Join(shared, "top")))
	must(t, os.Symlink(filepath.Join(victim, "top"), filepath.Join(shared, "top")))
	must(t, os.RemoveAll(filepath.Join(shared, "pre")))
	must(t, os.Symlink(victim, filepath.Join(shared, "pre")))

	must(t, e.r.Discard(sha))
	for _, p := range []string{"top/k", "x/k"} {
		if b, err := os.ReadFile(filepath.Join(victim, p)); err != nil || string(b) != "precious" {
			t.Errorf("victim/%s: %q, %v", p, b, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(shared, "top")); !os.IsNotExist(err) {
		t.Errorf("shared/top, the symlink in place of a created dir: %v, want it removed", err)
	}
}

// TestRestoreRemovesCreatedSharedDirs: a failed rebuild of the live release leaves shared/
// as it found it too.
func TestRestoreRemovesCreatedSharedDirs(t *testing.T) {
	e := newEnv(t, Config{})
	g := newRepo(t)
	live := e.release(g)
	e.activate(live)
	must(t, e.r.Hold(live))
	_, err := e.r.Materialize(t.Context(), g.st, live, nil)
	must(t, err)
	must(t, e.r.LinkShared(live, nil, []string{"fresh/dir"}))
	must(t, e.r.Restore(live))
	if entries, err := os.ReadDir(filepath.Join(e.r.Path(), "shared")); err != nil || len(entries) != 0 {
		t.Errorf("shared/ after a restore: %v, %v; want it empty", entries, err)
	}
}

// TestLinkSharedSeeds: the first deploy of a shared dir copies what the release has
// committed there into it (writable, symlinks as they are); a shared dir that exists is
// never seeded again, and a release that fails takes its seed with it.
func TestLinkSharedSeeds(t *testing.T) {
	for _, link := range []bool{false, true} {
		t.Run(fmt.Sprintf("link=%v", link), func(t *testing.T) {
			if link && os.Geteuid() == 0 {
				t.Log("as root, link mode's read-only files are writable anyway: the seeded modes are checked all the same")
			}
			e := newEnv(t, Config{LinkFiles: link})
			g := newRepo(t)
			shared := filepath.Join(e.r.Path(), "shared")
			tree := map[string]file{
				"storage/framework/cache/.gitignore": {filemode.Regular, "*\n"},
				"storage/app/public/.gitkeep":        {filemode.Regular, ""},
				"storage/bin/run":                    {filemode.Executable, "#!/bin/sh\n"},
				"storage/latest":                     {filemode.Symlink, "app/public"},
				"index.html":                         {filemode.Regular, "hi"},
			}
			// A first release that fails: its seed goes with it.
			failed := g.commit(g.treeOf(tree))
			_, err := e.r.Materialize(t.Context(), g.st, failed, nil)
			must(t, err)
			must(t, e.r.LinkShared(failed, nil, []string{"storage"}))
			if !isDir(filepath.Join(shared, "storage/framework/cache")) {
				t.Fatal("shared/storage was not seeded")
			}
			must(t, e.r.Discard(failed))
			if _, err := os.Lstat(filepath.Join(shared, "storage")); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the failed release's seed is left: %v", err)
			}

			tree["index.html"] = file{filemode.Regular, "hi again"}
			first := g.commit(g.treeOf(tree))
			_, err = e.r.Materialize(t.Context(), g.st, first, nil)
			must(t, err)
			must(t, e.r.LinkShared(first, nil, []string{"storage"}))
			assertSnapshot(t, snapshot(t, filepath.Join(shared, "storage")), map[string]string{
				"framework":                  "dir 0755",
				"framework/cache":            "dir 0755",
				"framework/cache/.gitignore": "file 0644 *\n",
				"app":                        "dir 0755",
				"app/public":                 "dir 0755",
				"app/public/.gitkeep":        "file 0644 ",
				"bin":                        "dir 0755",
				"bin/run":                    "file 0755 #!/bin/sh\n",
				"latest":                     "link app/public",
			})
			must(t, e.r.Complete(first))
			e.activate(first)
			must(t, os.WriteFile(filepath.Join(shared, "storage/app/public/upload.jpg"), []byte("photo"), 0o644))
			before := snapshot(t, filepath.Join(shared, "storage"))

			// The next release commits something else there: the shared dir is left as it is.
			tree["storage/framework/cache/.gitignore"] = file{filemode.Regular, "changed\n"}
			tree["storage/new"] = file{filemode.Regular, "new"}
			second := g.commit(g.treeOf(tree))
			_, err = e.r.Materialize(t.Context(), g.st, second, nil)
			must(t, err)
			must(t, e.r.LinkShared(second, nil, []string{"storage"}))
			assertSnapshot(t, snapshot(t, filepath.Join(shared, "storage")), before)
		})
	}
}

// TestLinkSharedSeedsFiles: with SeedSharedFiles, a missing shared file is seeded from the
// file the release commits at its path (writable by its owner), never over an existing one;
// a release that fails takes its seed with it; without a committed file it is still missing.
func TestLinkSharedSeedsFiles(t *testing.T) {
	e := newEnv(t, Config{SeedSharedFiles: true})
	g := newRepo(t)
	shared := filepath.Join(e.r.Path(), "shared")
	tree := map[string]file{"config/.env": {filemode.Regular, "APP_ENV=example\n"}, "index.html": {filemode.Regular, "hi"}}

	failed := g.commit(g.treeOf(tree))
	_, err := e.r.Materialize(t.Context(), g.st, failed, nil)
	must(t, err)
	must(t, e.r.LinkShared(failed, []string{"config/.env"}, nil))
	if b, err := os.ReadFile(filepath.Join(shared, "config/.env")); err != nil || string(b) != "APP_ENV=example\n" {
		t.Fatalf("seeded .env = %q, %v", b, err)
	}
	must(t, e.r.Discard(failed))
	if _, err := os.Lstat(filepath.Join(shared, "config")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the failed release's seed is left: %v", err)
	}

	tree["index.html"] = file{filemode.Regular, "hi again"}
	first := g.commit(g.treeOf(tree))
	_, err = e.r.Materialize(t.Context(), g.st, first, nil)
	must(t, err)
	must(t, e.r.LinkShared(first, []string{"config/.env"}, nil))
	must(t, e.r.Complete(first))
	e.activate(first)
	must(t, os.WriteFile(filepath.Join(shared, "config/.env"), []byte("APP_ENV=production\n"), 0o600))

	tree["config/.env"] = file{filemode.Regular, "APP_ENV=changed\n"}
	second := g.commit(g.treeOf(tree))
	_, err = e.r.Materialize(t.Context(), g.st, second, nil)
	must(t, err)
	must(t, e.r.LinkShared(second, []string{"config/.env"}, nil))
	if b, err := os.ReadFile(filepath.Join(shared, "config/.env")); err != nil || string(b) != "APP_ENV=production\n" {
		t.Fatalf("the existing shared .env = %q, %v: it must never be overwritten", b, err)
	}

	var me *MissingSharedError
	if err := e.r.LinkShared(second, []string{"not/committed"}, nil); !errors.As(err, &me) {
		t.Errorf("LinkShared of a file neither shared nor committed = %v, want a *MissingSharedError", err)
	}
}
