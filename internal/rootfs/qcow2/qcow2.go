//go:build linux

// Package qcow2 is the rootfs backend for the QEMU driver on hosts without
// device-mapper or a reflinking filesystem: each sandbox's disk is a qcow2
// overlay whose backing file is the read-only raw base image, so a new disk
// costs a few kilobytes of metadata and grows only with what the guest
// writes. Only QEMU can open such a disk.
package qcow2

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/internal/diskfile"
	"github.com/emberhq/ember/internal/runner"
)

// fileName is the overlay's name inside the sandbox directory.
const fileName = "rootfs.qcow2"

// Backend makes qcow2 overlays with qemu-img. It implements rootfs.Backend.
type Backend struct {
	diskfile.Store
	log *slog.Logger
}

var _ rootfs.Backend = (*Backend)(nil)

// New returns the qcow2 backend.
func New(log *slog.Logger) *Backend {
	return &Backend{Store: diskfile.Store{Name: fileName, Format: "qcow2"}, log: log.With("rootfs", "qcow2")}
}

// Name returns "qcow2".
func (b *Backend) Name() string { return "qcow2" }

// Prepare creates an overlay in dir over the raw image base, sizeBytes
// large (0: base's size). The overlay names base by its absolute path, so
// base must stay where it is, unchanged, for as long as the disk lives.
func (b *Backend) Prepare(ctx context.Context, id, dir, base string, sizeBytes int64) (_ rootfs.Disk, err error) {
	begin := time.Now()
	dst := b.Path(dir)
	base, err = filepath.Abs(base)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	size, _, err := diskfile.Size(base, sizeBytes)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	// O_EXCL: never overwrite a disk that is already there.
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	err = writeOverlay(f, base, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	b.log.Debug("disk prepared", "sandbox", id, "size", size, "duration", time.Since(begin))
	return rootfs.Disk{Path: dst, Format: "qcow2"}, nil
}

// Flatten writes the disk's content to dst as a raw image.
func (b *Backend) Flatten(ctx context.Context, id, dir, dst string) error {
	if err := diskfile.Exists(b.Path(dir)); err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	err := diskfile.Write(dst, func(out *os.File) error {
		// qemu-img recreates the file and writes only data clusters, so
		// the image stays sparse. -U reads an overlay a paused QEMU still
		// holds open (and locked): its metadata is on disk once the guest
		// flushed or the machine was saved, which callers see to.
		_, err := runner.Run(ctx, "qemu-img", "convert", "-q", "-U", "-f", "qcow2", "-O", "raw", b.Path(dir), out.Name())
		return err
	})
	if err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	return nil
}
