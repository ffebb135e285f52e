//go:build linux

// Package devmapper is the rootfs backend for hosts with device-mapper:
// each sandbox's disk is a dm snapshot target, ember-<sandbox>, over the
// base image's read-only loop device (one per image, shared through a
// LoopRegistry) with the sandbox's writes in a sparse copy-on-write file
// on a loop device of its own. A disk larger than its base sits over an
// origin device, ember-<sandbox>-origin, that appends zeros to the base.
//
// Every multi-step change records its intent in the backend's state
// directory first; Reconcile, run at start, finishes or rolls back what a
// crash interrupted. Loop devices carry the autoclear flag, so removing
// the dm devices is all it takes to release them.
package devmapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/internal/diskfile"
	"github.com/emberhq/ember/internal/rootfs/loop"
)

// Files in a sandbox's directory.
const (
	cowName  = "rootfs.cow"
	metaName = "devmapper.json"
)

// chunkSectors is the snapshot's copy-on-write unit: 8 sectors, 4 KiB, a
// guest filesystem block.
const chunkSectors = 8

// Prefix starts the name of every device-mapper device the backend makes.
const Prefix = "ember-"

// ErrUnavailable is returned where the kernel or the host lacks what the
// backend needs.
var ErrUnavailable = errors.New("device-mapper unavailable")

// Available reports whether this host can run the backend; the error says
// what is missing and wraps ErrUnavailable.
func Available() error {
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		return fmt.Errorf("%w: no device-mapper in this kernel (/dev/mapper/control missing; modprobe dm_mod)", ErrUnavailable)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("%w: no loop driver (/dev/loop-control missing; modprobe loop)", ErrUnavailable)
	}
	if _, err := lookPath("dmsetup"); err != nil {
		return fmt.Errorf("%w: dmsetup not on PATH (apt-get install dmsetup)", ErrUnavailable)
	}
	return nil
}

// meta is what a disk keeps beside its CoW file to be attached again.
type meta struct {
	Base     string `json:"base"`
	BaseSize int64  `json:"base_size"`
	Size     int64  `json:"size"`
}

// Backend makes dm snapshot disks. It implements rootfs.Backend.
type Backend struct {
	state string
	log   *slog.Logger
	loops *LoopRegistry
}

var _ rootfs.Backend = (*Backend)(nil)

// New returns the backend, keeping its intent journal in stateDir (made if
// missing). Run Reconcile before the first disk operation.
func New(stateDir string, log *slog.Logger) (*Backend, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("devmapper state directory: %w", err)
	}
	return &Backend{state: stateDir, log: log.With("rootfs", "devmapper"), loops: NewLoopRegistry()}, nil
}

// Name returns "devmapper".
func (b *Backend) Name() string { return "devmapper" }

// Loops returns the backend's loop registry.
func (b *Backend) Loops() *LoopRegistry { return b.loops }

// Names of the sandbox's devices.
func snapName(id string) string   { return Prefix + id }
func originName(id string) string { return Prefix + id + "-origin" }

// Prepare makes a CoW file in dir and a snapshot over base, sizeBytes
// large (0: base's size; a multiple of 512).
func (b *Backend) Prepare(ctx context.Context, id, dir, base string, sizeBytes int64) (_ rootfs.Disk, err error) {
	begin := time.Now()
	size, baseSize, err := diskfile.Size(base, sizeBytes)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	if size%512 != 0 || baseSize%512 != 0 {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: sizes %d and %d must be multiples of 512", id, size, baseSize)
	}
	if base, err = canonical(base); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	for _, p := range []string{filepath.Join(dir, metaName), filepath.Join(dir, cowName)} {
		if err := diskfile.Claim(p); err != nil {
			return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
		}
	}
	if _, ok, _ := lookup(snapName(id)); ok {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: dm device %s: %w", id, snapName(id), fs.ErrExist)
	}
	if err := b.begin(intent{Op: opPrepare, ID: id, Dir: dir}); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	defer func() {
		if err != nil {
			// Undo under a context of its own: cancellation stops
			// acquiring, never releasing.
			err = errors.Join(err, b.rollback(context.WithoutCancel(ctx), id, dir, true))
		}
		b.done(id)
	}()
	m := meta{Base: base, BaseSize: baseSize, Size: size}
	if err := writeMeta(dir, m); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	if err := makeCoW(filepath.Join(dir, cowName), size); err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	d, err := b.attach(ctx, id, dir, m)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("prepare disk for %s: %w", id, err)
	}
	b.log.Debug("disk prepared", "sandbox", id, "size", size, "device", d.Path, "duration", time.Since(begin))
	return d, nil
}

