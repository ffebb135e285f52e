//go:build linux

package auto

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/accel/acceltest"
)

// host is what the machine under the test offers.
type host struct {
	firecracker bool   // a firecracker binary exists
	qemu        bool   // a qemu-system-x86_64 exists
	module      string // the KVM module behind /dev/kvm; "" for no /dev/kvm
	probe       string // what a probe boot under KVM does (acceltest bodies)
}

var (
	// kvmBoots is a KVM host whose KVM boots the kernel.
	kvmBoots = host{firecracker: true, qemu: true, module: "kvm_intel", probe: acceltest.Boots}
	// pvm is a PVM host, whose KVM does not boot the kernel.
	pvm = host{firecracker: true, qemu: true, module: "kvm_pvm", probe: acceltest.Aborts}
	// noKVM has no /dev/kvm at all.
	noKVM = host{firecracker: true, qemu: true, probe: acceltest.Boots}
)

func TestSelect(t *testing.T) {
	noFC := func(h host) host { h.firecracker = false; return h }
	noQEMU := func(h host) host { h.qemu = false; return h }
	for _, tc := range []struct {
		name     string
		host     host
		vmm      string
		accel    string
		want     string   // the driver chosen; "" for an error
		says     []string // in the reason or the error, in order
		gotAccel string   // the accelerator the chosen QEMU gives the kernel
	}{
		{
			name: "automatic, kvm boots the kernel", host: kvmBoots, want: "firecracker",
			says: []string{"automatic: firecracker /", "; kvm: kernel ", " boots under KVM (kvm_intel)"},
		},
		{
			name: "automatic, no firecracker", host: noFC(kvmBoots), want: "qemu", gotAccel: accel.KVM,
			says: []string{"automatic: firecracker unavailable: find firecracker binary"},
		},
		{
			name: "automatic, pvm host", host: pvm, want: "qemu", gotAccel: accel.TCG,
			says: []string{"automatic: firecracker /", " found, but tcg: /dev/kvm is PVM (kvm_pvm) and kernel ", "does not boot under it"},
		},
		{
			name: "automatic, no kvm", host: noKVM, want: "qemu", gotAccel: accel.TCG,
			says: []string{"automatic: firecracker /", " found, but tcg: no usable /dev/kvm"},
		},
		{
			name: "automatic, no qemu", host: noQEMU(kvmBoots),
			says: []string{"find qemu binary"},
		},
		{
			name: "firecracker configured", host: kvmBoots, vmm: "firecracker", want: "firecracker",
			says: []string{"configured: firecracker /", "; kvm: kernel "},
		},
		{
			name: "firecracker configured, no binary", host: noFC(kvmBoots), vmm: "firecracker",
			says: []string{"vmm firecracker: firecracker unavailable: "},
		},
		{
			name: "firecracker configured, pvm host", host: pvm, vmm: "firecracker",
			says: []string{"vmm firecracker: tcg: /dev/kvm is PVM (kvm_pvm)"},
		},
		{
			name: "qemu configured where firecracker would run", host: kvmBoots, vmm: "qemu", want: "qemu", gotAccel: accel.KVM,
			says: []string{"configured"},
		},
		{
			name: "qemu configured, no qemu", host: noQEMU(noKVM), vmm: "qemu",
			says: []string{"vmm qemu: "},
		},
		{
			name: "unknown vmm", host: kvmBoots, vmm: "xen",
			says: []string{`vmm "xen": want firecracker, qemu or empty`},
		},
		{
			name: "kvm configured where it boots", host: noFC(kvmBoots), accel: "kvm", want: "qemu", gotAccel: accel.KVM,
			says: []string{"automatic: firecracker unavailable"},
		},
		{
			name: "kvm configured on a pvm host", host: noFC(pvm), accel: "kvm",
			says: []string{"accel kvm: ", "tcg: /dev/kvm is PVM (kvm_pvm)", "failed to set MSR"},
		},
		{
			name: "kvm configured, no kvm", host: noKVM, vmm: "qemu", accel: "kvm",
			says: []string{"accel kvm: ", "no usable /dev/kvm"},
		},
		{
			name: "tcg configured where kvm boots", host: noFC(kvmBoots), accel: "tcg", want: "qemu", gotAccel: accel.TCG,
			says: []string{"automatic: firecracker unavailable"},
		},
		{
			name: "unknown accel", host: noFC(kvmBoots), accel: "hvf",
			says: []string{`use accel "hvf": unknown`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, runs := fakeHost(t, tc.host)
			cfg.VMM, cfg.Accel = tc.vmm, tc.accel
			d, reason, err := Select(t.Context(), cfg, slog.New(slog.DiscardHandler))
			said := reason
			if err != nil {
				said = err.Error()
			}
			t.Logf("%s", said)
			switch {
			case tc.want == "" && err == nil:
				t.Fatalf("chose %s (%s), want an error", d.Name(), reason)
			case tc.want != "" && err != nil:
				t.Fatalf("error %v, want %s", err, tc.want)
			case tc.want != "" && d.Name() != tc.want:
				t.Errorf("chose %s, want %s", d.Name(), tc.want)
			}
			if !inOrder(said, tc.says) {
				t.Errorf("%q does not say %q", said, tc.says)
			}
			if tc.gotAccel != "" && err == nil {
				v, err := d.AccelFor(t.Context(), cfg.Kernel)
				if err != nil {
					t.Fatal(err)
				}
				if v.Accel != tc.gotAccel {
					t.Errorf("kernel runs under %s (%s), want %s", v.Accel, v.Reason, tc.gotAccel)
				}
			}
			// The choice and the driver share the prober's verdict.
			if n := acceltest.Runs(t, runs); n > 1 {
				t.Errorf("kernel probed %d times, want at most once", n)
			}
		})
	}
}

// fakeHost returns a configuration for a host like h: its binaries are
// stand-ins (a firecracker that is never run, a QEMU whose probe boots do
// what h says) and its /dev and /sys a made-up root. runs counts the probe
// boots.
func fakeHost(t *testing.T, h host) (cfg Config, runs string) {
	t.Helper()
	dir := t.TempDir()
	cfg = Config{
		FirecrackerBinary: filepath.Join(dir, "firecracker"),
		QEMUBinary:        filepath.Join(dir, "no-qemu"),
		CacheDir:          t.TempDir(),
		Kernel:            filepath.Join(dir, "vmlinux"),
		HostRoot:          acceltest.Host(t, h.module),
		ProbeTimeout:      2 * time.Second,
	}
	if h.module == "" {
		if err := os.Remove(filepath.Join(cfg.HostRoot, "dev/kvm")); err != nil {
			t.Fatal(err)
		}
	}
	if h.firecracker {
		if err := os.WriteFile(cfg.FirecrackerBinary, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runs = filepath.Join(dir, "no-runs")
	if h.qemu {
		cfg.QEMUBinary, runs = acceltest.QEMU(t, h.probe)
	}
	if err := os.WriteFile(cfg.Kernel, []byte("a kernel for "+t.Name()), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg, runs
}

// inOrder reports whether s holds each of parts, one after the other.
func inOrder(s string, parts []string) bool {
	for _, p := range parts {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return true
}
