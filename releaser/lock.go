package releaser

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/slipway/slipway/internal/atomicfile"
)

// ErrLocked is matched (errors.Is) by every *LockedError.
var ErrLocked = errors.New("deploy in progress")

// LockedError is Lock's refusal: someone else holds the environment.
type LockedError struct {
	Holder string    // as given to Lock; "" if it could not be read
	Since  time.Time // zero if it could not be read
}

func (e *LockedError) Error() string {
	if e.Holder == "" || e.Since.IsZero() {
		return "deploy in progress (holder unknown)"
	}
	ago := max(time.Since(e.Since).Round(time.Second), 0)
	return fmt.Sprintf("deploy in progress by %s since %s (%s ago)",
		e.Holder, e.Since.UTC().Format(time.RFC3339), ago)
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// holderInfo is the content of deploy.holder.
type holderInfo struct {
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
	PID    int       `json:"pid"`
}

func (r *Releaser) lockPath() string   { return filepath.Join(r.metaDir(), "deploy.lock") }
func (r *Releaser) holderPath() string { return filepath.Join(r.metaDir(), "deploy.holder") }

// Lock takes the environment's deploy lock without waiting, or returns a *LockedError
// naming who holds it. The lock is an flock(2) on .slipway/deploy.lock, a file that is never
// unlinked, so it is released by the kernel when the holder exits, even by kill -9; its
// descriptor is close-on-exec, so build processes do not inherit it. Locks taken through
// two Lock calls exclude each other, within one process too. unlock may be called more
// than once.
func (r *Releaser) Lock(holder string) (unlock func(), err error) {
	f, err := os.OpenFile(r.lockPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			le := &LockedError{}
			if b, rerr := os.ReadFile(r.holderPath()); rerr == nil {
				var h holderInfo
				if json.Unmarshal(b, &h) == nil {
					le.Holder, le.Since = h.Holder, h.Since
				}
			}
			return nil, le
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	b, _ := json.Marshal(holderInfo{Holder: holder, Since: r.now().UTC(), PID: os.Getpid()})
	if err := atomicfile.WriteFile(r.holderPath(), append(b, '\n'), 0o644); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			// The holder file goes first, while the lock is still held, so that it never
			// names someone who no longer holds the lock.
			os.Remove(r.holderPath())
			f.Close() // releases the flock
		})
	}, nil
}
