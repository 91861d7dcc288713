package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/slipway/slipway/gitserver"
	"github.com/slipway/slipway/releaser"
)

// materializeSlipway writes the tree of sha from the bare repository <reposDir>/bench/mat.git
// into a new deploy root with releaser.Materialize, the way a slipway deploy does (objects
// opened with gitserver.Repositories.Objects, a fresh storage as each push session has), and returns
// the time Materialize took and the entries it wrote.
func materializeSlipway(ctx context.Context, reposDir, sha, deployRoot string) (time.Duration, int, error) {
	rel, err := releaser.New(releaser.Config{Path: deployRoot}, zerolog.Nop())
	if err != nil {
		return 0, 0, err
	}
	st, err := gitserver.Repositories{Dir: reposDir}.Objects(matRepo)
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	start := time.Now()
	stats, err := rel.Materialize(ctx, st, sha, nil)
	took := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	return took, stats.Files, nil
}

// matRepo is the environment name of figure 5's repository, under its own repos dir.
const matRepo = "bench/mat"

// inodeKey names one inode: a file hardlinked into two releases is one key.
type inodeKey struct{ dev, ino uint64 }

// treeInodes walks dir without following symlinks and returns the allocated bytes of each
// inode under it (directories, files and symlinks), dir itself included.
func treeInodes(dir string) (map[inodeKey]int64, error) {
	out := map[inodeKey]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat_t", p)
		}
		out[inodeKey{uint64(st.Dev), st.Ino}] = st.Blocks * 512
		return nil
	})
	return out, err
}

// releaseDisk returns the bytes newDir adds on disk beyond the inodes of the releases in
// olds (an inode hardlinked from an older release counts nothing), and the full size of
// newDir on its own.
func releaseDisk(newDir string, olds ...string) (added, full int64, err error) {
	seen := map[inodeKey]bool{}
	for _, o := range olds {
		in, err := treeInodes(o)
		if err != nil {
			return 0, 0, err
		}
		for k := range in {
			seen[k] = true
		}
	}
	in, err := treeInodes(newDir)
	if err != nil {
		return 0, 0, err
	}
	for k, b := range in {
		full += b
		if !seen[k] {
			added += b
		}
	}
	return added, full, nil
}

// syncAll flushes every filesystem (between timed runs, so one run's writeback does not
// land in the next one's time).
func syncAll() { syscall.Sync() }

// freeBytes is the space left to unprivileged users on the filesystem holding dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}
