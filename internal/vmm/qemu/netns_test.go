//go:build linux

package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/netns"
	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// TestStartInNetns starts a real QEMU inside a namespace holding a TAP, as
// a sandbox's slot does, and checks that QEMU lives in that namespace and
// has the TAP open.
func TestStartInNetns(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	nsPath := testNetns(t, fmt.Sprintf("ember-qemutest-%d", os.Getpid()))
	const tap = "tap0"
	testTAP(t, nsPath, tap)

	d, err := New(Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk, err := rootfscopy.New(slog.New(slog.DiscardHandler)).Prepare(t.Context(), "netns", dir, guest.Rootfs, 0)
	if err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{
		ID: "netns", Dir: dir, Kernel: guest.Kernel, RootDisk: disk.Path, DiskFormat: disk.Format,
		Netns: nsPath, TAP: tap, MAC: "06:00:ac:10:00:02",
	}
	m, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })

	expectVMMInNetns(t, m, nsPath, tap)
	if err := m.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreNetwork restores a guest saved in one slot (namespace, TAP,
// MAC) into another, as a resume does, and checks that QEMU runs in the
// new namespace with its TAP, the guest carries on, and which MAC address
// the guest has afterwards: the snapshot's. virtio-net's migrated state
// carries the MAC, and the guest's driver keeps the address it read at
// boot, whatever the new command line says.
func TestRestoreNetwork(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	const tap, macA, macB = "tap0", "06:00:ac:10:00:02", "06:00:ac:10:00:03"
	nsA := testNetns(t, fmt.Sprintf("ember-qemutest-%d-a", os.Getpid()))
	nsB := testNetns(t, fmt.Sprintf("ember-qemutest-%d-b", os.Getpid()))
	testTAP(t, nsA, tap)
	testTAP(t, nsB, tap)
	d, err := New(Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	spec := vmmtest.CounterSpec(t, guest)
	spec.Netns, spec.TAP, spec.MAC = nsA, tap, macA
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	saved := waitMAC(t, m, spec)
	if saved.MAC != macA {
		t.Fatalf("guest booted with MAC %q, want %s", saved.MAC, macA)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := t.TempDir()
	if err := m.(*Machine).Snapshot(ctx, snap, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	spec.Netns, spec.MAC = nsB, macB
	r, err := d.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	expectVMMInNetns(t, r, nsB, tap)
	after := waitMAC(t, r, spec)
	if after.N <= saved.N {
		t.Errorf("restored guest counts from %d, the saved one had reached %d", after.N, saved.N)
	}
	t.Logf("guest MAC before the snapshot %s, after a restore with mac=%s on the command line: %s", saved.MAC, macB, after.MAC)
	if after.MAC != macA {
		t.Errorf("restored guest has MAC %s, want the snapshot's %s", after.MAC, macA)
	}
}

// waitMAC waits for a counter tick that carries the guest's MAC address.
func waitMAC(t *testing.T, m vmm.Machine, spec vmm.Spec) vmmtest.Tick {
	t.Helper()
	for n := 1; ; n++ {
		ts := vmmtest.WaitTick(t, m, spec, n)
		if last := ts[len(ts)-1]; last.MAC != "" {
			return last
		}
		n = ts[len(ts)-1].N
	}
}

// testTAP creates a TAP device, up, in the namespace at nsPath; it goes
// away with the namespace.
func testTAP(t *testing.T, nsPath, name string) {
	t.Helper()
	err := netns.Do(nsPath, func() error {
		link := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		}
		if err := netlink.LinkAdd(link); err != nil {
			return err
		}
		return netlink.LinkSetUp(link)
	})
	if err != nil {
		t.Fatalf("create tap %s in %s: %v", name, nsPath, err)
	}
}

// expectVMMInNetns checks that the machine's process lives in the
// namespace at nsPath and holds its TAP open.
func expectVMMInNetns(t *testing.T, m vmm.Machine, nsPath, tap string) {
	t.Helper()
	if got, want := nsInode(t, fmt.Sprintf("/proc/%d/ns/net", m.PID())), nsInode(t, nsPath); got != want {
		t.Errorf("qemu is in netns inode %d, want %d", got, want)
	}
	err := netns.Do(nsPath, func() error {
		link, err := netlink.LinkByName(tap)
		if err != nil {
			return err
		}
		// A TAP has carrier once a process has its queue open.
		if link.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
			return fmt.Errorf("%s has no carrier: qemu did not open it", tap)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// testNetns creates a named network namespace, removed with its devices
// when the test ends, and returns its path.
func testNetns(t *testing.T, name string) string {
	t.Helper()
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return netns.Path(name)
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}
