package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/memory/uffd"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/firecracker"
)

// System is this machine, read through the packages the daemon uses: the
// accelerator probe, the disk backends' own availability checks, the
// network package's uplink resolution, nftables and userfaultfd.
type System struct {
	// Prober is the daemon's accelerator prober (shared, so a kernel is
	// probed once); nil when there is no QEMU to probe with.
	Prober *accel.Prober
}

var _ Host = System{}

// Euid returns the process's effective user id.
func (System) Euid() int { return os.Geteuid() }

// ReadFile reads path.
func (System) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

// LookPath is exec.LookPath.
func (System) LookPath(file string) (string, error) { return exec.LookPath(file) }

// Output runs name and returns its standard output.
func (System) Output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("run %s: %w", name, err)
	}
	return string(out), nil
}

// KVM describes /dev/kvm as the prober sees it.
func (s System) KVM() accel.Host {
	if s.Prober != nil {
		return s.Prober.Host()
	}
	return accel.ReadHost("")
}

// Accel is the prober's verdict for kernel.
func (s System) Accel(ctx context.Context, kernel string) (accel.Verdict, error) {
	if s.Prober == nil {
		h := accel.ReadHost("")
		return accel.Verdict{Accel: accel.TCG, Reason: "tcg: no qemu-system-x86_64 to probe " + h.Describe() + " with"}, nil
	}
	return s.Prober.Choose(ctx, kernel)
}

// Template looks name up in the registry at dir.
func (System) Template(dir, name string) (template.Template, error) {
	return template.Registry{Dir: dir}.Get(name)
}

// Firecracker is firecracker.Available.
func (System) Firecracker(binary string) (bool, string) {
	return firecracker.Available(firecracker.Config{Binary: binary})
}

// Disks probes the backends for dataDir, or for its nearest existing parent
// when it does not exist yet (the daemon creates it on that filesystem).
func (System) Disks(dataDir string) []auto.Availability {
	dir, err := existing(dataDir)
	if err != nil {
		return []auto.Availability{{Name: "copy", Err: err}}
	}
	return auto.Probe(dir)
}

// Space reads the filesystem holding path, or its nearest existing parent.
func (System) Space(path string) (Space, error) {
	dir, err := existing(path)
	if err != nil {
		return Space{}, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Space{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return Space{Total: st.Blocks * uint64(st.Bsize), Free: st.Bavail * uint64(st.Bsize), Type: fsType(st.Type)}, nil
}

// existing returns path or its nearest existing parent.
func existing(path string) (string, error) {
	p := filepath.Clean(path)
	for {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", fmt.Errorf("no existing directory above %s", path)
		}
		p = parent
	}
}

// fsType names the filesystems ember's checks care about.
func fsType(magic int64) string {
	switch magic {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	}
	return ""
}

// Uplink is network.ResolveUplink.
func (System) Uplink(name string) (string, error) { return network.ResolveUplink(name) }

// NFTables is network.CheckNFTables.
func (System) NFTables() error { return network.CheckNFTables() }

// Userfaultfd is uffd.Available.
func (System) Userfaultfd() error { return uffd.Available() }

// Listen binds addr over TCP and closes it.
func (System) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// Locked is fsutil.Held.
func (System) Locked(lockFile string) bool { return fsutil.Held(lockFile) }
