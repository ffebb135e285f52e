// Package rootfs prepares the per-sandbox copy-on-write root disks that sit on
// top of a template's read-only base image. Backends live in subpackages;
// rootfstest holds the conformance suite every backend passes.
package rootfs

import (
	"context"
	"errors"
)

// ErrNotFound is returned for a disk the backend does not hold.
var ErrNotFound = errors.New("disk not found")

// Disk is a sandbox's writable root disk as a VMM opens it.
type Disk struct {
	// Path is the file or block device the VMM opens.
	Path string
	// Format is "raw" or "qcow2".
	Format string
}

// Backend creates and removes per-sandbox disks. Disks are identified by the
// sandbox id; dir is the sandbox's own directory, where the backend keeps its
// files.
type Backend interface {
	// Name is the backend's short name ("copy", "qcow2", ...).
	Name() string
	// Prepare creates a writable disk for id in dir over the read-only base
	// image. sizeBytes is the disk's virtual size; 0 keeps the base's size, a
	// size below the base's is an error. On error nothing is left behind.
	Prepare(ctx context.Context, id, dir, base string, sizeBytes int64) (Disk, error)
	// Remove deletes the disk; removing a missing disk returns nil.
	Remove(ctx context.Context, id, dir string) error
	// Usage reports the bytes the disk really occupies (allocated blocks,
	// st_blocks × 512), never its apparent size.
	Usage(ctx context.Context, id, dir string) (int64, error)
}

// ErrTooSmall is returned by Prepare for a size below the base image's.
var ErrTooSmall = errors.New("disk size below the base image's size")
