//go:build linux

// Package copy is the rootfs backend that works on every filesystem: each
// sandbox's disk is a sparse copy of the base image, holes kept as holes,
// in a raw file in the sandbox's directory. It costs a full copy of the
// base's data per sandbox, so it is the last choice after devmapper,
// reflink and qcow2.
package copy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/internal/diskfile"
)

// fileName is the disk's name inside the sandbox directory.
const fileName = "rootfs.raw"

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

// Detach checks the disk is there: a file holds nothing open on the host.
func (b *Backend) Detach(ctx context.Context, id, dir string) error {
	if err := diskfile.Exists(path(dir)); err != nil {
		return fmt.Errorf("detach disk of %s: %w", id, err)
	}
	return nil
}

// Attach returns the disk kept in dir.
func (b *Backend) Attach(ctx context.Context, id, dir string) (rootfs.Disk, error) {
	if err := diskfile.Exists(path(dir)); err != nil {
		return rootfs.Disk{}, fmt.Errorf("attach disk of %s: %w", id, err)
	}
	return rootfs.Disk{Path: path(dir), Format: "raw"}, nil
}

// Flatten writes the disk's content to dst as a raw image.
func (b *Backend) Flatten(ctx context.Context, id, dir, dst string) error {
	if err := diskfile.Exists(path(dir)); err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	if err := diskfile.Flatten(ctx, path(dir), dst); err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	return nil
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
// leaves src's holes as holes; dst ends up at least as long as src.
func CopySparse(ctx context.Context, dst, src *os.File) error {
	return diskfile.CopySparse(ctx, dst, src)
}
