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

// vmmUser resolves --vmm-user: nil for root.
func vmmUser(f config.Serve) (*user.User, uint32, uint32, error) {
	if f.VMMUser == "" || f.VMMUser == "root" {
		return nil, 0, 0, nil
	}
	u, err := user.Lookup(f.VMMUser)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("--vmm-user %s: %w (create it with `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s`, as `make deps` does, or pass --vmm-user root to run QEMU as root)", f.VMMUser, err, f.VMMUser)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, 0, 0, fmt.Errorf("--vmm-user %s: uid %q or gid %q is not a number", f.VMMUser, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, 0, 0, nil
	}
	return u, uint32(uid), uint32(gid), nil
}

// qemuConfinement returns QEMU's confinement.
func qemuConfinement(f config.Serve) (*qemu.Confinement, error) {
	u, uid, gid, err := vmmUser(f)
	if err != nil {
		return nil, err
	}
	qc := &qemu.Confinement{Seccomp: f.VMMSeccomp, Chroot: f.VMMChroot}
	if u != nil {
		qc.UID, qc.GID, qc.User = uid, gid, u.Username
	}
	return qc, nil
}

// jailerConfig returns the jailer's configuration, nil without --jailer.
func jailerConfig(f config.Serve) (*firecracker.JailerConfig, error) {
	if f.Jailer == "" {
		return nil, nil
	}
	u, uid, gid, err := vmmUser(f)
	if err != nil {
		return nil, err
	}
	if u == nil {
		return nil, fmt.Errorf("--jailer needs an unprivileged --vmm-user, not %q", f.VMMUser)
	}
	return &firecracker.JailerConfig{Binary: f.Jailer, ChrootBase: f.JailerChrootBase, UID: int(uid), GID: int(gid),
		CPUMax: f.JailerCPUMax, MemoryMax: f.JailerMemoryMax}, nil
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
