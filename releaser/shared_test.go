package releaser

import (
	"errors"
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
