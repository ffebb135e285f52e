package template

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// writeFileSync writes a file and flushes it to disk, so a directory renamed
// into place after it never holds a file the next boot finds empty.
func writeFileSync(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %q: %w", path, err)
	}
	return f.Close()
}

// syncFile flushes a file another process wrote (the linker, mkfs.ext4).
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %q: %w", path, err)
	}
	return nil
}

// syncDir flushes a directory's entries (a rename into it).
func syncDir(path string) error { return syncFile(path) }

// linkOrCopy makes dst (which must not exist) a hard link to src, or a synced
// copy when they are on different filesystems or links are refused. Both are read-only artifacts, so sharing an inode is
// safe.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	} else if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("link %q to %q: %w", src, dst, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %q to %q: %w", src, dst, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("sync %q: %w", dst, err)
	}
	return out.Close()
}
