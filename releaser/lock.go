package releaser

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked is matched (errors.Is) by every *LockedError.
var ErrLocked = errors.New("deploy in progress")

// ErrDestroyed is the error of Lock and LockWait when the deploy root was destroyed
// (Destroy), before they tried the lock or while they waited for it.
var ErrDestroyed = errors.New("the environment was destroyed")

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

// lockPoll is how often LockWait tries the lock again.
const lockPoll = 50 * time.Millisecond

func (r *Releaser) lockPath() string   { return filepath.Join(r.metaDir(), "deploy.lock") }
func (r *Releaser) holderPath() string { return filepath.Join(r.metaDir(), "deploy.holder") }

// Lock takes the environment's deploy lock without waiting, or returns a *LockedError
// naming who holds it. The lock is an flock(2) on .slipway/deploy.lock, a file that is never
// unlinked (but by Destroy, with the whole root), so it is released by the kernel when the
// holder exits, even by kill -9; its descriptor is close-on-exec, so build processes do not
// inherit it. Locks taken through two Lock calls exclude each other, within one process
// too. unlock may be called more than once.
//
// The holder's name goes to .slipway/deploy.holder, on which the holder keeps a shared
// flock(2) for as long as it holds the lock: a reader (Holder, another process's Lock)
// tells a live holder from one killed before it could remove the file without ever
// touching deploy.lock, so reading never makes a deploy's Lock fail.
//
// Once Destroy has renamed the deploy root away, Lock returns ErrDestroyed and creates
// nothing: neither the root nor the lock file. That covers a Lock that opened deploy.lock
// just before the rename and took its flock just after: holding the flock, Lock checks
// that the file it locked is still the one at its path.
func (r *Releaser) Lock(holder string) (unlock func(), err error) {
	// O_CREATE makes the file, never a directory: if .slipway is gone, so is the root.
	f, err := os.OpenFile(r.lockPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrDestroyed
	}
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if r.lockOpened != nil {
		r.lockOpened()
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close() // not locked, nothing written: closing loses nothing
		if err == unix.EWOULDBLOCK {
			le := &LockedError{}
			if h, _ := r.readHolder(); h != nil { // unreadable: the holder stays unknown
				le = h
			}
			return nil, le
		}
		return nil, fmt.Errorf("lock: %w", err)
	}
	if same, err := sameFile(f, r.lockPath()); err != nil || !same {
		f.Close() // releases the flock; the lock file holds no data
		if err != nil {
			return nil, fmt.Errorf("lock: %w", err)
		}
		return nil, ErrDestroyed
	}
	hf, err := r.writeHolder(holderInfo{Holder: holder, Since: r.now().UTC(), PID: os.Getpid()})
	if err != nil {
		f.Close() // releases the flock; the lock file holds no data
		return nil, fmt.Errorf("lock: %w", err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			// The holder file goes first, while the lock is still held, so that it never
			// names someone who no longer holds the lock; and only if it is ours: after
			// Destroy, its path may name the holder file of a new root. A stat error
			// counts as not ours.
			if same, _ := sameFile(hf, r.holderPath()); same {
				// A holder file left behind is harmless: nobody keeps a flock on it, so
				// its readers know it for stale.
				_ = os.Remove(r.holderPath())
			}
			hf.Close() // drops the shared flock; nothing is written through hf
			f.Close()  // releases the flock; the lock file holds no data
		})
	}, nil
}

// sameFile reports whether f is the file at path now (same device and inode); false if
// there is none. Destroy renames the root, files and all: a descriptor opened before then
// names a file that is no longer at its path.
func sameFile(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// LockWait is Lock that waits, trying again every 50ms, until the lock is free or ctx is
// done; then it returns the *LockedError of the holder at the last try. It tries once
// even if ctx is done already. If the holder it waited for destroyed the root (Destroy),
// it returns ErrDestroyed.
func (r *Releaser) LockWait(ctx context.Context, holder string) (unlock func(), err error) {
	t := time.NewTimer(lockPoll)
	defer t.Stop()
	for {
		unlock, err := r.Lock(holder)
		if !errors.Is(err, ErrLocked) {
			return unlock, err
		}
		if r.lockBusy != nil {
			r.lockBusy()
		}
		t.Reset(lockPoll)
		select {
		case <-ctx.Done():
			return nil, err
		case <-t.C:
		}
	}
}

// Holder returns who holds the deploy lock and since when, or nil if nobody does. A holder
// file left behind by a process killed while it held the lock does not count: the lock
// died with it.
func (r *Releaser) Holder() (*LockedError, error) {
	h, err := r.readHolder()
	if err != nil {
		return nil, fmt.Errorf("holder: %w", err)
	}
	return h, nil
}

// readHolder reads deploy.holder if its writer still holds it: nil, nil if there is no
// such file, or nobody holds it.
func (r *Releaser) readHolder() (*LockedError, error) {
	f, err := os.Open(r.holderPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close() // read only; closing drops the probing flock
	// An exclusive try: it fails while the holder keeps its shared lock, and succeeds
	// once the holder is gone. It is dropped at Close; a new holder writes a new file.
	switch err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err {
	case nil:
		return nil, nil
	case unix.EWOULDBLOCK:
	default:
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<16))
	if err != nil {
		return nil, err
	}
	var h holderInfo
	if json.Unmarshal(b, &h) != nil {
		return &LockedError{}, nil
	}
	return &LockedError{Holder: h.Holder, Since: h.Since}, nil
}

// writeHolder replaces deploy.holder atomically with a file that the returned descriptor
// holds a shared flock on. It is not synced: it means something only while its writer
// lives, and after a power loss nobody holds the lock.
func (r *Releaser) writeHolder(h holderInfo) (_ *os.File, err error) {
	b, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(r.metaDir(), ".deploy.holder.tmp-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// The error to return is err; a temporary file left behind is named like
			// atomicfile's, so Recover removes it.
			f.Close()           // see above
			os.Remove(f.Name()) // see above
		}
	}()
	if err = flock(f, unix.LOCK_SH); err != nil {
		return nil, err
	}
	if _, err = f.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	if err = f.Chmod(0o644); err != nil {
		return nil, err
	}
	if err = os.Rename(f.Name(), r.holderPath()); err != nil {
		return nil, err
	}
	return f, nil
}

// flock is flock(2) on f, tried again when a signal interrupts it.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}
