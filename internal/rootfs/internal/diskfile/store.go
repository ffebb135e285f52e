//go:build linux

package diskfile

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/rootfs"
)

// Store is what the file-based backends share once a disk exists: a file
// named Name in the sandbox directory, in Format, that holds nothing open on
// the host. Backends embed it for Detach, Attach, Flatten (raw disks),
// Remove and Usage.
type Store struct {
	Name   string
	Format string
}

// Path is the disk of the sandbox whose directory is dir.
func (s Store) Path(dir string) string { return filepath.Join(dir, s.Name) }

// Detach checks the disk is there: a file keeps nothing to release.
func (s Store) Detach(ctx context.Context, id, dir string) error {
	if err := Exists(s.Path(dir)); err != nil {
		return fmt.Errorf("detach disk of %s: %w", id, err)
	}
	return nil
}

// Attach returns the disk kept in dir.
func (s Store) Attach(ctx context.Context, id, dir string) (rootfs.Disk, error) {
	if err := Exists(s.Path(dir)); err != nil {
		return rootfs.Disk{}, fmt.Errorf("attach disk of %s: %w", id, err)
	}
	return rootfs.Disk{Path: s.Path(dir), Format: s.Format}, nil
}

// Flatten writes a raw disk's content to dst, cloned where the filesystem
// can and sparsely copied where not.
func (s Store) Flatten(ctx context.Context, id, dir, dst string) error {
	if err := Exists(s.Path(dir)); err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	if err := Flatten(ctx, s.Path(dir), dst); err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	return nil
}

// Remove deletes the disk; a missing disk is success.
func (s Store) Remove(ctx context.Context, id, dir string) error {
	return Remove(s.Path(dir))
}

// Usage returns the bytes the disk's allocated blocks take (blocks shared
// with the base through a reflink included: st_blocks cannot tell).
func (s Store) Usage(ctx context.Context, id, dir string) (int64, error) {
	return Usage(s.Path(dir))
}

// Create makes the raw disk at dst from base with fill (which gets the new
// empty file and the open base), then grows it to size. dst must not exist;
// on error it is removed.
func Create(ctx context.Context, dst, base string, size int64, fill func(out, in *os.File) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("open base: %w", err)
	}
	defer in.Close()
	// O_EXCL: never truncate a disk that is already there.
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := fill(out, in); err != nil {
		return err
	}
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("grow %s to %d: %w", dst, size, err)
	}
	return nil
}

// Raw is a whole backend whose disks are raw files made from the base by
// one function (a sparse copy, a clone): the copy and reflink backends are
// a Raw each.
type Raw struct {
	Store
	name string
	log  *slog.Logger
	fill func(ctx context.Context, out, in *os.File) error
}

// NewRaw returns the backend called name whose disks fill makes: fill
// gets the new empty disk file and the open base image.
func NewRaw(name string, log *slog.Logger, fill func(ctx context.Context, out, in *os.File) error) *Raw {
	return &Raw{Store: Store{Name: "rootfs.raw", Format: "raw"}, name: name, log: log.With("rootfs", name), fill: fill}
}

// Name returns the backend's name.
func (r *Raw) Name() string { return r.name }

// Prepare makes the disk in dir from base and grows it to sizeBytes. The
// disk is not synced to stable storage: it does not outlive a host crash
// anyway.
func (r *Raw) Prepare(ctx context.Context, id, dir, base string, sizeBytes int64) (rootfs.Disk, error) {
	begin := time.Now()
	size, _, err := Size(base, sizeBytes)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	err = Create(ctx, r.Path(dir), base, size, func(out, in *os.File) error { return r.fill(ctx, out, in) })
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	r.log.Debug("disk prepared", "sandbox", id, "size", size, "duration", time.Since(begin))
	return rootfs.Disk{Path: r.Path(dir), Format: "raw"}, nil
}
