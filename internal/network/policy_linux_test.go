//go:build linux

package network

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// reaches reports whether the guest of s completes an echo exchange with
// target.
//
// The timeout is long enough for a loaded machine (the VM tiers boot guests
// beside these tests): a short one made expected successes flaky.
func reaches(s *Slot, target netip.AddrPort) bool {
	err := netns.Do(s.NetnsPath, func() error {
		_, err := exchange(target, GuestAddr, 2*time.Second)
		return err
	})
	return err == nil
}

// listenHost runs an echo server in the host namespace on a, standing in for
// a host service such as the daemon's API, and returns its address.
func listenHost(t *testing.T, a netip.Addr) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	return netip.AddrPortFrom(a, uint16(ln.Addr().(*net.TCPAddr).Port))
}

func TestPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	keepForwarding(t)
	uplink := testUplinkPrefix + "2400"
	port := uint16(outsideWorld(t, uplink))
	p := testPool(t, Config{FirstIndex: 2400, Uplink: uplink})
	s := getSlot(t, p)
	guestPort := serveGuest(t, s)
	other := getSlot(t, p)
	otherPort := serveGuest(t, other)

	far1 := netip.AddrPortFrom(farAddr, port)
	far2 := netip.AddrPortFrom(farAddr2, port)
	metadata := netip.AddrPortFrom(MetadataAddr, port)
	hostSvc := listenHost(t, uplinkHostAddr) // the host's address on the uplink
	hostEnd, _ := p.cfg.vethAddrs(s.Index)
	hostVethSvc := listenHost(t, hostEnd) // the host's end of the slot's veth
	otherSlot := netip.AddrPortFrom(other.HostAddr, uint16(otherPort))
	targets := map[string]netip.AddrPort{
		"far1": far1, "far2": far2, "metadata": metadata, "host": hostSvc,
		"host veth": hostVethSvc, "other slot": otherSlot,
	}
	// Controls: each target answers someone.
	for name, tg := range targets {
		if name == "far1" || name == "far2" || name == "metadata" {
			continue // only reachable through the uplink; the default policy case shows them
		}
		if _, err := exchange(tg, netip.Addr{}, 2*time.Second); err != nil {
			t.Fatalf("control: host -> %s %s: %v", name, tg, err)
		}
	}
	pfx := netip.MustParsePrefix
	everything := []netip.Prefix{pfx("0.0.0.0/0")}
	tests := []struct {
		name  string
		pol   Policy
		reach []string // the targets the guest reaches; all others are blocked
	}{
		{"default", DefaultPolicy, []string{"far1", "far2"}},
		{"zero policy: nothing", Policy{}, nil},
		{"allow only", Policy{Allow: []netip.Prefix{pfx("198.19.5.0/24")}}, []string{"far1"}},
		{"deny beats allow", Policy{Allow: []netip.Prefix{pfx("198.19.0.0/16")}, Deny: []netip.Prefix{pfx("198.19.6.6/32")}}, []string{"far1"}},
		{"internet but deny", Policy{Internet: true, Deny: []netip.Prefix{pfx("198.19.5.5/32")}}, []string{"far2"}},
		{"deny beats internet and allow", Policy{Internet: true, Allow: everything, Deny: []netip.Prefix{pfx("198.19.0.0/16")}}, nil},
		{"always denied stays denied", Policy{Internet: true, Allow: everything}, []string{"far1", "far2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := p.SetPolicy(context.Background(), s, tt.pol); err != nil {
				t.Fatalf("SetPolicy: %v", err)
			}
			var wg sync.WaitGroup
			for name, tg := range targets {
				wg.Go(func() {
					if got, want := reaches(s, tg), slices.Contains(tt.reach, name); got != want {
						t.Errorf("guest reaches %s (%s) = %v, want %v", name, tg, got, want)
					}
				})
			}
			wg.Wait()
			// The host reaches a server in the guest whatever the policy.
			if _, err := exchange(netip.AddrPortFrom(s.HostAddr, uint16(guestPort)), netip.Addr{}, 2*time.Second); err != nil {
				t.Errorf("host -> guest under this policy: %v", err)
			}
		})
	}
	t.Run("invalid policy changes nothing", func(t *testing.T) {
		if err := p.SetPolicy(context.Background(), s, DefaultPolicy); err != nil {
			t.Fatal(err)
		}
		bad := Policy{Deny: []netip.Prefix{pfx("198.19.5.5/24")}}
		if err := p.SetPolicy(context.Background(), s, bad); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("SetPolicy(%v) = %v, want ErrInvalidPolicy", bad, err)
		}
		if !reaches(s, far1) {
			t.Errorf("a rejected policy changed the slot")
		}
	})
	t.Run("change cuts a running flow", func(t *testing.T) {
		if err := p.SetPolicy(context.Background(), s, DefaultPolicy); err != nil {
			t.Fatal(err)
		}
		c := guestConn(t, s, far1)
		r := bufio.NewReader(c)
		echo := func() error {
			c.SetDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Write([]byte("x\n")); err != nil {
				return err
			}
			_, err := r.ReadString('\n')
			return err
		}
		if _, err := r.ReadString('\n'); err != nil { // the greeting
			t.Fatal(err)
		}
		if err := echo(); err != nil {
			t.Fatalf("running flow before the change: %v", err)
		}
		if err := p.SetPolicy(context.Background(), s, Policy{Internet: true, Deny: []netip.Prefix{pfx("198.19.5.5/32")}}); err != nil {
			t.Fatal(err)
		}
		if err := echo(); err == nil {
			t.Errorf("running flow to %s still works after its destination was denied", far1)
		}
		if !reaches(s, far2) {
			t.Errorf("new connection to %s blocked after the change", far2)
		}
	})
}

