//go:build linux

package diskfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// chunk bounds one copy_file_range call, so cancellation is noticed between
// chunks.
const chunk = 64 << 20

// CopySparse copies src's data extents into dst at the same offsets and
// leaves src's holes unwritten, so they stay holes in dst; dst ends up at
// least as long as src. It finds extents with SEEK_DATA/SEEK_HOLE and moves
// them with copy_file_range, falling back to read/write where the kernel
// cannot copy between the two files.
func CopySparse(ctx context.Context, dst, src *os.File) error {
	st, err := src.Stat()
	if err != nil {
		return err
	}
	end := st.Size()
	sfd, dfd := int(src.Fd()), int(dst.Fd())
	for off := int64(0); off < end; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data at %d: %w", off, err)
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole at %d: %w", data, err)
		}
		if err := copyRange(ctx, dfd, sfd, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	if err := dst.Truncate(end); err != nil {
		return fmt.Errorf("set length %d: %w", end, err)
	}
	return nil
}

// copyRange copies n bytes at off from sfd to dfd, chunk by chunk.
func copyRange(ctx context.Context, dfd, sfd int, off, n int64) error {
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := min(n, chunk)
		soff, doff := off, off
		done, err := unix.CopyFileRange(sfd, &soff, dfd, &doff, int(want), 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS),
			errors.Is(err, unix.EOPNOTSUPP):
			if err := copyPlain(dfd, sfd, off, want); err != nil {
				return err
			}
			done = int(want)
		case err != nil:
			return fmt.Errorf("copy_file_range at %d: %w", off, err)
		case done == 0:
			return fmt.Errorf("copy_file_range at %d: %w", off, io.ErrUnexpectedEOF)
		}
		off += int64(done)
		n -= int64(done)
	}
	return nil
}

// copyPlain copies n bytes at off through a buffer.
func copyPlain(dfd, sfd int, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		r, err := unix.Pread(sfd, buf[:min(n, int64(len(buf)))], off)
		if err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		if r == 0 {
			return fmt.Errorf("read at %d: %w", off, io.ErrUnexpectedEOF)
		}
		for w := 0; w < r; {
			m, err := unix.Pwrite(dfd, buf[w:r], off+int64(w))
			if err != nil {
				return fmt.Errorf("write at %d: %w", off+int64(w), err)
			}
			w += m
		}
		off += int64(r)
		n -= int64(r)
	}
	return nil
}
