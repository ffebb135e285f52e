//go:build linux

package build

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// OCI whiteouts: a file ".wh.NAME" deletes NAME from the layers below; a
// file ".wh..wh..opq" in a directory hides everything the layers below put
// there.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// unpacker applies image layers, in order, to a directory tree on the host:
// files, directories, symlinks and hard links with their modes, owners and
// extended attributes, whiteouts honoured. Every path is resolved inside
// the root (os.Root), so a layer's symlink cannot make a later entry land
// outside it. No mounts are needed. Device nodes and FIFOs are skipped: the
// guest's /dev is the kernel's devtmpfs.
type unpacker struct {
	root *os.Root
	// chown sets owners (only root may give files away).
	chown bool
}

func newUnpacker(dir string) (*unpacker, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open unpack root %q: %w", dir, err)
	}
	return &unpacker{root: r, chown: os.Geteuid() == 0}, nil
}

func (u *unpacker) Close() error { return u.root.Close() }

// apply unpacks one layer (an uncompressed tar stream).
func (u *unpacker) apply(r io.Reader) error {
	tr := tar.NewReader(r)
	// created holds what this layer wrote, so an opaque whiteout removes
	// only what lower layers left.
	created := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		name := cleanEntry(h.Name)
		if name == "" {
			if h.Typeflag == tar.TypeDir {
				if err := u.meta(".", h); err != nil {
					return err
				}
			}
			continue
		}
		dir, base := path.Split(name)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		switch {
		case base == whiteoutOpaque:
			if err := u.opaque(dir, created); err != nil {
				return err
			}
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			victim := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
			if err := u.root.RemoveAll(victim); err != nil {
				return fmt.Errorf("whiteout %q: %w", victim, err)
			}
			continue
		}
		if err := u.root.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create parent of %q: %w", name, err)
		}
		if err := u.entry(name, h, tr); err != nil {
			return err
		}
		created[name] = true
	}
}

// entry writes one tar entry at name, replacing what was there (but a
// directory stays a directory, its contents kept, as overlayfs merges it).
func (u *unpacker) entry(name string, h *tar.Header, tr io.Reader) error {
	st, err := u.root.Lstat(name)
	exists := err == nil
	if exists && !(st.IsDir() && h.Typeflag == tar.TypeDir) {
		if err := u.root.RemoveAll(name); err != nil {
			return fmt.Errorf("replace %q: %w", name, err)
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if !exists || !st.IsDir() {
			if err := u.root.Mkdir(name, 0o700); err != nil {
				return fmt.Errorf("create directory %q: %w", name, err)
			}
		}
	case tar.TypeReg, tar.TypeRegA:
		f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("create %q: %w", name, err)
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %q: %w", name, err)
		}
	case tar.TypeSymlink:
		if err := u.root.Symlink(h.Linkname, name); err != nil {
			return fmt.Errorf("create symlink %q: %w", name, err)
		}
	case tar.TypeLink:
		target := cleanEntry(h.Linkname)
		if target == "" {
			return fmt.Errorf("hard link %q to %q: not inside the image", name, h.Linkname)
		}
		if err := u.root.Link(target, name); err != nil {
			return fmt.Errorf("hard link %q to %q: %w", name, target, err)
		}
		return nil // the link shares its target's inode and metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return nil
	default:
		return nil // pax headers and the like carry no file
	}
	return u.meta(name, h)
}

// meta sets an entry's owner, mode and extended attributes.
func (u *unpacker) meta(name string, h *tar.Header) error {
	if u.chown {
		if err := u.root.Lchown(name, h.Uid, h.Gid); err != nil {
			return fmt.Errorf("chown %q: %w", name, err)
		}
	}
	if h.Typeflag == tar.TypeSymlink {
		return nil
	}
	// After the chown, which clears set-id bits.
	if err := u.root.Chmod(name, tarMode(h.Mode)); err != nil {
		return fmt.Errorf("chmod %q: %w", name, err)
	}
	var xattrs map[string]string
	for k, v := range h.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if xattrs == nil {
				xattrs = map[string]string{}
			}
			xattrs[attr] = v
		}
	}
	if len(xattrs) == 0 {
		return nil
	}
	f, err := u.root.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %q for its xattrs: %w", name, err)
	}
	defer f.Close()
	for k, v := range xattrs {
		if err := unix.Fsetxattr(int(f.Fd()), k, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s on %q: %w", k, name, err)
		}
	}
	return nil
}

// opaque empties dir of everything lower layers put there.
func (u *unpacker) opaque(dir string, created map[string]bool) error {
	f, err := u.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opaque whiteout in %q: %w", dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("opaque whiteout in %q: %w", dir, err)
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if created[p] {
			continue
		}
		if err := u.root.RemoveAll(p); err != nil {
			return fmt.Errorf("opaque whiteout in %q: %w", dir, err)
		}
	}
	return nil
}

// cleanEntry is a tar entry's path relative to the image root ("" for the
// root itself); ".." cannot climb above it.
func cleanEntry(name string) string {
	p := path.Clean("/" + name)
	if p == "/" {
		return ""
	}
	return strings.TrimPrefix(p, "/")
}

// tarMode converts a tar header's mode bits (permissions, set-id, sticky)
// to an os.FileMode.
func tarMode(m int64) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
