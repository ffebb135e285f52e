//go:build linux

package template

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// usage returns a file's allocated bytes (st_blocks*512) and apparent size.
func usage(path string) (allocated, size int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %q: %w", path, err)
	}
	return st.Blocks * 512, st.Size, nil
}

// lock takes an exclusive flock on path (created if missing), waiting until it
// is free or ctx ends, so two processes never build the same thing at once.
// The kernel drops the lock if the holder dies.
func lock(ctx context.Context, path string) (unlock func(), err error) {
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
			return nil, fmt.Errorf("wait for lock %q: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// publish moves the finished directory src to dst in one step. When dst
// already exists the two are swapped atomically (RENAME_EXCHANGE), so readers
// see either the old or the new directory, never neither; the old one is then
// left at src for the caller to remove.
func publish(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, fs.ErrExist) {
		err = unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_EXCHANGE)
	}
	if err != nil {
		return fmt.Errorf("publish %q as %q: %w", src, dst, err)
	}
	return syncDir(filepath.Dir(dst))
}
