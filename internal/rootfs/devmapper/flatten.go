//go:build linux

package devmapper

import (
	"context"
	"fmt"
	"io"
	"os"
)

// block is the unit copySkippingZeros tests for zeros: a guest filesystem
// block, so unwritten and freed blocks stay holes.
const block = 4096

// copySkippingZeros copies size bytes of in (a block device, which cannot
// report its holes) to out at the same offsets, writing only blocks that
// hold something, then sets out's length to size.
func copySkippingZeros(ctx context.Context, out, in *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := in.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
		if err != nil && (err != io.EOF || n == 0) {
			return fmt.Errorf("read %s at %d: %w", in.Name(), off, err)
		}
		for i := 0; i < n; {
			j := i
			for j < n && !zero(buf[j:min(j+block, n)]) {
				j += block
			}
			j = min(j, n)
			if j > i {
				if _, err := out.WriteAt(buf[i:j], off+int64(i)); err != nil {
					return fmt.Errorf("write %s at %d: %w", out.Name(), off+int64(i), err)
				}
				i = j
				continue
			}
			i += block
		}
		off += int64(n)
	}
	return out.Truncate(size)
}

// zero reports whether b holds only zero bytes.
func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
