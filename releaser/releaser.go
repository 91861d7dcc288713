// Package releaser owns one environment's deploy root: releases/<sha>, shared/ and the
// current symlink, plus its bookkeeping under <path>/.slipway/: which releases are complete,
// the deploy history, the deploy logs, the deploy lock and the freeze.
//
// Invariant: current always names a complete release. A release is built in place at
// releases/<sha>; it counts as a release (listed, kept, a rollback target) only once it is
// recorded complete, and Recover removes every release that is not. The one exception is
// a rebuild of the live release (Hold): current then names releases/.hold-<sha>, a
// hard-linked copy of the complete tree, until the rebuild goes live or is given up.
//
// A deploy, holding Lock, goes Begin -> Materialize -> LinkShared -> (build and test,
// elsewhere) -> CheckLinked -> Complete -> Activate (LinkShared again first) -> Prune ->
// Finish, or Discard on a failure before the swap; a rollback to a kept release is
// LinkShared -> Activate; a rebuild of the live release starts with Hold and ends in
// Activate, or Restore on failure. Destroy, also under Lock, removes the whole root; a Lock
// that waited for it then fails with ErrDestroyed.
// Every entry of a release is created relative to a directory Materialize made and holds
// open, never through a path, so no tree entry, symlink or ".." can make slipway write
// outside it.
//
// Retention and rollback follow the records of activations, never directory names (shas do
// not sort by time). Another process (the slipway CLI) may read everything here while the
// server runs: each file is replaced by an atomic rename or, for the journal, only ever
// appended whole lines to.
//
// Nothing of the releaser's own lives in releases/ or shared/. Under <path>/.slipway/:
//
//	deploy.lock      flock(2) target of Lock; permanent (only Destroy removes it, with the
//	                 whole root), always empty
//	deploy.holder    who holds Lock and since when (JSON, for humans); its holder keeps an
//	                 flock(2) on it, so one left by a killed process is recognised as stale
//	releases.json    the records: which releases are complete, when each was completed,
//	                 last activated and last deactivated, the held release (written
//	                 atomically and durably)
//	history.jsonl    the journal: one JSON object per line, appended and fsynced, never
//	                 rewritten; see Begin
//	logs/            one file per journal entry: <id>.log, the id zero-padded to 6 digits
//	freeze.json      present while the environment is frozen (see Freeze)
//	inodes/<sha>     with LinkFiles, each release's inode record: the inode and ctime of
//	                 every file Materialize wrote or linked, which decides what a later
//	                 release may link (see reuse.go and inodes.go); binary, checksummed,
//	                 written atomically and durably. One missing or damaged only means
//	                 that nothing is linked from that release.
//
// A state file damaged by a disk fault or a hand edit stops this environment only, and
// says so: its readers, Recover and the steps that need it return a *CorruptError naming
// the file (relative to the root) and what to do, which the caller can tell apart with
// errors.As and show a pusher; nothing is changed meanwhile. Per file:
//
//   - releases.json that does not parse, or holds a record of something that is not a full
//     commit id: every reader and writer of the records refuses, Recover too (it would
//     otherwise delete every release as incomplete). Moved away, Recover adopts the live
//     release and removes the others; restored, all goes on.
//   - history.jsonl: a line that does not parse followed by any other line (no crash makes
//     that) stops History, Entry, ActivatedAt, Begin, Finish, Prune's log pruning and
//     Recover, so that no entry id is handed out twice. A last line without its newline, or
//     garbled, is what a crash during an append leaves: it is ignored, and cut off by the
//     next append. A line of an event this version does not know is skipped.
//   - freeze.json that does not parse: Frozen returns the error, never "not frozen", so
//     deploys stay refused, as the operator who froze the environment meant; Unfreeze
//     removes it and Freeze replaces it.
//   - deploy.holder is a note beside the lock, whose flock is the truth: damaged, it reads
//     as "holder unknown" while the lock is held, as nobody when it is not, and the next
//     Lock replaces it. It never fails anything.
//
// A deploy that fails before the swap leaves shared/ as it found it: the shared dirs
// LinkShared created for the release are removed with it by Discard (or Restore). That
// memory is the process's: a crash in between leaves them, empty or with what the build
// wrote. A shared dir that existed before is never touched.
package releaser

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Config is one environment's deploy root and retention policy.
type Config struct {
	// Path is the deploy root, an absolute path: releases/, shared/, current and .slipway/
	// live in it. Required.
	Path string
	// KeepReleases is how many complete releases Prune keeps, by last activation, the live
	// one included. Default 5. Whatever it is, the live release and the one live just
	// before it (the default rollback target) are never pruned: 1 keeps two.
	KeepReleases int
	// PruneGrace keeps a release that was live less than this long ago, so that requests
	// still running in it can finish. 0 = no grace.
	PruneGrace time.Duration
	// LinkFiles makes every file Materialize writes read-only (0444, executables 0555) and
	// hard-links each file the live release holds unchanged instead of copying it: a new
	// release costs the files that changed, in time and disk, on any filesystem. Releases
	// then share those inodes, which only their read-only mode protects: a build that writes
	// a checked-out file in place fails (EACCES), unless it runs as root or chmods it first.
	// One that chmods it first changes the live release's file too: CheckLinked finds that
	// before the swap, and that inode is never linked again. The caller decides whether
	// that is acceptable, and must call CheckLinked; see reuse.go.
	LinkFiles bool
	// MaxReleaseSize is the most bytes a release's files may hold in all, as the blobs'
	// headers in the object store give them; Materialize refuses a bigger tree with a
	// *LimitError before it writes anything. 0 = no limit.
	MaxReleaseSize int64
	// MaxReleaseFiles is the most files, directories and symlinks a release may have;
	// Materialize refuses more likewise. 0 = no limit.
	MaxReleaseFiles int
	// SeedSharedFiles lets LinkShared seed a missing shared file from the file the release
	// has committed at its path (seed_shared_files), instead of refusing the release.
	SeedSharedFiles bool
	// LiveInMeta records the live release in .slipway/live instead of current: for a fleet
	// whose targets leave this host out, whose releases here are built and kept but served
	// by no one (SPEC 10: "current on that host only if local is a target").
	LiveInMeta bool
}

