//go:build linux

// Package reflink is the rootfs backend for hosts whose sandbox directories
// sit on a filesystem that shares extents between files (xfs made with
// reflink=1, btrfs): each disk is a FICLONE of the base image, made in
// constant time whatever the image's size, and only the blocks a guest
// writes get their own copies. Base images must be on the same filesystem.
package reflink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/internal/diskfile"
)

// ErrUnsupported is returned where the filesystem cannot clone files.
var ErrUnsupported = errors.New("filesystem cannot clone files (reflink)")

// Backend clones base images. It implements rootfs.Backend.
type Backend struct{ *diskfile.Raw }

var _ rootfs.Backend = Backend{}

// New returns the reflink backend.
func New(log *slog.Logger) Backend {
	return Backend{diskfile.NewRaw("reflink", log, clone)}
}

// clone makes out share in's extents.
func clone(ctx context.Context, out, in *os.File) error {
	err := diskfile.Clone(out, in)
	if err != nil && diskfile.NoClone(err) {
		err = fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return err
}

// Supported reports whether files in dir can be cloned, by cloning a
// one-block file there; the error wraps ErrUnsupported when they cannot.
func Supported(dir string) error {
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	dst, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := diskfile.Clone(dst, src); err != nil {
		if diskfile.NoClone(err) {
			return fmt.Errorf("probe reflink in %s: %w: %w", dir, ErrUnsupported, err)
		}
		return fmt.Errorf("probe reflink in %s: %w", dir, err)
	}
	return nil
}
