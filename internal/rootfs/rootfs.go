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
	// Detach releases whatever the disk holds open on the host (devices,
	// mappings) and keeps its data, so a paused sandbox costs only disk
	// space. The VMM must be stopped first. Detaching a detached disk
	// returns nil; a missing disk is ErrNotFound.
	Detach(ctx context.Context, id, dir string) error
	// Attach makes a detached disk usable again from its kept data and
	// returns it; attaching an attached disk returns it unchanged. A missing
	// disk is ErrNotFound.
	Attach(ctx context.Context, id, dir string) (Disk, error)
	// Flatten writes the disk's content, attached or detached, as a new
	// standalone raw image at dst (sparse where the disk reads zeros) that
	// can serve as a base image. dst must not exist; on error nothing is
	// left there. The disk is left as it was found; its VMM should be
	// paused or stopped so the image is consistent.
	Flatten(ctx context.Context, id, dir, dst string) error
	// Remove deletes the disk, attached or detached; removing a missing
	// disk returns nil.
	Remove(ctx context.Context, id, dir string) error
	// Usage reports the bytes the disk really occupies (allocated blocks,
	// st_blocks × 512), never its apparent size.
	Usage(ctx context.Context, id, dir string) (int64, error)
}

// Reconciler is implemented by backends that record intent before
// multi-step changes (devmapper): Reconcile finishes or rolls back what a
// crash interrupted, and must run at start before any other disk call.
type Reconciler interface {
	Reconcile(ctx context.Context) error
}

// ErrTooSmall is returned by Prepare for a size below the base image's.
var ErrTooSmall = errors.New("disk size below the base image's size")
