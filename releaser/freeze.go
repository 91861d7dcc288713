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

// ErrNotFrozen is Unfreeze's error when the environment is not frozen.
var ErrNotFrozen = errors.New("not frozen")

// Freeze is an operator's stop on an environment: while it exists, pushes and deploys are
// refused. It is .slipway/freeze.json; nothing but Unfreeze removes it, neither a restart
// nor the end of a deploy.
type Freeze struct {
	By      string    `json:"by"`
	Message string    `json:"message"`
	Since   time.Time `json:"since"`
}

func (r *Releaser) freezePath() string { return filepath.Join(r.path, freezeFile) }

// Freeze freezes the environment, durably, replacing any freeze in place. It does not take
// the deploy lock: a deploy running already finishes. Callers refusing deploys check
// Frozen after they have taken the lock, so that a freeze made while they waited counts.
func (r *Releaser) Freeze(by, message string) error {
	b, err := json.MarshalIndent(Freeze{By: by, Message: message, Since: r.now().UTC()}, "", "  ")
	if err != nil {
		return fmt.Errorf("freeze: %w", err)
	}
	if err := atomicfile.WriteFile(r.freezePath(), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("freeze: %w", err)
	}
	return nil
}

// Unfreeze removes the freeze, durably; an error wrapping ErrNotFrozen if there is none.
func (r *Releaser) Unfreeze() error {
	err := os.Remove(r.freezePath())
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unfreeze: %w", ErrNotFrozen)
	}
	if err == nil {
		err = atomicfile.SyncDir(r.metaDir())
	}
	if err != nil {
		return fmt.Errorf("unfreeze: %w", err)
	}
	return nil
}

// Frozen returns the freeze in place, or nil, nil if the environment is not frozen. A
// freeze file that cannot be read is an error, never "not frozen"; one that does not parse
// is a *CorruptError (Unfreeze removes it all the same).
func (r *Releaser) Frozen() (*Freeze, error) {
	b, err := os.ReadFile(r.freezePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("frozen: %w", err)
	}
	var f Freeze
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("frozen: %w", &CorruptError{File: freezeFile, Err: err})
	}
	return &f, nil
}
