//go:build linux

package network

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// The egress test's stand-in for the internet: a namespace of its own, wired
// to the host by a veth that serves as the pools' uplink. Its addresses come
// from 198.18.0.0/15 (benchmarking space); the host routes only the one far
// address there, so no test packet can go anywhere else.
const (
	testUplinkPrefix = "embtup"
	testOutsideNetns = "embertest-outside"
)

var (
	uplinkHostAddr    = netip.MustParseAddr("198.18.0.1")
	uplinkOutsideAddr = netip.MustParseAddr("198.18.0.2")
	farAddr           = netip.MustParseAddr("198.19.5.5")
	// farAddr2 is a second outside destination (policy tests tell them
	// apart); the outside also answers at the metadata address, which no
	// policy may open.
	farAddr2 = netip.MustParseAddr("198.19.6.6")
)

// outsideAddrs are the addresses the outside world serves on, each routed
// from the host through the uplink.
var outsideAddrs = []netip.Addr{farAddr, farAddr2, MetadataAddr}

func TestEgress(t *testing.T) {
	testutil.RequireRoot(t)
	keepForwarding(t)
	uplink := testUplinkPrefix + "2100"
	farPort := outsideWorld(t, uplink)

	p := testPool(t, Config{FirstIndex: 2100, Uplink: uplink})
	s := getSlot(t, p)
	serveGuest(t, s) // puts the guest address in place
	far := netip.AddrPortFrom(farAddr, uint16(farPort))
	var seen string
	err := netns.Do(s.NetnsPath, func() error {
		var err error
		seen, err = exchange(far, GuestAddr, 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("guest -> %s: %v", far, err)
	}
	// The outside world has no route back to the slot ranges: an answer
	// means the host masqueraded the guest behind its uplink address.
	if seen != uplinkHostAddr.String() {
		t.Errorf("outside saw the guest as %s, want %s (masqueraded)", seen, uplinkHostAddr)
	}

	t.Run("no other sandbox", func(t *testing.T) {
		other := getSlot(t, p)
		port := serveGuest(t, other)
		target := netip.AddrPortFrom(other.HostAddr, uint16(port))
		if _, err := exchange(target, netip.Addr{}, 2*time.Second); err != nil {
			t.Fatalf("control: host -> other slot: %v", err)
		}
		dialFromGuest(t, s, target)
	})
	t.Run("no host services", func(t *testing.T) {
		hostEnd, _ := p.cfg.vethAddrs(s.Index)
		ln, err := net.Listen("tcp", netip.AddrPortFrom(hostEnd, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go serveEcho(ln)
		target := netip.AddrPortFrom(hostEnd, uint16(ln.Addr().(*net.TCPAddr).Port))
		if _, err := exchange(target, netip.Addr{}, 2*time.Second); err != nil {
			t.Fatalf("control: host -> own listener: %v", err)
		}
		dialFromGuest(t, s, target)
	})
}

// dialFromGuest checks that the guest of s cannot reach target.
func dialFromGuest(t *testing.T, s *Slot, target netip.AddrPort) {
	t.Helper()
	err := netns.Do(s.NetnsPath, func() error {
		_, err := exchange(target, GuestAddr, 300*time.Millisecond)
		return err
	})
	if err == nil {
		t.Errorf("guest of slot %d reached %s", s.Index, target)
	}
}

// keepForwarding restores the host's ip_forward at the end of the test.
func keepForwarding(t *testing.T) {
	before, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(ipForwardPath, before, 0o644); err != nil {
			t.Errorf("restore %s: %v", ipForwardPath, err)
		}
	})
}

// outsideWorld builds the outside namespace behind uplink, with an echo
// server on every address of outsideAddrs, and returns the server's port.
func outsideWorld(t *testing.T, uplink string) int {
	return outsideWorldOf(t, uplink, "", testOutsideNetns)
}

// outsideWorldOf is outsideWorld for the host namespace at hostNetns ("" is
// the test's own), with the outside namespace named outside.
func outsideWorldOf(t *testing.T, uplink, hostNetns, outside string) int {
	t.Helper()
	onHost := func(fn func() error) error {
		if hostNetns == "" {
			return fn()
		}
		return netns.Do(hostNetns, fn)
	}
	if err := netns.Create(outside); err != nil {
		t.Fatalf("create outside netns: %v", err)
	}
	t.Cleanup(func() { netns.Delete(outside) })
	path := netns.Dir + "/" + outside
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	err = onHost(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: uplink, Flags: net.FlagUp}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add uplink veth: %w", err)
		}
		return netlink.AddrAdd(veth, addr(uplinkHostAddr, 30))
	})
	t.Cleanup(func() {
		if hostNetns != "" {
			return // goes with the host namespace
		}
		if err := removeUplinkRules(uplink); err != nil {
			t.Errorf("remove rules for uplink %s: %v", uplink, err)
		}
		deleteLink(uplink)
	})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	err = netns.Do(path, func() error {
		addrs := []struct {
			dev string
			a   *netlink.Addr
		}{{"eth0", addr(uplinkOutsideAddr, 30)}}
		for _, a := range outsideAddrs {
			addrs = append(addrs, struct {
				dev string
				a   *netlink.Addr
			}{"lo", addr(a, 32)})
		}
		for _, a := range addrs {
			l, err := netlink.LinkByName(a.dev)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(l, a.a); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		ln, err = net.Listen("tcp", "0.0.0.0:0")
		return err
	})
	if err != nil {
		t.Fatalf("set up outside netns: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	// Only the outside addresses go to the outside namespace (the routes
	// leave with the link).
	err = onHost(func() error {
		for _, a := range outsideAddrs {
			if err := netlink.RouteAdd(&netlink.Route{
				Dst: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)},
				Gw:  uplinkOutsideAddr.AsSlice(),
			}); err != nil {
				return fmt.Errorf("route to %s: %w", a, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ln.Addr().(*net.TCPAddr).Port
}

// removeUplinkRules deletes the host table's rules for one uplink (a test
// uplink disappears with its test; a real one stays for the next daemon).
func removeUplinkRules(uplink string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	n := 0
	for _, ch := range hostChains {
		rules, err := c.GetRules(hostTable, ch)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if tag, _ := userdata.GetString(r.UserData, userdata.TypeComment); strings.HasSuffix(tag, uplinkTag("", uplink)) {
				if err := c.DelRule(r); err != nil {
					return err
				}
				n++
			}
		}
	}
	if n == 0 {
		return nil
	}
	return c.Flush()
}
