//go:build linux

// Package diskfile holds what the file-based rootfs backends share: size
// checks against the base image, usage by allocated blocks, idempotent
// removal.
package diskfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/rootfs"
)

// Size returns the virtual size of a disk over base: base's size when
// size is 0, size itself when it is at least that, else rootfs.ErrTooSmall.
// It also returns base's size.
func Size(base string, size int64) (diskSize, baseSize int64, err error) {
	st, err := os.Stat(base)
	if err != nil {
		return 0, 0, fmt.Errorf("stat base image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, 0, fmt.Errorf("base image %s: not a regular file", base)
	}
	baseSize = st.Size()
	switch {
	case size == 0:
		return baseSize, baseSize, nil
	case size < baseSize:
		return 0, 0, fmt.Errorf("size %d below base %s's %d: %w", size, base, baseSize, rootfs.ErrTooSmall)
	}
	return size, baseSize, nil
}

// Usage returns the bytes path's allocated blocks take (st_blocks × 512).
// A missing file is rootfs.ErrNotFound.
func Usage(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("usage of %s: %w", path, rootfs.ErrNotFound)
		}
		return 0, fmt.Errorf("usage of %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}

// Remove deletes path; a missing file is success.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove disk %s: %w", path, err)
	}
	return nil
}

// Claim fails with an error wrapping fs.ErrExist when path exists, so a
// backend never overwrites a disk it did not just make.
func Claim(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("create disk %s: %w", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("create disk %s: %w", path, err)
	}
	return nil
}
