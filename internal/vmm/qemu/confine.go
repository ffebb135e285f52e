package qemu

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/emberhq/ember/internal/vmm"
)

// Confinement confines the QEMU of every machine the driver starts or
// restores, as Firecracker's jailer confines Firecracker: QEMU runs as an
// unprivileged user, under its seccomp filter, chrooted into an empty
// directory once it has opened what it needs. Everything it would open by
// path under a directory only root may enter (disk, TAP, console log,
// control socket, kernel) is opened by the daemon and handed over as a
// descriptor, whether confined or not, so a confined QEMU differs only in
// who it runs as. The accelerator probe boot is not confined: it boots no
// guest a user chose, with no disk and no network.
type Confinement struct {
	// UID and GID run QEMU; both zero leaves it root.
	UID, GID uint32
	// User names UID for messages ("ember-vmm").
	User string
	// Seccomp turns on QEMU's system call filter with every optional
	// set denied: obsolete calls, privilege changes, spawning processes,
	// resource control.
	Seccomp bool
	// Chroot has QEMU chroot into an empty, read-only directory of the
	// machine just before the guest runs. QEMU as an unprivileged user
	// needs CAP_SYS_CHROOT for that, and keeps it; in a root it cannot
	// write and that holds no directory, there is nothing to chroot into
	// that leads out.
	Chroot bool
}

// sandboxArg is QEMU's seccomp filter with every optional set denied.
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// chrootName is the empty directory a confined QEMU is chrooted into,
// inside the machine's directory.
const chrootName = "vmm-root"

// unprivileged reports whether QEMU runs as a user other than root.
func (c *Confinement) unprivileged() bool { return c != nil && (c.UID != 0 || c.GID != 0) }

// Measure is one measure confining QEMU.
type Measure = vmm.Measure

var _ vmm.Confiner = (*Driver)(nil)

// Measures says which measures confine the driver's QEMU processes.
func (d *Driver) Measures() []Measure {
	c := d.confine
	if c == nil {
		c = &Confinement{}
	}
	user := Measure{Name: "user", Detail: "qemu runs as root: no --vmm-user configured"}
	if c.unprivileged() {
		user = Measure{Name: "user", On: true, Detail: fmt.Sprintf("qemu runs as %s (uid %d, gid %d, no supplementary groups); the daemon opens its disk, tap, console and qmp socket and hands them over", c.User, c.UID, c.GID)}
	}
	sec := Measure{Name: "seccomp", Detail: "off by configuration (--vmm-seccomp=false)"}
	if c.Seccomp {
		sec = Measure{Name: "seccomp", On: true, Detail: "-sandbox " + sandboxArg}
	}
	root := Measure{Name: "chroot", Detail: "off by configuration (--vmm-chroot=false)"}
	switch {
	case c.Chroot && c.unprivileged():
		root = Measure{Name: "chroot", On: true, Detail: "an empty read-only directory of the sandbox (" + chrootName + "), with CAP_SYS_CHROOT as qemu's only capability"}
	case c.Chroot:
		root = Measure{Name: "chroot", On: true, Detail: "an empty read-only directory of the sandbox (" + chrootName + "); qemu stays root"}
	}
	return []Measure{sec, user, root}
}

// qcow2Backing returns the backing file an overlay's header names, or ""
// when it has none. A confined QEMU cannot open it by that name: the
// daemon opens and hands it over too.
func qcow2Backing(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := make([]byte, 20)
	if _, err := io.ReadFull(f, h); err != nil {
		return "", fmt.Errorf("read qcow2 header of %s: %w", path, err)
	}
	be := binary.BigEndian
	if be.Uint32(h[0:]) != 0x514649fb {
		return "", fmt.Errorf("%s is not a qcow2 image", path)
	}
	off, n := be.Uint64(h[8:]), be.Uint32(h[16:])
	if off == 0 || n == 0 {
		return "", nil
	}
	if n > 1023 {
		return "", fmt.Errorf("qcow2 header of %s: backing file name of %d bytes", path, n)
	}
	name := make([]byte, n)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("read backing file name of %s: %w", path, err)
	}
	return string(name), nil
}

// handed are the descriptor numbers, inside QEMU, of what the daemon
// opened for it; -1 where nothing was handed.
type handed struct {
	kernel int
	// disk and diskRO are the root disk opened read-write and read-only:
	// QEMU's block layer reopens an image read-only at times (probing,
	// permission changes), and takes from the set the descriptor whose
	// access mode matches.
	disk, diskRO, backing int
	console, qmp, tap     int
	root                  int
	// ram is the saved memory file a restored guest's RAM maps privately
	// (see private.go).
	ram int
}

// noneHanded is a handed with nothing in it.
var noneHanded = handed{kernel: -1, disk: -1, diskRO: -1, backing: -1, console: -1, qmp: -1, tap: -1, root: -1, ram: -1}

// Descriptor sets of -add-fd.
const (
	fdsetDisk    = 1
	fdsetBacking = 2
	fdsetConsole = 3
)

func fdPath(fd int) string     { return "/proc/self/fd/" + strconv.Itoa(fd) }
func fdsetPath(set int) string { return "/dev/fdset/" + strconv.Itoa(set) }

func addFD(fd, set int) []string {
	return []string{"-add-fd", "fd=" + strconv.Itoa(fd) + ",set=" + strconv.Itoa(set)}
}
