//go:build linux

package template

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

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

// holeBlock is the granularity at which digHoles looks for zeros: the page
// and ext4 block size.
const holeBlock = 4096

// digHoles deallocates every all-zero, block-aligned range of a file,
// keeping its size and contents. mkfs.ext4 writes the journal and the inode
// tables out as zeros; as holes they read the same but cost no disk, in the
// base image and in every full copy a rootfs backend makes of it.
func digHoles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("dig holes in %q: %w", path, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	zero := make([]byte, holeBlock)
	buf := make([]byte, 1<<20)
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("dig holes in %q: %w", path, err)
	}
	size := st.Size()
	var off int64
	for {
		// Visit only the ranges holding data. What SEEK_DATA skips may still
		// be allocated (mkfs fallocates the journal and inode tables as
		// unwritten extents, which read as zeros): punch it too.
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			start = size // no data past off
		} else if err != nil {
			return fmt.Errorf("dig holes in %q: seek data: %w", path, err)
		}
		if start > off {
			if err := punch(fd, off, start); err != nil {
				return fmt.Errorf("dig holes in %q: %w", path, err)
			}
		}
		if start >= size {
			return nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("dig holes in %q: seek hole: %w", path, err)
		}
		for pos := start; pos < end; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if n == 0 && err != nil {
				return fmt.Errorf("dig holes in %q: read: %w", path, err)
			}
			// Punch each run of whole zero blocks; a partial tail block is kept.
			runStart := int64(-1)
			for i := 0; i+holeBlock <= n; i += holeBlock {
				if bytes.Equal(buf[i:i+holeBlock], zero) {
					if runStart < 0 {
						runStart = pos + int64(i)
					}
					continue
				}
				if runStart >= 0 {
					if err := punch(fd, runStart, pos+int64(i)); err != nil {
						return fmt.Errorf("dig holes in %q: %w", path, err)
					}
					runStart = -1
				}
			}
			whole := int64(n / holeBlock * holeBlock)
			if runStart >= 0 {
				if err := punch(fd, runStart, pos+whole); err != nil {
					return fmt.Errorf("dig holes in %q: %w", path, err)
				}
			}
			if whole == 0 {
				whole = int64(n) // a short tail: nothing to punch, move on
			}
			pos += whole
		}
		off = end
	}
}

func punch(fd int, from, to int64) error {
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, from, to-from); err != nil {
		return fmt.Errorf("punch hole [%d, %d): %w", from, to, err)
	}
	return nil
}
