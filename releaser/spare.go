package releaser

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spares: copy_dirs ready ahead of the next deploy. Copying node_modules while the pusher
// waits costs as much as the tests on a filesystem without reflinks (ext4: 0.3 s for 75 MB).
// So, once a deploy has ended, slipway copies each copy_dirs directory of the live release
// into .slipway/spare/, in the background, and the next deploy moves it into its release
// with one rename. A spare is taken only if the live directory is still what was copied:
// its fingerprint (every entry's path, type, size, inode, mtime and ctime, which no write
// can leave unchanged) is taken before and after the copy, and again when the spare is
// taken. So a spare is always exactly what a copy at deploy time would have made.
//
// Making a spare takes no lock: it writes only below .slipway/tmp/ (cleared at start, so a
// crash leaves nothing behind) and then renames its work into .slipway/spare/ in one step. A
// deploy takes a spare with one rename too, so the two never see each other's half-work.

// spareMeta is what a spare records of its source.
type spareMeta struct {
	SHA         string `json:"sha"`
	Dir         string `json:"dir"`
	Fingerprint string `json:"fingerprint"`
	Files       int    `json:"files"`
	Bytes       int64  `json:"bytes"`
}

const (
	spareTree = "tree"
	spareInfo = "spare.json"
)

func (r *Releaser) spareRoot() string { return filepath.Join(r.metaDir(), "spare") }

// spareName is the directory of the spare of dir of release sha.
func spareName(sha, dir string) string {
	h := sha256.Sum256([]byte(dir))
	return sha + "-" + hex.EncodeToString(h[:8])
}

// PrepareSpare makes a spare of directory dir of release sha (a copy_dirs path), unless
// there is one already or the release has no such directory; made reports whether it made
// one. Spares of other releases are removed first: only the live release's are ever taken.
// Ending ctx ends the copy (its work is removed).
func (r *Releaser) PrepareSpare(ctx context.Context, sha, dir string) (made bool, err error) {
	if err := checkSHA(sha); err != nil {
		return false, fmt.Errorf("spare %s: %w", dir, err)
	}
	clean, ok := localPath(dir)
	if !ok {
		return false, fmt.Errorf("spare %q: not a relative path inside the release", dir)
	}
	// Through a root of .slipway: if the environment is destroyed meanwhile, nothing here
	// makes its directories again.
	meta, err := os.OpenRoot(r.metaDir())
	if err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer meta.Close() // a directory: closing it loses nothing
	if err := meta.MkdirAll("spare", 0o755); err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	name := spareName(sha, clean)
	if err := removeSparesBut(meta, sha); err != nil {
		return false, err
	}
	if _, err := meta.Lstat(filepath.Join("spare", name)); err == nil {
		return false, nil // made already
	}
	src, err := os.OpenRoot(r.Dir(sha))
	if err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer src.Close() // a directory: closing it loses nothing
	if fi, err := src.Lstat(clean); err != nil || !fi.IsDir() {
		return false, nil // nothing to copy, as CopyDir would find
	}
	live, err := src.OpenRoot(clean)
	if err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer live.Close() // a directory: closing it loses nothing
	before, err := fingerprint(live)
	if err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}

	if err := meta.MkdirAll("tmp", 0o755); err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	work := filepath.Join("tmp", "spare-"+rand.Text())
	if err := meta.Mkdir(work, 0o755); err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	keep := false
	defer func() {
		if !keep {
			meta.RemoveAll(work)
		}
	}()
	if err := meta.Mkdir(filepath.Join(work, spareTree), 0o700); err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	dst, err := meta.OpenRoot(filepath.Join(work, spareTree))
	if err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer dst.Close() // a directory: closing it loses nothing
	stats, err := copyTree(ctx, live, dst, ".")
	if err != nil {
		return false, fmt.Errorf("spare %s of %s: %w", clean, sha[:7], err)
	}
	if fi, err := live.Stat("."); err == nil {
		// The copied directory itself has the live one's mode, as CopyDir's would.
		if err := dst.Chmod(".", fi.Mode().Perm()|0o700); err != nil {
			return false, fmt.Errorf("spare %s: %w", clean, err)
		}
	}
	after, err := fingerprint(live)
	if err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	if after != before {
		return false, nil // the directory changed while it was copied: no spare this time
	}
	info, err := json.Marshal(spareMeta{SHA: sha, Dir: clean, Fingerprint: before, Files: stats.Files, Bytes: stats.Bytes})
	if err != nil {
		return false, err
	}
	if err := meta.WriteFile(filepath.Join(work, spareInfo), info, 0o644); err != nil {
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	// One rename makes it a spare; if another was made meanwhile, this one goes.
	if err := meta.Rename(work, filepath.Join("spare", name)); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return false, nil
		}
		return false, fmt.Errorf("spare %s: %w", clean, err)
	}
	keep = true
	return true, nil
}

