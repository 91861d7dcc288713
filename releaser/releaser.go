// Package releaser owns one environment's deploy root: releases/<sha>, shared/ and the
// current symlink, plus its bookkeeping under <path>/.slipway/.
//
// Invariant: current always names a complete release. A release is built in place at
// releases/<sha>; it counts as a release (listed, kept, a rollback target) only once it is
// recorded complete, and Recover removes every release that is not.
//
// A deploy, holding Lock, goes Materialize -> LinkShared -> (build and test, elsewhere) ->
// Complete -> Activate (LinkShared again first) -> Prune, or Discard on a failure before
// the swap; a rollback to a kept release is LinkShared -> Activate. Every write of a
// release goes through an os.Root opened on its directory, so no tree entry, symlink or ".."
// can make slipway write outside it.
//
// Nothing of the releaser's own lives in releases/ or shared/. Under <path>/.slipway/:
//
//	deploy.lock      flock(2) target of Lock; permanent, never unlinked, always empty
//	deploy.holder    who holds Lock and since when (JSON, for humans); gone when unlocked
//	releases.json    the records: which releases are complete, when each was completed,
//	                 last activated and last deactivated (written atomically and durably)
//	logs/            one file per deploy attempt: <UTC timestamp>-<sha>.log
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
)

// Config is one environment's deploy root and retention policy.
type Config struct {
	// Path is the deploy root, an absolute path: releases/, shared/, current and .slipway/
	// live in it. Required.
	Path string
	// KeepReleases is how many complete releases are kept after a successful deploy, the
	// live one included. Default 5.
	KeepReleases int
	// PruneGrace keeps a release that was live less than this long ago, so that requests
	// still running in it can finish. 0 = no grace.
	PruneGrace time.Duration
}

// Releaser manages one deploy root. Its methods that change the root (Materialize,
// LinkShared, Complete, Activate, Discard, Prune) are meant to run under Lock, one deploy at
// a time; Recover takes the lock itself. Current, IsComplete and Releases may be called at
// any time, concurrently with the others: they read the disk, and every change to it is an
// atomic rename.
type Releaser struct {
	path  string
	keep  int
	grace time.Duration
	log   zerolog.Logger

	// now is the clock; tests replace it.
	now func() time.Time
	// progressEvery is the interval between Materialize's progress lines; tests shorten it.
	progressEvery time.Duration

	// mu serializes read-modify-write cycles of releases.json within this process; across
	// processes the deploy lock does.
	mu sync.Mutex
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
	r := &Releaser{
		path:          filepath.Clean(cfg.Path),
		keep:          cfg.KeepReleases,
		grace:         cfg.PruneGrace,
		log:           log,
		now:           time.Now,
		progressEvery: time.Second,
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

// LogFile creates the log file of one deploy attempt of sha, <path>/.slipway/logs/
// <UTC timestamp>-<sha>.log, and returns it open for writing. Names sort by time.
func (r *Releaser) LogFile(sha string) (*os.File, error) {
	if err := checkSHA(sha); err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	dir := filepath.Join(r.metaDir(), "logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("log file %s: %w", sha, err)
	}
	name := filepath.Join(dir, r.now().UTC().Format("20060102T150405.000000000Z")+"-"+sha+".log")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log file %s: %w", sha, err)
	}
	return f, nil
}

func (r *Releaser) releasesDir() string { return filepath.Join(r.path, "releases") }
func (r *Releaser) sharedDir() string   { return filepath.Join(r.path, "shared") }
func (r *Releaser) metaDir() string     { return filepath.Join(r.path, ".slipway") }
func (r *Releaser) currentLink() string { return filepath.Join(r.path, "current") }

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
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
