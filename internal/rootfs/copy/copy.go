//go:build linux

// Package copy is the rootfs backend that works on every filesystem: each
// sandbox's disk is a sparse copy of the base image, holes kept as holes,
// in a raw file in the sandbox's directory. It costs a full copy of the
// base's data per sandbox, so it is the last choice after devmapper,
// reflink and qcow2.
package copy

import (
	"context"
	"log/slog"
	"os"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/internal/diskfile"
)

// Backend makes sparse copies. It implements rootfs.Backend.
type Backend struct{ *diskfile.Raw }

var _ rootfs.Backend = Backend{}

// New returns the copy backend.
func New(log *slog.Logger) Backend {
	return Backend{diskfile.NewRaw("copy", log, diskfile.CopySparse)}
}

// CopySparse copies src's data extents into dst at the same offsets and
// leaves src's holes as holes; dst ends up at least as long as src.
func CopySparse(ctx context.Context, dst, src *os.File) error {
	return diskfile.CopySparse(ctx, dst, src)
}
