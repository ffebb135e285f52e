package doctor

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/rootfs/devmapper"
	"github.com/emberhq/ember/internal/rootfs/reflink"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/qemu"
)

// TestThisHost runs the checks on the machine the tests run on and holds
// each finding to what the packages the daemon uses say about it, read
// here independently: on the development machines that is a PVM
// /dev/kvm that does not boot ember's kernel, no device-mapper and no
// reflink on /.
func TestThisHost(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	ctx := context.Background()
	prober := qemu.NewProber("qemu-system-x86_64", "", 0, slog.New(slog.DiscardHandler))

	// A port the test holds: the port check must find it taken.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dataDir := filepath.Join(t.TempDir(), "data")
	doc := fmt.Sprintf("data-dir = %q\ntemplate-dir = %q\nlisten = %q\n", dataDir, filepath.Dir(filepath.Dir(guest.Kernel)), ln.Addr())
	cfg, err := config.Parse("ember.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(ctx, cfg, System{Prober: prober}, Options{Starting: true})
	for _, c := range rep.Checks {
		t.Logf("%-5s %-12s %s", c.Status, c.Name, c.Finding)
	}
	get := func(name string) Check {
		c, ok := rep.Get(name)
		if !ok {
			t.Fatalf("no %s check", name)
		}
		return c
	}

	if c := get("root"); c.Status != OK {
		t.Errorf("root: %+v", c)
	}
	v, err := prober.Choose(ctx, guest.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	kvm := get("kvm")
	if !strings.Contains(kvm.Finding, v.Reason) || (v.Accel == accel.KVM) != (kvm.Status == OK) {
		t.Errorf("kvm: %s %q; the probe says %s", kvm.Status, kvm.Finding, v.Reason)
	}
	if h := accel.ReadHost(""); h.Kind == accel.KindPVM && (!strings.Contains(kvm.Finding, "PVM (kvm_pvm)") || v.Accel == accel.TCG && !strings.Contains(kvm.Fix, "PVM guest")) {
		t.Errorf("kvm on a PVM host: %q (fix %q)", kvm.Finding, kvm.Fix)
	}

	disk := get("disk")
	if err := devmapper.Available(); err != nil && !strings.Contains(disk.Finding, "passed over devmapper: "+err.Error()) {
		t.Errorf("disk does not say devmapper is missing (%v): %q", err, disk.Finding)
	}
	parent := filepath.Dir(dataDir)
	if err := reflink.Supported(parent); err != nil && !strings.Contains(disk.Finding, "reflink: "+parent+" cannot clone files") {
		t.Errorf("disk does not say %s cannot reflink (%v): %q", parent, err, disk.Finding)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("the checks made the data directory: %v", err)
	}

	if port := get("port"); port.Status != Fail || !strings.Contains(port.Finding, "address already in use") {
		t.Errorf("port held by the test: %+v", port)
	}
	fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if c := get("ip-forward"); (strings.TrimSpace(string(fwd)) == "1") != (c.Status == OK) {
		t.Errorf("ip-forward is %q, the check says %+v", fwd, c)
	}
	if c := get("qemu"); c.Status == Fail {
		t.Errorf("qemu: %+v", c)
	}
	if c := get("nftables"); c.Status != OK {
		t.Errorf("nftables: %+v", c)
	}
	if rep.CanServe {
		t.Error("can serve with its port taken")
	}
}
