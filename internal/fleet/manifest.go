package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Manifest is what a release holds: every entry below its directory, in walk order. Prepare
// compares the new release's with the one of the release a target has live, and sends only
// the files that differ; the others are copied there, and checked against it.
type Manifest struct {
	Entries []Entry `json:"entries"`
}

// Entry is one entry of a release.
type Entry struct {
	Path string      `json:"path"` // slash-separated, relative to the release
	Mode fs.FileMode `json:"mode"` // type and permissions
	Size int64       `json:"size,omitempty"`
	Sum  string      `json:"sum,omitempty"`  // a regular file's sha256, hex
	Link string      `json:"link,omitempty"` // a symlink's target
}

// BuildManifest reads dir (a release) whole: each regular file's sha256, each symlink's
// target, each directory. Other entries (a socket a build left) are not part of a release.
func BuildManifest(dir string) (*Manifest, error) {
	m := &Manifest{}
	err := walkRelease(dir, func(rel, p string, fi fs.FileInfo, link string) error {
		e := Entry{Path: rel, Mode: fi.Mode(), Link: link}
		if fi.Mode().IsRegular() {
			e.Size = fi.Size()
			var err error
			if e.Sum, err = fileSum(p); err != nil {
				return err
			}
		}
		m.Entries = append(m.Entries, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", filepath.Base(dir), err)
	}
	return m, nil
}

// walkRelease calls fn for every entry of a release below dir, in walk order, with its
// slash-separated path relative to dir, its path on disk, its lstat and, for a symlink, its
// target. What a release cannot hold (a socket, a fifo a build left) is skipped.
func walkRelease(dir string, fn func(rel, p string, fi fs.FileInfo, link string) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		var link string
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case d.IsDir(), d.Type().IsRegular():
		default:
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), p, fi, link)
	})
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close() // read only: closing it loses nothing
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Unchanged returns the regular files of m that base has at the same path with the same
// content and mode: what a target that has base can copy instead of receiving. Paths a
// shell line could not carry (a newline, a backslash) are always sent.
func (m *Manifest) Unchanged(base *Manifest) []Entry {
	if base == nil {
		return nil
	}
	have := make(map[string]Entry, len(base.Entries))
	for _, e := range base.Entries {
		if e.Mode.IsRegular() {
			have[e.Path] = e
		}
	}
	var out []Entry
	for _, e := range m.Entries {
		b, ok := have[e.Path]
		if !ok || !e.Mode.IsRegular() || b.Sum != e.Sum || b.Mode != e.Mode || b.Size != e.Size ||
			strings.ContainsAny(e.Path, "\n\\") || strings.HasPrefix(e.Path, "-") {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Save writes m to file, whole or not at all.
func (m *Manifest) Save(file string) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// LoadManifest reads a manifest Save wrote; nil if there is none.
func LoadManifest(file string) (*Manifest, error) {
	b, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m := &Manifest{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", filepath.Base(file), err)
	}
	return m, nil
}