// TakeSpare moves the spare of directory dir of release from into release to, where CopyDir
// would copy it, if there is a spare and the live directory is still what it copied; taken
// reports whether it did (if not, the caller copies). The rules of CopyDir hold: a path the
// new release has is left alone (taken false).
func (r *Releaser) TakeSpare(from, to, dir string) (stats CopyStats, taken bool, err error) {
	clean, err := copyArgs(from, to, dir)
	if err != nil {
		return stats, false, fmt.Errorf("spare: %w", err)
	}
	spare, err := os.OpenRoot(filepath.Join(r.spareRoot(), spareName(from, clean)))
	if errors.Is(err, fs.ErrNotExist) {
		return stats, false, nil
	}
	if err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer spare.Close() // a directory: closing it loses nothing
	var m spareMeta
	b, err := spare.ReadFile(spareInfo)
	if err != nil || json.Unmarshal(b, &m) != nil || m.SHA != from || m.Dir != clean {
		return stats, false, nil // not a spare this version wrote: the caller copies
	}
	src, err := os.OpenRoot(r.Dir(from))
	if err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer src.Close() // a directory: closing it loses nothing
	if fi, err := src.Lstat(clean); err != nil || !fi.IsDir() {
		return stats, false, nil
	}
	live, err := src.OpenRoot(clean)
	if err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer live.Close() // a directory: closing it loses nothing
	now, err := fingerprint(live)
	if err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	if now != m.Fingerprint {
		// The live directory changed since: the caller copies it as it is now, and the
		// next PrepareSpare makes a new spare.
		if err := os.RemoveAll(filepath.Join(r.spareRoot(), spareName(from, clean))); err != nil {
			r.log.Warn().Err(err).Str("dir", clean).Msg("remove an outdated spare")
		}
		return stats, false, nil
	}
	dst, err := os.OpenRoot(r.Dir(to))
	if err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer dst.Close() // a directory: closing it loses nothing
	if _, err := dst.Lstat(clean); !errors.Is(err, fs.ErrNotExist) {
		return stats, false, nil // the new release has its own, or a parent that is not a directory
	}
	if parent := filepath.Dir(clean); parent != "." {
		if err := dst.MkdirAll(parent, 0o755); err != nil {
			return stats, false, fmt.Errorf("spare %s: %w", clean, err)
		}
	}
	// Both paths are below the deploy root, on one filesystem; neither is a symlink the
	// tree could have planted (the spare's is slipway's own, the release's parent was just
	// made or checked through the root).
	parent, err := dst.OpenRoot(filepath.Dir(clean))
	if err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	defer parent.Close() // a directory: closing it loses nothing
	if err := renameBetween(spare, spareTree, parent, filepath.Base(clean)); err != nil {
		return stats, false, fmt.Errorf("spare %s: %w", clean, err)
	}
	if err := os.RemoveAll(filepath.Join(r.spareRoot(), spareName(from, clean))); err != nil {
		r.log.Warn().Err(err).Str("dir", clean).Msg("remove a spare taken")
	}
	return CopyStats{Files: m.Files, Bytes: m.Bytes}, true, nil
}

// renameBetween renames name of one root to newName of another, on the same filesystem,
// without following a symlink in either path (renameat2 on the roots' directory fds).
func renameBetween(from *os.Root, name string, to *os.Root, newName string) error {
	f, err := from.Open(".")
	if err != nil {
		return err
	}
	defer f.Close() // a directory: closing it loses nothing
	t, err := to.Open(".")
	if err != nil {
		return err
	}
	defer t.Close() // a directory: closing it loses nothing
	return unix.Renameat2(int(f.Fd()), name, int(t.Fd()), newName, unix.RENAME_NOREPLACE)
}

// removeSparesBut removes every spare that is not of release sha.
func removeSparesBut(meta *os.Root, sha string) error {
	entries, err := fs.ReadDir(meta.FS(), "spare")
	if err != nil {
		return fmt.Errorf("spares: %w", err)
	}
	for _, e := range entries {
		if len(e.Name()) > len(sha) && e.Name()[:len(sha)] == sha {
			continue
		}
		if err := meta.RemoveAll(filepath.Join("spare", e.Name())); err != nil {
			return fmt.Errorf("remove an old spare: %w", err)
		}
	}
	return nil
}

// fingerprint is the sha256 of every entry below root, in walk order: its path, type and
// mode, size, inode, mtime and ctime. Any write, rename, chmod or link inside changes it.
func fingerprint(root *os.Root) (string, error) {
	h := sha256.New()
	err := fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no inode data", name)
		}
		fmt.Fprintf(h, "%q %o %d %d %d.%d %d.%d\n", name, fi.Mode(), fi.Size(), st.Ino,
			st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
