//go:build linux

package qemu

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// procAttr is how QEMU is started: as the configured user with no
// supplementary groups and, to chroot, CAP_SYS_CHROOT as its only
// capability; nil runs it as the daemon's user.
func (c *Confinement) procAttr() *syscall.SysProcAttr {
	if !c.unprivileged() {
		return nil
	}
	attr := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: []uint32{}}}
	if c.Chroot {
		attr.AmbientCaps = []uintptr{unix.CAP_SYS_CHROOT}
	}
	return attr
}