func TestReusedSlotForgetsConnections(t *testing.T) {
	testutil.RequireRoot(t)
	keepForwarding(t)
	uplink := testUplinkPrefix + "2420"
	port := uint16(outsideWorld(t, uplink))
	p := testPool(t, Config{FirstIndex: 2420, Uplink: uplink, PoolSize: 1})
	s, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	returned := false
	t.Cleanup(func() {
		if !returned {
			p.Return(context.Background(), s)
		}
	})
	serveGuest(t, s)
	far := netip.AddrPortFrom(farAddr, port)
	// An established flow: the guest holds a connection open.
	guestConn(t, s, far)
	if n := flowsTo(t, s, farAddr); n.ns == 0 || n.host == 0 {
		t.Fatalf("control: conntrack entries for the open flow: %d in the slot, %d on the host; want some in both", n.ns, n.host)
	}
	returned = true
	if err := p.Return(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	again := getSlot(t, p)
	if again.Index != s.Index {
		t.Fatalf("Get = slot %d, want the reused %d", again.Index, s.Index)
	}
	if n := flowsTo(t, again, farAddr); n.ns != 0 || n.host != 0 {
		t.Errorf("reused slot carries conntrack entries of its previous sandbox: %d in the slot, %d on the host", n.ns, n.host)
	}
}

// flowCount counts conntrack entries.
type flowCount struct{ ns, host int }

// flowsTo counts conntrack entries towards dst in s's namespace and, on
// the host, from s's host address.
func flowsTo(t *testing.T, s *Slot, dst netip.Addr) flowCount {
	t.Helper()
	ns, err := vnetns.GetFromPath(s.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var n flowCount
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Forward.DstIP.Equal(dst.AsSlice()) {
			n.ns++
		}
	}
	flows, err = netlink.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Forward.SrcIP.Equal(s.HostAddr.AsSlice()) && f.Forward.DstIP.Equal(dst.AsSlice()) {
			n.host++
		}
	}
	return n
}

// guestConn opens a connection from the guest of s to target, closed when
// the test ends.
func guestConn(t *testing.T, s *Slot, target netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	err := netns.Do(s.NetnsPath, func() error {
		var err error
		c, err = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: GuestAddr.AsSlice()}, Timeout: 5 * time.Second}).Dial("tcp", target.String())
		return err
	})
	if err != nil {
		t.Fatalf("guest -> %s: %v", target, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
