//go:build linux

package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/network"
	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
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
	err := network.Do(nsPath, func() error {
		link := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: tap},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		}
		if err := netlink.LinkAdd(link); err != nil {
			return err
		}
		return netlink.LinkSetUp(link)
	})
	if err != nil {
		t.Fatalf("create tap: %v", err)
	}

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

	if got, want := nsInode(t, fmt.Sprintf("/proc/%d/ns/net", m.PID())), nsInode(t, nsPath); got != want {
		t.Errorf("qemu is in netns inode %d, want %d", got, want)
	}
	err = network.Do(nsPath, func() error {
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
	if err := m.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// testNetns creates a named network namespace, removed with its devices
// when the test ends, and returns its path.
func testNetns(t *testing.T, name string) string {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the thread into the new namespace; the thread
		// goes back, or is never unlocked and so retired.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return filepath.Join("/run/netns", name)
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}
