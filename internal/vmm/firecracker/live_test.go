//go:build linux

package firecracker

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/network"
	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/qemu"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// liveSlotIndex is the network slot the kvm-live tier uses (the VM tier's
// range).
const liveSlotIndex = 3900

// TestLive is the kvm-live tier: the whole vmm conformance suite on a real
// Firecracker, then a guest in a network slot that runs a command through
// the agent, is paused and snapshotted, stopped, restored in a fresh
// process with its memory served by the page server, and runs a command
// again. It needs /dev/kvm where KVM boots the guest kernel (the probe's
// verdict) and a firecracker binary (EMBER_FIRECRACKER or PATH).
func TestLive(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	log := slog.New(slog.DiscardHandler)
	// The daemon's own choice: the probe's verdict for the guest kernel.
	prober := qemu.NewProber("qemu-system-x86_64", "", 0, log)
	v, err := prober.Choose(t.Context(), guest.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	testutil.RequireKVM(t, v)
	bin := os.Getenv("EMBER_FIRECRACKER")
	if ok, reason := Available(Config{Binary: bin}); !ok {
		// Not a missing install step: most hosts have no Firecracker.
		t.Skip("kvm-live tier: " + reason)
	}
	newDriver := func(t testing.TB) *Driver {
		d, err := New(Config{Binary: bin, TrackDirtyPages: true, Prober: prober}, log)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	vmmtest.Run(t, vmmtest.Suite{New: func(t testing.TB) vmm.Driver { return newDriver(t) }, Boot: true})
	t.Run("Network", func(t *testing.T) { runLiveNetwork(t, newDriver(t), guest) })
}

// runLiveNetwork boots guest in a network slot of its own and checks the
// agent answers over it, before a snapshot and after the restore.
func runLiveNetwork(t *testing.T, d *Driver, guest testutil.GuestImage) {
	log := slog.New(slog.DiscardHandler)
	ctx := t.Context()
	pool, err := network.NewPool(network.Config{FirstIndex: liveSlotIndex, PoolSize: 1, NoEgress: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Close() })
	slot, err := pool.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Return(context.Background(), slot) })

	dir, err := os.MkdirTemp("", "fc-live-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	disk, err := rootfscopy.New(log).Prepare(ctx, "fc-live", dir, guest.Rootfs, 0)
	if err != nil {
		t.Fatal(err)
	}
	spec := vmm.Spec{
		ID: "fc-live", Dir: dir, Kernel: guest.Kernel, RootDisk: disk.Path, DiskFormat: disk.Format,
		Netns: slot.NetnsPath, TAP: slot.TAP, MAC: slot.GuestMAC, BootArgs: slot.BootArgs(),
		VCPUs: 1, MemoryMiB: 256,
	}
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	client := agent.New("http://"+net.JoinHostPort(slot.HostAddr.String(), strconv.Itoa(agent.Port)), "", nil)
	run := func(want string) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		if err := client.WaitReady(rctx); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		st, err := client.Exec(rctx, agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo " + want}}, &out, &out)
		if err != nil || st.Code != 0 || out.String() != want+"\n" {
			t.Fatalf("exec: %v, %+v, %q; want %q", err, st, out.String(), want)
		}
	}
	run("before")

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "snapshot")
	if err := os.Mkdir(snap, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.(vmm.Snapshotter).Snapshot(ctx, snap, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	r, err := d.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(context.Background()) })
	run("after")
	t.Logf("restore to first exec: %s", time.Since(begin))
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
