// Package accel decides which accelerator runs a guest kernel. "KVM usable"
// means "this kernel boots under it": /dev/kvm opening is not enough, since a
// PVM host (kvm_pvm, KVM without hardware virtualization) serves /dev/kvm but
// boots only kernels built as PVM guests. A Prober answers per kernel with a
// bounded probe boot under KVM that must reach the end of the guest kernel's
// start-up, and keeps each verdict on disk keyed by the kernel's hash and the
// host's KVM identity, so a kernel is probed once per host.
package accel

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Accelerators.
const (
	KVM = "kvm"
	TCG = "tcg"
)

// KVM flavours a host can serve /dev/kvm with, by the module that provides it.
const (
	KindPVM   = "pvm"   // kvm_pvm: KVM without hardware virtualization
	KindIntel = "intel" // kvm_intel: VMX
	KindAMD   = "amd"   // kvm_amd: SVM
	KindOther = "kvm"   // built into the kernel, or a module we do not know
)

// Host is what a host offers a guest kernel, read from its /dev and /sys.
type Host struct {
	// KVM is true when /dev/kvm opens read-write; Err says why not when
	// false.
	KVM bool
	Err error
	// Kind names the KVM flavour (one of the Kind constants) and Module the
	// kernel module behind it, when KVM is true.
	Kind   string
	Module string
	// Release is the host kernel's release (uname -r).
	Release string
	// CPU is the host CPU's model name.
	CPU string
}

// kvmModules are the modules that serve /dev/kvm, most specific first: a
// PVM host has kvm_pvm beside (or instead of) a hardware module.
var kvmModules = []struct{ module, kind string }{
	{"kvm_pvm", KindPVM},
	{"kvm_intel", KindIntel},
	{"kvm_amd", KindAMD},
}

// ReadHost reads the host under root ("" or "/" for this machine; tests pass
// a directory holding dev/kvm and sys/module/...).
func ReadHost(root string) Host {
	if root == "" {
		root = "/"
	}
	var h Host
	kvm := filepath.Join(root, "dev/kvm")
	fd, err := unix.Open(kvm, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		h.Err = fmt.Errorf("open /dev/kvm: %w", err)
	} else {
		unix.Close(fd)
		h.KVM = true
		h.Kind = KindOther
		for _, m := range kvmModules {
			if _, err := os.Stat(filepath.Join(root, "sys/module", m.module)); err == nil {
				h.Kind, h.Module = m.kind, m.module
				break
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "proc/sys/kernel/osrelease")); err == nil {
		h.Release = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(root, "proc/cpuinfo")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return h
}

// Describe names the host's KVM in a few words: "PVM (kvm_pvm)",
// "KVM (kvm_intel)" or why there is none.
func (h Host) Describe() string {
	switch {
	case !h.KVM:
		if h.Err != nil {
			return "no usable /dev/kvm (" + h.Err.Error() + ")"
		}
		return "no usable /dev/kvm"
	case h.Kind == KindPVM:
		return "PVM (" + h.Module + ")"
	case h.Module != "":
		return "KVM (" + h.Module + ")"
	}
	return "KVM"
}

// ID identifies the host's KVM for the verdict cache: a verdict holds only
// on a host with the same KVM flavour, host kernel, CPU and QEMU build.
func (h Host) ID(qemuVersion string) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{h.Kind, h.Module, h.Release, h.CPU, qemuVersion}, "\x00")))
	return hex.EncodeToString(sum[:])
}

// DefaultCacheDir is where verdicts live unless configured: ember's cache
// (EMBER_CACHE_DIR, else /var/cache/ember), beside the kernels it builds.
func DefaultCacheDir() string {
	if d := os.Getenv("EMBER_CACHE_DIR"); d != "" {
		return d
	}
	return "/var/cache/ember"
}
