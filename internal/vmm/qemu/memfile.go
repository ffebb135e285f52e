//go:build linux

package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// pageSize is the unit copyMemory checks for zeroes: the guest's page.
const pageSize = 4096

// copyBuf is how much copyMemory reads at a time.
const copyBuf = 1 << 20

// copyMemory copies the guest memory file src into a new file dst, sparsely:
// a reflink where both sit on one filesystem that can share extents, else
// only src's data extents, and of those only the pages that are not all
// zeroes (a guest leaves many pages it touched zero), so holes stay holes
// and zero pages become holes. dst must not exist.
func copyMemory(ctx context.Context, dst, src string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	if err := copyNonZero(ctx, out, in, st.Size()); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Truncate(st.Size())
}

// copyNonZero copies the non-zero pages of in's data extents to the same
// offsets in out.
func copyNonZero(ctx context.Context, out, in *os.File, size int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	buf := make([]byte, copyBuf)
	for off := int64(0); off < size; {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data at %d: %w", off, err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole at %d: %w", data, err)
		}
		for off = data; off < hole; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := unix.Pread(ifd, buf[:min(int64(len(buf)), hole-off)], off)
			if err != nil {
				return fmt.Errorf("read at %d: %w", off, err)
			}
			if n == 0 {
				return fmt.Errorf("read at %d: unexpected end of file", off)
			}
			if err := writeNonZero(ofd, buf[:n], off); err != nil {
				return err
			}
			off += int64(n)
		}
	}
	return nil
}

// writeNonZero writes the runs of non-zero pages of b, which belongs at
// off, to fd.
func writeNonZero(fd int, b []byte, off int64) error {
	for start := 0; start < len(b); {
		for start < len(b) && isZero(b[start:min(start+pageSize, len(b))]) {
			start += pageSize
		}
		end := start
		for end < len(b) && !isZero(b[end:min(end+pageSize, len(b))]) {
			end += pageSize
		}
		end = min(end, len(b))
		for w := start; w < end; {
			n, err := unix.Pwrite(fd, b[w:end], off+int64(w))
			if err != nil {
				return fmt.Errorf("write at %d: %w", off+int64(w), err)
			}
			w += n
		}
		start = end
	}
	return nil
}

// zeroPage is compared against; bytes.Equal is the fastest zero test the
// standard library has.
var zeroPage = make([]byte, pageSize)

// isZero reports whether b, at most a page long, holds only zero bytes.
func isZero(b []byte) bool { return bytes.Equal(b, zeroPage[:len(b)]) }
