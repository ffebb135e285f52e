//go:build linux

// Package copy is the rootfs backend that works on every filesystem: each
// sandbox's disk is a sparse copy of the base image, holes kept as holes,
// in a raw file in the sandbox's directory. It costs a full copy of the
// base's data per sandbox, so it is the last choice after devmapper,
// reflink and qcow2.
package copy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/internal/diskfile"
)

// fileName is the disk's name inside the sandbox directory.
const fileName = "rootfs.raw"

// chunk bounds one copy_file_range call, so cancellation is noticed between
// chunks.
const chunk = 64 << 20

// Backend makes sparse copies. It implements rootfs.Backend.
type Backend struct {
	log *slog.Logger
}

var _ rootfs.Backend = (*Backend)(nil)

// New returns the copy backend.
func New(log *slog.Logger) *Backend {
	return &Backend{log: log.With("rootfs", "copy")}
}

// Name returns "copy".
func (b *Backend) Name() string { return "copy" }

// path is the disk of the sandbox whose directory is dir.
func path(dir string) string { return filepath.Join(dir, fileName) }

// Prepare copies base into dir as a sparse raw file and grows it to
// sizeBytes. The copy is not synced to stable storage: a sandbox's disk
// does not outlive a host crash anyway.
func (b *Backend) Prepare(ctx context.Context, id, dir, base string, sizeBytes int64) (_ rootfs.Disk, err error) {
	begin := time.Now()
	dst := path(dir)
	size, _, err := diskfile.Size(base, sizeBytes)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	in, err := os.Open(base)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: open base: %w", id, err)
	}
	defer in.Close()
	// O_EXCL: never truncate a disk that is already there.
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("prepare disk for %s: close %s: %w", id, dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := CopySparse(ctx, out, in); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: copy %s to %s: %w", id, base, dst, err)
	}
	if err := out.Truncate(size); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: grow %s to %d: %w", id, dst, size, err)
	}
	b.log.Debug("disk prepared", "sandbox", id, "size", size, "duration", time.Since(begin))
	return rootfs.Disk{Path: dst, Format: "raw"}, nil
}

// Remove deletes the disk; a missing disk is success.
func (b *Backend) Remove(ctx context.Context, id, dir string) error {
	return diskfile.Remove(path(dir))
}

// Usage returns the bytes the disk's allocated blocks take.
func (b *Backend) Usage(ctx context.Context, id, dir string) (int64, error) {
	return diskfile.Usage(path(dir))
}

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