// makeCoW creates the sparse CoW file: room for every chunk of a size-byte
// disk plus the exception store's metadata (16 bytes a chunk, a header).
func makeCoW(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create cow file: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size + size/128 + 1<<20); err != nil {
		return fmt.Errorf("size cow file: %w", err)
	}
	return f.Close()
}

// attach builds the sandbox's devices from its kept files.
func (b *Backend) attach(ctx context.Context, id, dir string, m meta) (_ rootfs.Disk, err error) {
	origin, err := b.loops.Acquire(m.Base, id)
	if err != nil {
		return rootfs.Disk{}, err
	}
	defer func() {
		if err != nil {
			b.loops.Release(m.Base, id)
		}
	}()
	cow, err := loop.Attach(filepath.Join(dir, cowName), false)
	if err != nil {
		return rootfs.Disk{}, err
	}
	// From here the dm table holds the CoW device; the kernel unbinds it
	// when the table goes.
	defer cow.Close()
	if m.Size > m.BaseSize {
		table := fmt.Sprintf("0 %s linear %s 0\n%s %s zero\n",
			sectors(m.BaseSize), origin, sectors(m.BaseSize), sectors(m.Size-m.BaseSize))
		if origin, err = create(ctx, originName(id), table, true); err != nil {
			return rootfs.Disk{}, err
		}
		defer func() {
			if err != nil {
				remove(context.WithoutCancel(ctx), originName(id))
			}
		}()
	}
	table := fmt.Sprintf("0 %s snapshot %s %s P %d\n", sectors(m.Size), origin, cow.Path, chunkSectors)
	node, err := create(ctx, snapName(id), table, false)
	if err != nil {
		return rootfs.Disk{}, err
	}
	return rootfs.Disk{Path: node, Format: "raw"}, nil
}

// detach removes the sandbox's devices, snapshot first, and releases the
// base's loop device; missing devices are success.
func (b *Backend) detach(ctx context.Context, id string, m *meta) error {
	if err := remove(ctx, snapName(id)); err != nil {
		return err
	}
	if err := remove(ctx, originName(id)); err != nil {
		return err
	}
	if m != nil {
		return b.loops.Release(m.Base, id)
	}
	return nil
}

// Detach removes the sandbox's dm devices and keeps its CoW file. The VMM
// must be stopped first: the kernel refuses to remove an open device.
func (b *Backend) Detach(ctx context.Context, id, dir string) (err error) {
	m, err := readMeta(dir)
	if err != nil {
		return fmt.Errorf("detach disk of %s: %w", id, err)
	}
	if err := b.begin(intent{Op: opDetach, ID: id, Dir: dir}); err != nil {
		return fmt.Errorf("detach disk of %s: %w", id, err)
	}
	defer b.done(id)
	if err := b.detach(ctx, id, &m); err != nil {
		return fmt.Errorf("detach disk of %s: %w", id, err)
	}
	return nil
}

