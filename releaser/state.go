package releaser

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/slipway/slipway/internal/atomicfile"
)

// state is the content of .slipway/releases.json. Only complete releases have a record.
type state struct {
	// Seq counts activations; a record's Seq orders releases by their last activation
	// without trusting the wall clock, which can step back.
	Seq uint64 `json:"seq"`
	// Live is the release last recorded live. current is the truth: after a crash between
	// a swap and its record, the two differ until Recover.
	Live     string             `json:"live,omitempty"`
	Releases map[string]*record `json:"releases"`
	// Hold is set while the live release is rebuilt at its own name (see Hold): its
	// record, set aside while releases/<sha> is not complete, for Restore to put back.
	Hold *heldRecord `json:"hold,omitempty"`
}

// heldRecord is the record of a release whose tree is held at releases/.hold-<sha>.
type heldRecord struct {
	SHA    string `json:"sha"`
	Record record `json:"record"`
}

type record struct {
	Completed time.Time `json:"completed"`
	// Written is when Materialize finished writing the release's tree: a file whose ctime
	// is not after it is still as Materialize wrote it (no build has touched it), so the
	// next release may copy it instead of inflating its blob again. Zero: never reuse.
	Written     time.Time `json:"written,omitzero"`
	Activated   time.Time `json:"activated,omitzero"`   // last activation
	Deactivated time.Time `json:"deactivated,omitzero"` // last time it stopped being live
	Seq         uint64    `json:"seq,omitempty"`        // state.Seq at the last activation; 0 = never
}

func (r *Releaser) statePath() string { return filepath.Join(r.path, stateFile) }

// loadState reads the records. A missing file is an empty state; exists says which it was.
// A file that does not parse, or holds a record that is not one, is a *CorruptError.
func (r *Releaser) loadState() (st *state, exists bool, err error) {
	st = &state{Releases: map[string]*record{}}
	b, err := os.ReadFile(r.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, true, &CorruptError{File: stateFile, Err: err}
	}
	if st.Releases == nil {
		st.Releases = map[string]*record{}
	}
	for sha := range st.Releases {
		if !validSHA(sha) || st.Releases[sha] == nil {
			return nil, true, &CorruptError{File: stateFile, Err: fmt.Errorf("bad record %q", sha)}
		}
	}
	if st.Hold != nil && !validSHA(st.Hold.SHA) {
		return nil, true, &CorruptError{File: stateFile, Err: fmt.Errorf("bad hold %q", st.Hold.SHA)}
	}
	if st.Live != "" && !validSHA(st.Live) {
		return nil, true, &CorruptError{File: stateFile, Err: fmt.Errorf("bad live release %q", st.Live)}
	}
	return st, true, nil
}

func (r *Releaser) saveState(st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(r.statePath(), append(b, '\n'), 0o644)
}

// updateState applies fn to the records and saves them if fn reports a change.
func (r *Releaser) updateState(fn func(st *state) (changed bool, err error)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.updateStateLocked(fn)
}

// updateStateLocked is updateState for a caller that holds r.mu.
func (r *Releaser) updateStateLocked(fn func(st *state) (changed bool, err error)) error {
	st, _, err := r.loadState()
	if err != nil {
		return err
	}
	changed, err := fn(st)
	if err != nil || !changed {
		return err
	}
	return r.saveState(st)
}

// activated records that sha went live at now, and that the release recorded live before,
// if another one, stopped being live.
func (st *state) activated(sha string, now time.Time) {
	if st.Live != sha {
		if rec := st.Releases[st.Live]; rec != nil {
			rec.Deactivated = now
		}
	}
	st.Seq++
	st.Live = ""
	if rec := st.Releases[sha]; rec != nil {
		rec.Activated = now
		rec.Seq = st.Seq
		st.Live = sha
	}
}
