//go:build linux

package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/emberhq/ember/internal/vmm"
)

// jail maps the host paths a machine uses to the paths Firecracker sees.
// Without the jailer both are the same and the machine's files live in
// spec.Dir; with it Firecracker runs chrooted in root, the files it needs
// are linked in, and the whole jail is removed on Stop.
type jail struct {
	jailed bool
	// dir is the machine's directory (spec.Dir); root is the chroot on the
	// host (spec.Dir when not jailed).
	dir, root string
	// base is the jailer's per-machine directory,
	// <chroot base>/<firecracker file name>/<id>.
	base     string
	uid, gid int
}

func (d *Driver) newJail(spec vmm.Spec) (*jail, error) {
	j := d.existingJail(spec)
	if !j.jailed {
		return j, nil
	}
	// A jail left by a crashed run would make the jailer refuse to start.
	if err := os.RemoveAll(j.base); err != nil {
		return nil, fmt.Errorf("remove stale jail %s: %w", j.base, err)
	}
	if err := os.MkdirAll(j.root, 0o755); err != nil {
		return nil, fmt.Errorf("create jail %s: %w", j.root, err)
	}
	// Firecracker, running as the jail's user, creates its sockets and
	// snapshot files in the jail's root.
	if err := os.Chown(j.root, j.uid, j.gid); err != nil {
		j.remove()
		return nil, fmt.Errorf("give jail %s to %d:%d: %w", j.root, j.uid, j.gid, err)
	}
	return j, nil
}

// existingJail describes spec's jail without touching the file system.
func (d *Driver) existingJail(spec vmm.Spec) *jail {
	c := d.cfg.Jailer
	if c == nil {
		return &jail{dir: spec.Dir, root: spec.Dir}
	}
	// The jailer names the directory after the executable's file name.
	base := filepath.Join(c.ChrootBase, filepath.Base(d.binary), jailID(spec))
	return &jail{jailed: true, dir: spec.Dir, base: base, root: filepath.Join(base, "root"), uid: c.UID, gid: c.GID}
}

// ownHost is the host path of a file the machine creates (a socket, a
// log); own is the same file as Firecracker names it.
func (j *jail) ownHost(name string) string { return filepath.Join(j.root, name) }

func (j *jail) own(name string) string {
	if j.jailed {
		return "/" + name
	}
	return filepath.Join(j.root, name)
}

// inside makes the host file at path visible to Firecracker and returns
// the path Firecracker is to use. In a jail the file is hard-linked in
// (owned by the jail's user when writable); a read-only file on another
// file system is copied instead. A writable file (the root disk) is never
// copied: the guest's writes must land on the caller's file.
func (j *jail) inside(path string, writable bool) (string, error) {
	if !j.jailed {
		return path, nil
	}
	name := filepath.Base(path)
	dst := filepath.Join(j.root, name)
	if err := os.Link(path, dst); err != nil {
		if writable || !errors.Is(err, syscall.EXDEV) {
			return "", fmt.Errorf("link %s into jail %s: %w", path, j.root, err)
		}
		if err := copyFile(path, dst); err != nil {
			return "", fmt.Errorf("copy %s into jail %s: %w", path, j.root, err)
		}
	}
	if writable {
		if err := j.give(dst); err != nil {
			return "", err
		}
	}
	return "/" + name, nil
}

// rootDriveName is the name under which a machine's root disk is given to
// Firecracker, in the machine's directory or jail. Firecracker's saved
// state keeps the path the drive was configured with and opens it again on
// a snapshot load, which cannot rename it; with the same name in every
// machine's own directory (Firecracker's working directory, or the jail's
// root), a restored machine opens its own disk, never the one the snapshot
// was taken with.
const rootDriveName = "root.drive"

// rootDrive makes disk reachable as rootDriveName and returns the path to
// give Firecracker: relative to its working directory (spec.Dir) through a
// symlink, or in a jail by a hard link owned by the jail's user.
func (j *jail) rootDrive(disk string) (string, error) {
	dst := filepath.Join(j.root, rootDriveName)
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("replace %s: %w", dst, err)
	}
	if !j.jailed {
		if err := os.Symlink(disk, dst); err != nil {
			return "", fmt.Errorf("name root disk %s as %s: %w", disk, dst, err)
		}
		return rootDriveName, nil
	}
	if err := os.Link(disk, dst); err != nil {
		return "", fmt.Errorf("link %s into jail %s: %w", disk, j.root, err)
	}
	if err := j.give(dst); err != nil {
		return "", err
	}
	return "/" + rootDriveName, nil
}

// give hands the host file at path to the jail's user, as whom Firecracker
// opens it; outside a jail Firecracker runs as the daemon's user, and there
// is nothing to give.
func (j *jail) give(path string) error {
	if !j.jailed {
		return nil
	}
	if err := os.Chown(path, j.uid, j.gid); err != nil {
		return fmt.Errorf("give %s to the jail's user %d:%d: %w", path, j.uid, j.gid, err)
	}
	return nil
}

// copyFile copies src to dst, which must not exist. A copy that fails is
// removed: half a snapshot file must not pass for a whole one.
func copyFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, os.Remove(dst))
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// export moves a file Firecracker wrote in the jail (a snapshot file) to
// dst on the host; outside a jail Firecracker wrote it there already.
func (j *jail) export(name, dst string) error {
	if !j.jailed {
		return nil
	}
	src := filepath.Join(j.root, name)
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if err := copyFile(src, dst); err != nil {
		return fmt.Errorf("copy %s out of the jail: %w", name, err)
	}
	return os.Remove(src)
}

// remove deletes the jail; without the jailer there is nothing to delete
// (the machine's directory belongs to the caller). Removing a jail that is
// gone is success.
func (j *jail) remove() error {
	if !j.jailed {
		return nil
	}
	if err := os.RemoveAll(j.base); err != nil {
		return fmt.Errorf("remove jail %s: %w", j.base, err)
	}
	return nil
}

var _ vmm.Confiner = (*Driver)(nil)

// Measures says how the driver's Firecracker processes are confined: by
// the jailer (chroot, unprivileged user, cgroup limits, seccomp filter of
// Firecracker's own), or only by Firecracker's built-in seccomp filter.
func (d *Driver) Measures() []vmm.Measure {
	c := d.cfg.Jailer
	if c == nil {
		return []vmm.Measure{{Name: "jailer", Detail: "firecracker runs as the daemon's user, unjailed, with its built-in seccomp filter: give --jailer"}}
	}
	detail := fmt.Sprintf("%s: chroot under %s, uid %d gid %d", d.jailer, c.ChrootBase, c.UID, c.GID)
	if c.CPUMax != "" || c.MemoryMax != "" {
		detail += fmt.Sprintf(", jailer cgroup cpu.max %q memory.max %q", c.CPUMax, c.MemoryMax)
	}
	return []vmm.Measure{{Name: "jailer", On: true, Detail: detail}}
}
