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

// A fleet's bookkeeping (SPEC 10), in .slipway/targets.json: which targets an operator
// paused (deploys skip them) and which release each target was last known to have live.
// Deploys and the pause commands read and write it; r.mu orders them within this process,
// and each write replaces the file whole (atomicfile), so a crash leaves the old or the new.

// ErrNotPaused is ResumeTarget's error when the target is not paused.
var ErrNotPaused = errors.New("not paused")

// TargetState is what is known of one target.
type TargetState struct {
	Live   string    `json:"live,omitempty"`   // the release it has live, as the last deploy left it
	LiveAt time.Time `json:"live_at,omitzero"` // when that deploy swapped it
	Paused *Pause    `json:"paused,omitempty"` // nil: deploys go to it
}

// Pause is an operator's stop on one target.
type Pause struct {
	By      string    `json:"by"`
	Message string    `json:"message"`
	Since   time.Time `json:"since"`
}

const targetsFile = ".slipway/targets.json"

func (r *Releaser) targetsPath() string { return filepath.Join(r.path, targetsFile) }

// Targets returns what is known of each target, by its name ("user@host:port"); an empty
// map if nothing is.
func (r *Releaser) Targets() (map[string]TargetState, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loadTargets()
}

func (r *Releaser) loadTargets() (map[string]TargetState, error) {
	b, err := os.ReadFile(r.targetsPath())
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]TargetState{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("targets: %w", err)
	}
	m := map[string]TargetState{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("targets: %w", &CorruptError{File: targetsFile, Err: err})
	}
	return m, nil
}

// updateTargets changes the record of targets with change, and writes it back whole.
func (r *Releaser) updateTargets(change func(map[string]TargetState) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, err := r.loadTargets()
	if err != nil {
		return err
	}
	if err := change(m); err != nil {
		return err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(r.targetsPath(), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("targets: %w", err)
	}
	return nil
}

// PauseTarget pauses target: deploys skip it until ResumeTarget. A pause in place is
// replaced.
func (r *Releaser) PauseTarget(target, by, message string) error {
	return r.updateTargets(func(m map[string]TargetState) error {
		st := m[target]
		st.Paused = &Pause{By: by, Message: message, Since: r.now().UTC()}
		m[target] = st
		return nil
	})
}

// ResumeTarget ends target's pause; an error wrapping ErrNotPaused if it has none.
func (r *Releaser) ResumeTarget(target string) error {
	return r.updateTargets(func(m map[string]TargetState) error {
		st, ok := m[target]
		if !ok || st.Paused == nil {
			return fmt.Errorf("resume %s: %w", target, ErrNotPaused)
		}
		st.Paused = nil
		m[target] = st
		return nil
	})
}

// RecordTargetsLive records that each of targets now has release live ("" : none).
func (r *Releaser) RecordTargetsLive(live map[string]string) error {
	if len(live) == 0 {
		return nil
	}
	return r.updateTargets(func(m map[string]TargetState) error {
		for t, sha := range live {
			st := m[t]
			st.Live, st.LiveAt = sha, r.now().UTC()
			m[t] = st
		}
		return nil
	})
}
