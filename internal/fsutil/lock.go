//go:build unix

package fsutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often Lock retries a lock another process holds.
const lockPoll = 20 * time.Millisecond

// Lock takes an exclusive flock on path (created if missing), waiting until
// ctx ends; the returned func releases it. The lock dies with the process,
// so a crash never leaves it held.
func Lock(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %q: %w", path, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %q: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for lock %q: %w", path, context.Cause(ctx))
		case <-time.After(lockPoll):
		}
	}
}

// ErrLocked is returned by TryLock for a lock another process holds.
var ErrLocked = errors.New("locked by another process")

// TryLock is Lock without the wait: a lock another process holds is an
// error wrapping ErrLocked.
func TryLock(path string) (unlock func(), err error) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(ErrLocked)
	return Lock(ctx, path)
}

// Held reports whether another process holds the lock at path. It creates
// nothing: a missing file is a lock nobody holds.
func Held(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
