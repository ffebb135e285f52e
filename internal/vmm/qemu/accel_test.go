//go:build linux

package qemu

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm/accel"
)

// TestProbeSeesStartupEnd boots the default template's kernel the way a
// probe does, under TCG, on a host root that claims a /dev/kvm: the probe
// must recognise the end of a real start-up on the console (otherwise every
// KVM host would fall back to TCG).
func TestProbeSeesStartupEnd(t *testing.T) {
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	if err := os.WriteFile(filepath.Join(root, "dev/kvm"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p := NewProber("qemu-system-x86_64", t.TempDir(), 0, slog.New(slog.DiscardHandler))
	p.Root = root
	p.Args = func(_, kernel string) []string { return probeArgs(AccelTCG, kernel) }
	// TCG is slower than the KVM the bound is made for.
	p.Timeout = 60 * accel.DefaultTimeout
	v, err := p.Choose(t.Context(), guest.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if v.Accel != accel.KVM {
		t.Fatalf("probe of a kernel that boots: %s\noutput:\n%s", v.Reason, v.Output)
	}
	t.Logf("%s (%.0f ms under TCG)", v.Reason, v.ProbeMS)
}

// TestAccelOnThisHost asks the driver which accelerator the default
// template's kernel gets here. On a PVM host (this project's CI machines)
// the kernel does not boot under KVM: the verdict is TCG and says why.
func TestAccelOnThisHost(t *testing.T) {
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	d, err := New(Config{ProbeCache: t.TempDir()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	v, err := d.AccelFor(t.Context(), guest.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host %s: %s", d.Prober().Host().Describe(), v.Reason)
	h := d.Prober().Host()
	switch {
	case h.Kind == accel.KindPVM:
		if v.Accel != AccelTCG || !strings.Contains(v.Reason, "/dev/kvm is PVM (kvm_pvm) and kernel "+v.ShortKernel()+" does not boot under it") {
			t.Errorf("PVM host: verdict %q", v.Reason)
		}
		if d.Prober().Probes() != 1 {
			t.Errorf("%d probes, want 1", d.Prober().Probes())
		}
		// Insisting on KVM is refused with the probe's reason.
		kvm, err := New(Config{Accel: AccelKVM, Prober: d.Prober()}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kvm.AccelFor(t.Context(), guest.Kernel); err == nil || !strings.Contains(err.Error(), "PVM") {
			t.Errorf("accel kvm on a PVM host: %v, want a refusal naming PVM", err)
		}
		if d.Prober().Probes() != 1 {
			t.Errorf("the verdict was not reused: %d probes", d.Prober().Probes())
		}
	case !h.KVM:
		if v.Accel != AccelTCG || !strings.Contains(v.Reason, "no usable /dev/kvm") {
			t.Errorf("host without KVM: verdict %q", v.Reason)
		}
	}
}
