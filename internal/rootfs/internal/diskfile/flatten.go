//go:build linux

package diskfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Clone makes dst share src's extents with FICLONE (xfs with reflink=1,
// btrfs); dst must be open for writing and empty. Filesystems without
// reflinks answer with an error wrapping EOPNOTSUPP, EXDEV or EINVAL; see
// NoClone.
func Clone(dst, src *os.File) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return fmt.Errorf("clone %s to %s: %w", src.Name(), dst.Name(), err)
	}
	return nil
}

// NoClone reports whether err says the filesystem cannot clone between the
// two files (as opposed to a real failure).
func NoClone(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY)
}

// Flatten copies the raw image src to a new file dst, sharing extents
// where the filesystem can and copying sparsely where it cannot. It writes
// a temporary file next to dst and renames it, so dst either appears whole
// or not at all; an existing dst is an error wrapping fs.ErrExist.
func Flatten(ctx context.Context, src, dst string) error {
	return Write(dst, func(out *os.File) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		if err := Clone(out, in); err == nil || !NoClone(err) {
			return err
		}
		return CopySparse(ctx, out, in)
	})
}

// Write creates dst through fill: fill writes a temporary file in dst's
// directory, which is then made read-only and renamed to dst. On error, and
// when dst already exists, nothing is left behind.
func Write(dst string, fill func(*os.File) error) (err error) {
	if err := Claim(dst); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return fmt.Errorf("create image %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := fill(tmp); err != nil {
		return fmt.Errorf("write image %s: %w", dst, err)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return fmt.Errorf("write image %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write image %s: %w", dst, err)
	}
	// Link, not rename: it fails when dst appeared meanwhile instead of
	// replacing it.
	if err := os.Link(tmp.Name(), dst); err != nil {
		return fmt.Errorf("write image %s: %w", dst, err)
	}
	os.Remove(tmp.Name())
	return nil
}

// Exists returns rootfs.ErrNotFound (wrapped) when path is missing.
func Exists(path string) error {
	_, err := Usage(path)
	return err
}