// Attach rebuilds the dm devices over the kept CoW file, or returns the
// devices that are there.
func (b *Backend) Attach(ctx context.Context, id, dir string) (_ rootfs.Disk, err error) {
	m, err := readMeta(dir)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("attach disk of %s: %w", id, err)
	}
	if node, ok, err := lookup(snapName(id)); err != nil || ok {
		if err == nil {
			// Adopt a disk a previous process attached.
			_, err = b.loops.Acquire(m.Base, id)
		}
		if err != nil {
			return rootfs.Disk{}, fmt.Errorf("attach disk of %s: %w", id, err)
		}
		return rootfs.Disk{Path: node, Format: "raw"}, nil
	}
	if err := b.begin(intent{Op: opAttach, ID: id, Dir: dir}); err != nil {
		return rootfs.Disk{}, fmt.Errorf("attach disk of %s: %w", id, err)
	}
	defer b.done(id)
	d, err := b.attach(ctx, id, dir, m)
	if err != nil {
		return rootfs.Disk{}, fmt.Errorf("attach disk of %s: %w", id, err)
	}
	return d, nil
}

// Flatten copies what the snapshot device reads into a sparse raw image at
// dst, attaching the disk for the copy if it is detached.
func (b *Backend) Flatten(ctx context.Context, id, dir, dst string) (err error) {
	m, err := readMeta(dir)
	if err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	node, attached, err := lookup(snapName(id))
	if err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	if !attached {
		if err := b.begin(intent{Op: opFlatten, ID: id, Dir: dir}); err != nil {
			return fmt.Errorf("flatten disk of %s: %w", id, err)
		}
		defer b.done(id)
		d, err := b.attach(ctx, id, dir, m)
		if err != nil {
			return fmt.Errorf("flatten disk of %s: %w", id, err)
		}
		node = d.Path
		defer func() {
			if derr := b.detach(context.WithoutCancel(ctx), id, &m); derr != nil {
				err = errors.Join(err, fmt.Errorf("flatten disk of %s: %w", id, derr))
			}
		}()
	}
	err = diskfile.Write(dst, func(out *os.File) error {
		in, err := os.Open(node)
		if err != nil {
			return err
		}
		defer in.Close()
		return copySkippingZeros(ctx, out, in, m.Size)
	})
	if err != nil {
		return fmt.Errorf("flatten disk of %s: %w", id, err)
	}
	return nil
}

// Remove deletes the sandbox's devices, then its files.
func (b *Backend) Remove(ctx context.Context, id, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, metaName)); errors.Is(err, fs.ErrNotExist) {
		if _, ok, _ := lookup(snapName(id)); !ok {
			return diskfile.Remove(filepath.Join(dir, cowName))
		}
	}
	if err := b.begin(intent{Op: opRemove, ID: id, Dir: dir}); err != nil {
		return fmt.Errorf("remove disk of %s: %w", id, err)
	}
	if err := b.rollback(ctx, id, dir, true); err != nil {
		return fmt.Errorf("remove disk of %s: %w", id, err)
	}
	b.done(id)
	return nil
}

// rollback removes the sandbox's devices and, with files, its files.
func (b *Backend) rollback(ctx context.Context, id, dir string, files bool) error {
	m, err := readMeta(dir)
	mp := &m
	if err != nil {
		mp = nil
	}
	if err := b.detach(ctx, id, mp); err != nil {
		return err
	}
	if !files {
		return nil
	}
	return errors.Join(diskfile.Remove(filepath.Join(dir, cowName)), diskfile.Remove(filepath.Join(dir, metaName)))
}

// Usage returns the bytes the CoW file's allocated blocks take: the shared
// base is not counted.
func (b *Backend) Usage(ctx context.Context, id, dir string) (int64, error) {
	return diskfile.Usage(filepath.Join(dir, cowName))
}

func writeMeta(dir string, m meta) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, metaName), data, 0o600); err != nil {
		return fmt.Errorf("write disk metadata: %w", err)
	}
	return nil
}

// readMeta reads the disk's metadata; a missing disk is rootfs.ErrNotFound.
func readMeta(dir string) (meta, error) {
	var m meta
	data, err := os.ReadFile(filepath.Join(dir, metaName))
	if errors.Is(err, fs.ErrNotExist) {
		return m, fmt.Errorf("disk metadata in %s: %w", dir, rootfs.ErrNotFound)
	}
	if err != nil {
		return m, fmt.Errorf("read disk metadata: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("read disk metadata %s: %w", filepath.Join(dir, metaName), err)
	}
	return m, nil
}