// Releaser manages one deploy root. Its methods that change the root (Begin, Finish,
// Materialize, LinkShared, Complete, Activate, Hold, Restore, Discard, Prune, Destroy) are
// meant to run under Lock, one deploy at a time; Recover takes the lock itself. Freeze
// and Unfreeze need no lock. The readers (Current, IsComplete, Releases, Previous,
// ActivatedAt, History, Entry, Holder, Frozen) may be called at any time, from any
// process, concurrently with the others: every change on disk is an atomic rename or a
// whole-line append.
type Releaser struct {
	path      string
	keep      int
	grace     time.Duration
	linkFiles bool
	seedFiles bool  // SeedSharedFiles
	liveMeta  bool  // LiveInMeta
	maxSize   int64 // MaxReleaseSize; 0: none
	maxFiles  int64 // MaxReleaseFiles; 0: none
	log       zerolog.Logger

	// now is the clock; tests replace it.
	now func() time.Time
	// progressEvery is the interval between Materialize's progress lines; tests shorten it.
	progressEvery time.Duration
	// statfs is statfs(2), for Materialize's check of free space; tests fake a full disk.
	statfs func(path string, st *unix.Statfs_t) error
	// lockBusy, if set, is called by LockWait after each attempt that found the lock
	// taken; tests use it to know that a waiter waits.
	lockBusy func()
	// lockOpened, if set, is called by Lock between opening deploy.lock and trying its
	// flock; tests use it to destroy the root in that window.
	lockOpened func()

	// mu serializes read-modify-write cycles of releases.json within this process; across
	// processes the deploy lock does. It also guards written and created.
	mu sync.Mutex
	// written holds, from Materialize until Complete, when each release's tree was written.
	written map[string]time.Time
	// created is what LinkShared created in shared/ for the release being built, from then
	// until a release goes live (forgotten) or it is discarded (removed); nil if nothing.
	created *created
}

const defaultKeepReleases = 5

// New returns the Releaser of cfg.Path, creating releases/, shared/ and .slipway/ if missing.
func New(cfg Config, log zerolog.Logger) (*Releaser, error) {
	if !filepath.IsAbs(cfg.Path) {
		return nil, fmt.Errorf("releaser: path %q is not absolute", cfg.Path)
	}
	if cfg.KeepReleases < 0 {
		return nil, fmt.Errorf("releaser: keep releases %d is negative", cfg.KeepReleases)
	}
	if cfg.PruneGrace < 0 {
		return nil, fmt.Errorf("releaser: prune grace %s is negative", cfg.PruneGrace)
	}
	if cfg.MaxReleaseSize < 0 || cfg.MaxReleaseFiles < 0 {
		return nil, fmt.Errorf("releaser: release limits %d bytes, %d files: negative", cfg.MaxReleaseSize, cfg.MaxReleaseFiles)
	}
	r := &Releaser{
		path:          filepath.Clean(cfg.Path),
		keep:          cfg.KeepReleases,
		grace:         cfg.PruneGrace,
		linkFiles:     cfg.LinkFiles,
		seedFiles:     cfg.SeedSharedFiles,
		liveMeta:      cfg.LiveInMeta,
		maxSize:       cfg.MaxReleaseSize,
		maxFiles:      int64(cfg.MaxReleaseFiles),
		log:           log,
		now:           time.Now,
		progressEvery: time.Second,
		statfs:        unix.Statfs,
	}
	if r.keep == 0 {
		r.keep = defaultKeepReleases
	}
	for _, d := range []string{r.releasesDir(), r.sharedDir(), r.metaDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("releaser: %w", err)
		}
	}
	return r, nil
}

// Path returns the deploy root.
func (r *Releaser) Path() string { return r.path }

// Dir returns the absolute directory of release sha, a full commit id: <path>/releases/<sha>.
func (r *Releaser) Dir(sha string) string { return filepath.Join(r.releasesDir(), sha) }

func (r *Releaser) releasesDir() string { return filepath.Join(r.path, "releases") }
func (r *Releaser) sharedDir() string   { return filepath.Join(r.path, "shared") }
func (r *Releaser) metaDir() string     { return filepath.Join(r.path, ".slipway") }
func (r *Releaser) currentLink() string {
	if r.liveMeta {
		return filepath.Join(r.metaDir(), "live")
	}
	return filepath.Join(r.path, "current")
}

// linkTarget is what the live link holds to name release dir name: relative to the link's
// own directory, so that it resolves on disk.
func (r *Releaser) linkTarget(name string) string {
	if r.liveMeta {
		return "../releases/" + name
	}
	return "releases/" + name
}
func (r *Releaser) logsDir() string { return filepath.Join(r.metaDir(), "logs") }

// errBadSHA is returned for a sha that is not a full lowercase hex commit id; such a string
// must never become a path.
var errBadSHA = errors.New("not a full commit id")

func checkSHA(sha string) error {
	if !validSHA(sha) {
		return fmt.Errorf("%q: %w", sha, errBadSHA)
	}
	return nil
}

func validSHA(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func randSuffix() string {
	var b [8]byte
	rand.Read(b[:]) // never returns an error: it crashes the program instead (Go 1.24)
	return hex.EncodeToString(b[:])
}
