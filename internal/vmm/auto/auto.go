//go:build linux

// Package auto picks the VMM driver for this host: Firecracker where its
// binary exists and the accelerator probe finds that KVM boots the kernel
// the choice is made for (the default template's), QEMU otherwise, which
// then runs each kernel under KVM or TCG by the same probe's verdicts.
// Configuration can name either driver, and QEMU's accelerator. It lives
// apart from package vmm because it imports every driver, as rootfs/auto
// does every disk backend.
package auto

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"time"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/firecracker"
	"github.com/emberhq/ember/internal/vmm/qemu"
)

// Driver is what the daemon needs of a VMM driver.
type Driver interface {
	vmm.Driver
	vmm.Restorer
	vmm.Accelerator
}

var (
	_ Driver = (*qemu.Driver)(nil)
	_ Driver = (*firecracker.Driver)(nil)
)

// Config is the daemon's VMM configuration. VMM and Accel are its --vmm
// and --accel flags, and Select's errors name them so.
type Config struct {
	// VMM is "firecracker", "qemu" or "" (automatic).
	VMM string
	// Accel is QEMU's accelerator: "kvm", "tcg" or "" (per kernel: KVM
	// where a probe boot shows it runs the kernel). "kvm" where the probe
	// finds KVM does not boot Kernel is an error.
	Accel string
	// FirecrackerBinary is the firecracker executable; "" means
	// firecracker on PATH.
	FirecrackerBinary string
	// QEMUBinary is the QEMU executable, which also runs the probe boots;
	// "" means qemu-system-x86_64 on PATH.
	QEMUBinary string
	// CacheDir holds the probe's verdicts; "" means accel.DefaultCacheDir().
	CacheDir string
	// Kernel is the guest kernel the choice is made for: the default
	// template's.
	Kernel string
	// HostRoot is where the probe reads the host's /dev and /sys; "" is
	// this machine (tests pass a made-up one).
	HostRoot string
	// ProbeTimeout bounds a probe boot; 0 means accel.DefaultTimeout.
	ProbeTimeout time.Duration
	// Prober, when set, is the prober the daemon's host checks share, so
	// a kernel is probed once for them, the choice and the driver; the
	// fields above that configure one are then unused.
	Prober *accel.Prober

	// QEMUConfine confines QEMU (nil: unconfined); Jailer runs
	// Firecracker through its jailer (nil: directly).
	QEMUConfine *qemu.Confinement
	Jailer      *firecracker.JailerConfig
	// Helper is the ember binary, which runs Firecracker's page servers
	// (firecracker.Config.PageServer) and QEMU's memory copies
	// (qemu.Config.Helper) as processes of their own.
	Helper []string
}

// Select returns the driver cfg and this host call for, and why: a reason
// that starts "automatic: " or "configured". Firecracker and QEMU share
// one prober, so a kernel is probed once for the choice and the driver.
func Select(ctx context.Context, cfg Config, log *slog.Logger) (Driver, string, error) {
	d, reason, err := choose(ctx, cfg, log)
	if err != nil {
		return nil, "", err
	}
	log.Info("vmm selected", "vmm", d.Name(), "reason", reason)
	return d, reason, nil
}

func choose(ctx context.Context, cfg Config, log *slog.Logger) (Driver, string, error) {
	qemuBin, qerr := exec.LookPath(cmp.Or(cfg.QEMUBinary, "qemu-system-x86_64"))
	prober := cfg.Prober
	if prober == nil && qerr == nil {
		prober = qemu.NewProber(qemuBin, cfg.CacheDir, cfg.ProbeTimeout, log)
		prober.Root = cfg.HostRoot
	}
	fcCfg := firecracker.Config{Binary: cfg.FirecrackerBinary, Prober: prober, Jailer: cfg.Jailer, PageServer: cfg.Helper}
	fcOK, fcWhy := firecracker.Available(fcCfg)
	useQEMU := func(why string) (Driver, string, error) {
		d, err := qemu.New(qemu.Config{Binary: cfg.QEMUBinary, Accel: cfg.Accel, Prober: prober, Confine: cfg.QEMUConfine, Helper: cfg.Helper}, log)
		if err != nil {
			return nil, "", err
		}
		if _, err := d.AccelFor(ctx, cfg.Kernel); err != nil {
			return nil, "", fmt.Errorf("accel %s: %w", cfg.Accel, err)
		}
		return d, why, nil
	}
	useFC := func(why string) (Driver, string, error) {
		d, err := firecracker.New(fcCfg, log)
		if err != nil {
			return nil, "", err
		}
		return d, why, nil
	}
	// kvmBoots says whether the probe finds that KVM boots the kernel.
	kvmBoots := func() (bool, string, error) { return prober.KVMBoots(ctx, cfg.Kernel) }
	name, why, err := vmm.Choose(cfg.VMM, fcOK, fcWhy, kvmBoots)
	if err != nil {
		return nil, "", err
	}
	switch {
	case name == "firecracker":
		return useFC(why)
	case cfg.VMM == "qemu" && qerr != nil:
		return nil, "", fmt.Errorf("vmm qemu: %w", qerr)
	}
	return useQEMU(why)
}

// DiskFormats returns the disk formats the driver called name opens, as
// the driver states them (vmm.DiskFormats), for a caller that has chosen a
// driver by name without making one (`ember doctor`); nil for a name that
// is no driver.
func DiskFormats(name string) []string {
	switch name {
	case "qemu":
		return (*qemu.Driver)(nil).DiskFormats()
	case "firecracker":
		return (*firecracker.Driver)(nil).DiskFormats()
	}
	return nil
}
