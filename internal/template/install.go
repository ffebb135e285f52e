package template

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Host programs every template's guest carries: busybox (init and the
// tools the guest's own scripts use) and a static bash.
const (
	HostBusybox = hostBusybox
	HostBash    = hostBash
)

// Sync flushes a file another process wrote, or a directory's entries.
func Sync(path string) error { return syncFile(path) }

// MakeImage builds a sparse ext4 image of size bytes from a staged tree,
// without mounting anything (mkfs.ext4 -d keeps owners, modes, links and
// extended attributes), and flushes it.
func MakeImage(ctx context.Context, staging, image string, size int64) error {
	if err := makeExt4(ctx, staging, image, size); err != nil {
		return err
	}
	return syncFile(image)
}

// Install publishes a template called t.Name from a kernel and a root
// image on the host: both are hard-linked (copied across file systems)
// into a new directory, which replaces any template of that name
// atomically. The images must not change afterwards (the build cache and
// the kernel cache never do).
func (r Registry) Install(ctx context.Context, t Template, kernel, rootfs string) (Template, error) {
	if err := checkName(t.Name); err != nil {
		return Template{}, err
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return Template{}, fmt.Errorf("create registry %q: %w", r.Dir, err)
	}
	work, err := os.MkdirTemp(r.Dir, ".build-"+t.Name+"-")
	if err != nil {
		return Template{}, fmt.Errorf("install template %q: %w", t.Name, err)
	}
	// On success this removes the replaced template, swapped into work/out.
	defer os.RemoveAll(work)
	out := filepath.Join(work, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Template{}, fmt.Errorf("install template %q: %w", t.Name, err)
	}
	for src, dst := range map[string]string{kernel: kernelFile, rootfs: rootfsFile} {
		if err := linkOrCopy(src, filepath.Join(out, dst)); err != nil {
			return Template{}, fmt.Errorf("install template %q: %w", t.Name, err)
		}
	}
	if t.BuiltAt.IsZero() {
		t.BuiltAt = time.Now().UTC()
	}
	if err := writeManifest(out, t); err != nil {
		return Template{}, fmt.Errorf("install template %q: write manifest: %w", t.Name, err)
	}
	if err := syncDir(out); err != nil {
		return Template{}, err
	}
	if err := ctx.Err(); err != nil {
		return Template{}, fmt.Errorf("install template %q: %w", t.Name, err)
	}
	if err := publish(out, r.path(t.Name)); err != nil {
		return Template{}, err
	}
	return r.Get(t.Name)
}

// Remove deletes the template called name: renamed out of sight first, so
// it is gone at once, then its files. A missing template wraps ErrNotFound.
func (r Registry) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	b := make([]byte, 6)
	rand.Read(b)
	gone := filepath.Join(r.Dir, ".rm-"+name+"-"+hex.EncodeToString(b))
	if err := os.Rename(r.path(name), gone); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove template %q: %w", name, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("remove template %q: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove template %q files: %w", name, err)
	}
	return nil
}
