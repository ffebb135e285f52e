//go:build linux

package main

import (
	"fmt"
	"os/user"
	"strconv"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/firecracker"
	"github.com/emberhq/ember/internal/vmm/qemu"
)

// confineFlags confine the VMMs: QEMU's user, seccomp filter and chroot,
// and Firecracker's jailer.
type confineFlags struct {
	user    string
	seccomp bool
	chroot  bool

	jailer     string
	chrootBase string
	cpuMax     string
	memoryMax  string
}

// confineOf reads the confinement settings.
func confineOf(f config.Serve) confineFlags {
	return confineFlags{user: f.VMMUser, seccomp: f.VMMSeccomp, chroot: f.VMMChroot,
		jailer: f.Jailer, chrootBase: f.JailerChrootBase, cpuMax: f.JailerCPUMax, memoryMax: f.JailerMemoryMax}
}

// vmmUser resolves --vmm-user: nil for root.
func (c *confineFlags) vmmUser() (*user.User, uint32, uint32, error) {
	if c.user == "" || c.user == "root" {
		return nil, 0, 0, nil
	}
	u, err := user.Lookup(c.user)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("--vmm-user %s: %w (create it with `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s`, as `make deps` does, or pass --vmm-user root to run QEMU as root)", c.user, err, c.user)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, 0, 0, fmt.Errorf("--vmm-user %s: uid %q or gid %q is not a number", c.user, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, 0, 0, nil
	}
	return u, uint32(uid), uint32(gid), nil
}

// qemu returns QEMU's confinement.
func (c *confineFlags) qemu() (*qemu.Confinement, error) {
	u, uid, gid, err := c.vmmUser()
	if err != nil {
		return nil, err
	}
	qc := &qemu.Confinement{Seccomp: c.seccomp, Chroot: c.chroot}
	if u != nil {
		qc.UID, qc.GID, qc.User = uid, gid, u.Username
	}
	return qc, nil
}

// firecracker returns the jailer's configuration, nil without --jailer.
func (c *confineFlags) firecracker() (*firecracker.JailerConfig, error) {
	if c.jailer == "" {
		return nil, nil
	}
	u, uid, gid, err := c.vmmUser()
	if err != nil {
		return nil, err
	}
	if u == nil {
		return nil, fmt.Errorf("--jailer needs an unprivileged --vmm-user, not %q", c.user)
	}
	return &firecracker.JailerConfig{Binary: c.jailer, ChrootBase: c.chrootBase, UID: int(uid), GID: int(gid),
		CPUMax: c.cpuMax, MemoryMax: c.memoryMax}, nil
}

// confinement is how the driver's VMMs are confined, for `ember info`.
func confinement(d vmm.Driver) []client.Confinement {
	m, ok := d.(vmm.Confiner)
	if !ok {
		return []client.Confinement{{Name: "vmm", Detail: d.Name() + " reports no confinement"}}
	}
	var out []client.Confinement
	for _, x := range m.Measures() {
		out = append(out, client.Confinement{Name: x.Name, On: x.On, Detail: x.Detail})
	}
	return out
}
