//go:build linux

package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// testBridgePool returns a bridge pool whose host is a fresh fake host
// namespace (so the bridge, TAPs and rules all go with it).
func testBridgePool(t *testing.T, host string, cfg Config) *BridgePool {
	t.Helper()
	cfg.Mode, cfg.HostNetns = ModeBridge, host
	if cfg.Uplink == "" {
		cfg.NoEgress = true
	}
	p, err := NewBridgePool(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("NewBridgePool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// bridgeGuest stands in for the guest of bridge slot s: it replaces the
// slot's TAP with a veth of the same name on the bridge whose other end, in
// a namespace of its own, has the guest's MAC, address and default route,
// and runs an echo server there. It returns the guest namespace's path and
// the server's port.
func bridgeGuest(t *testing.T, p *BridgePool, s *Slot) (string, int) {
	t.Helper()
	name := testNetnsPrefix + "g-" + s.TAP
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	path := netns.Dir + "/" + name
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	err = p.onHost(func() error {
		br, err := netlink.LinkByName(p.cfg.Bridge)
		if err != nil {
			return err
		}
		if err := deleteLink(s.TAP); err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.TAP, MasterIndex: br.Attrs().Index, Flags: net.FlagUp},
			PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		return netlink.LinkSetUp(v)
	})
	if err != nil {
		t.Fatalf("guest veth for %s: %v", s.TAP, err)
	}
	var ln net.Listener
	err = netns.Do(path, func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac, _ := net.ParseMAC(s.GuestMAC)
		if err := netlink.LinkSetHardwareAddr(eth, mac); err != nil {
			return err
		}
		if err := netlink.AddrAdd(eth, addr(s.GuestAddr, s.GuestBits)); err != nil {
			return err
		}
		for _, l := range []string{"eth0", "lo"} {
			link, err := netlink.LinkByName(l)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: s.Gateway.AsSlice()}); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", netip.AddrPortFrom(s.GuestAddr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("guest stand-in for %s: %v", s.TAP, err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	return path, ln.Addr().(*net.TCPAddr).Port
}

// guestReaches reports whether a process in the guest namespace completes
// an echo exchange with target from local within timeout. The timeout must
// cover an ARP retry (1 s): after a blocked attempt the neighbour entry may
// still be waiting for its next probe.
func guestReaches(guest string, local netip.Addr, target netip.AddrPort, timeout time.Duration) (string, bool) {
	var seen string
	err := netns.Do(guest, func() error {
		var err error
		seen, err = exchange(target, local, timeout)
		return err
	})
	return seen, err == nil
}

func TestBridgeSlots(t *testing.T) {
	testutil.RequireRoot(t)
	host := fakeHost(t, testNetnsPrefix+"brhost1")
	cfg := Config{Bridge: "embt-br1", BridgeCIDR: netip.MustParsePrefix("172.31.250.0/29")}
	p := testBridgePool(t, host, cfg)
	want := p.cfg // with defaults

	var slots []*Slot
	for i := range 5 {
		s, err := p.Get(context.Background())
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		slots = append(slots, s)
	}
	t.Cleanup(func() {
		for _, s := range slots {
			p.Return(context.Background(), s)
		}
	})
	if st := p.Stats(); st != (slot.Stats{InUse: 5}) {
		t.Errorf("stats with five slots out: %+v", st)
	}
	for i, s := range slots {
		if *s != *want.bridgeSlot(i) {
			t.Errorf("Get %d = %+v, want %+v", i, *s, *want.bridgeSlot(i))
		}
		err := p.onHost(func() error {
			l, err := netlink.LinkByName(s.TAP)
			if err != nil {
				return err
			}
			br, err := netlink.LinkByName(cfg.Bridge)
			if err != nil {
				return err
			}
			if l.Type() != "tuntap" || l.Attrs().MasterIndex != br.Attrs().Index {
				t.Errorf("%s: type %s master %d, want a tap on %s (%d)", s.TAP, l.Type(), l.Attrs().MasterIndex, cfg.Bridge, br.Attrs().Index)
			}
			return nil
		})
		if err != nil {
			t.Errorf("slot %d tap: %v", i, err)
		}
	}
	if s, err := p.Get(context.Background()); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("Get on a full /29 = %v, %v, want ErrNoCapacity", s, err)
	}

	// Release and reuse.
	if err := p.Return(context.Background(), slots[2]); err != nil {
		t.Fatal(err)
	}
	again, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get after Return: %v", err)
	}
	if *again != *slots[2] {
		t.Errorf("Get after Return = %+v, want the freed %+v", *again, *slots[2])
	}

	// A paused sandbox keeps its address.
	if err := p.Return(context.Background(), slots[3]); err != nil {
		t.Fatal(err)
	}
	if held, err := p.Reserve(3); err != nil || !held {
		t.Fatalf("Reserve(3): held %v, %v", held, err)
	}
	if _, err := p.Get(context.Background()); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("Get with the only free address reserved = %v, want ErrNoCapacity", err)
	}
	resumed, err := p.Adopt(3)
	if err != nil {
		t.Fatalf("Adopt(3) of a reserved slot: %v", err)
	}
	if *resumed != *slots[3] {
		t.Errorf("resumed slot = %+v, want %+v", *resumed, *slots[3])
	}
	if _, err := p.Adopt(0); !errors.Is(err, ErrInUse) {
		t.Errorf("Adopt of a slot in use = %v, want ErrInUse", err)
	}

	// Park is the same in one step: the address is never free meanwhile.
	if held, err := p.Park(context.Background(), resumed); err != nil || !held {
		t.Fatalf("park: held %v, %v; want the address held", held, err)
	}
	if _, err := p.Get(context.Background()); !errors.Is(err, ErrNoCapacity) {
		t.Errorf("Get with the only free address parked = %v, want ErrNoCapacity", err)
	}
	if err := p.onHost(func() error {
		if linkExists(resumed.TAP) {
			t.Errorf("parked slot's tap %s still exists", resumed.TAP)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if resumed, err = p.Adopt(3); err != nil || *resumed != *slots[3] {
		t.Fatalf("Adopt(3) of a parked slot = %+v, %v; want %+v", resumed, err, *slots[3])
	}

	// A restarted daemon adopts a slot whose TAP exists.
	if err := p.Return(context.Background(), slots[4]); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Adopt(4); !errors.Is(err, ErrNotFound) {
		t.Errorf("Adopt of a returned slot = %v, want ErrNotFound", err)
	}
	p.Close()
	next := testBridgePool(t, host, cfg)
	got, err := next.Adopt(1)
	if err != nil {
		t.Fatalf("Adopt(1) in a new pool: %v", err)
	}
	if *got != *slots[1] {
		t.Errorf("Adopt(1) = %+v, want %+v", *got, *slots[1])
	}
	if s := getSlot(t, next); s.Index != 0 {
		t.Errorf("new pool's first Get = slot %d, want 0 (1 is adopted)", s.Index)
	}
	if err := next.Return(context.Background(), got); err != nil {
		t.Errorf("Return of the adopted slot: %v", err)
	}
}

func TestBridgeNotABridge(t *testing.T) {
	testutil.RequireRoot(t)
	host := fakeHost(t, testNetnsPrefix+"brhost3")
	err := netns.Do(host, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "embt-notbr"}, PeerName: "embt-notbrp"})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewBridgePool(Config{Mode: ModeBridge, Bridge: "embt-notbr", HostNetns: host, NoEgress: true}, testLogger(t))
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("NewBridgePool on a veth = %v, want ErrInvalidConfig", err)
	}
	if _, err := New(Config{Mode: ModeBridge, BridgeCIDR: netip.MustParsePrefix("172.31.0.0/30")}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New with a /30 bridge = %v, want ErrInvalidConfig", err)
	}
}

func TestBridgeIsolation(t *testing.T) {
	testutil.RequireRoot(t)
	host := fakeHost(t, testNetnsPrefix+"brhost2")
	dockerForward(t, host) // and the host drops forwarded traffic by default
	uplink := testUplinkPrefix + "2600"
	port := uint16(outsideWorldOf(t, uplink, host, testNetnsPrefix+"out2600"))
	cfg := Config{Bridge: "embt-br2", BridgeCIDR: netip.MustParsePrefix("172.31.251.0/24"), Uplink: uplink}
	p := testBridgePool(t, host, cfg)
	a, b, c := getSlot(t, p), getSlot(t, p), getSlot(t, p)
	ga, portA := bridgeGuest(t, p, a)
	gb, portB := bridgeGuest(t, p, b)
	gc, _ := bridgeGuest(t, p, c)
	far := netip.AddrPortFrom(farAddr, port)
	toA, toB := netip.AddrPortFrom(a.GuestAddr, uint16(portA)), netip.AddrPortFrom(b.GuestAddr, uint16(portB))

	// The host reaches a guest at its address.
	err := netns.Do(host, func() error {
		_, err := exchange(toA, netip.Addr{}, 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("host -> guest A %s: %v", toA, err)
	}
	// A host service on the gateway address stands in for the API.
	var hostSvc netip.AddrPort
	var ln net.Listener
	err = netns.Do(host, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(a.Gateway, 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	hostSvc = netip.AddrPortFrom(a.Gateway, uint16(ln.Addr().(*net.TCPAddr).Port))

	// check runs its cases at once: each phase's blocked attempts then
	// cost one timeout, not one each.
	type reach struct {
		what   string
		guest  string
		from   netip.Addr
		target netip.AddrPort
		want   bool
	}
	check := func(cases ...reach) {
		t.Helper()
		var wg sync.WaitGroup
		for _, c := range cases {
			wg.Go(func() {
				if _, got := guestReaches(c.guest, c.from, c.target, 1500*time.Millisecond); got != c.want {
					t.Errorf("%s: reached = %v, want %v", c.what, got, c.want)
				}
			})
		}
		wg.Wait()
	}
	seen, ok := guestReaches(ga, a.GuestAddr, far, 3*time.Second)
	if !ok {
		t.Fatalf("guest A -> outside %s blocked under the default policy", far)
	}
	if seen != uplinkHostAddr.String() {
		t.Errorf("outside saw guest A as %s, want %s (masqueraded)", seen, uplinkHostAddr)
	}
	check(
		reach{"A -> B without a group", ga, a.GuestAddr, toB, false},
		reach{"B -> A without a group", gb, b.GuestAddr, toA, false},
		reach{"A -> host service on the gateway", ga, a.GuestAddr, hostSvc, false},
	)

	for _, s := range []*Slot{a, b} {
		if err := p.SetPolicy(context.Background(), s, Policy{Internet: true, Group: "g1"}); err != nil {
			t.Fatal(err)
		}
	}
	check(
		reach{"A -> B in one group", ga, a.GuestAddr, toB, true},
		reach{"B -> A in one group", gb, b.GuestAddr, toA, true},
		reach{"C -> A outside the group", gc, c.GuestAddr, toA, false},
		reach{"A -> host service in a group", ga, a.GuestAddr, hostSvc, false},
	)

	if err := p.SetPolicy(context.Background(), a, Policy{Group: "g1", Allow: []netip.Prefix{netip.PrefixFrom(farAddr2, 32)}}); err != nil {
		t.Fatal(err)
	}
	check(
		reach{"A -> outside with internet off", ga, a.GuestAddr, far, false},
		reach{"A -> allowed outside address", ga, a.GuestAddr, netip.AddrPortFrom(farAddr2, port), true},
		reach{"A -> metadata", ga, a.GuestAddr, netip.AddrPortFrom(MetadataAddr, port), false},
		reach{"A -> B still in the group", ga, a.GuestAddr, toB, true},
		reach{"B -> outside under its own policy", gb, b.GuestAddr, far, true},
	)

	// C cannot borrow A's address (and with it A's policy and group).
	err = netns.Do(gc, func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(eth, addr(a.GuestAddr, 32))
	})
	if err != nil {
		t.Fatal(err)
	}
	check(
		reach{"C spoofing A's address -> B", gc, a.GuestAddr, toB, false},
	)
}

func TestBridgeReclaim(t *testing.T) {
	testutil.RequireRoot(t)
	host := fakeHost(t, testNetnsPrefix+"brhost4")
	cfg := Config{Bridge: "embt-br4", BridgeCIDR: netip.MustParsePrefix("172.31.252.0/29")}
	crashed := testBridgePool(t, host, cfg)
	var slots []*Slot
	for range 3 {
		s, err := crashed.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, s)
	}
	crashed.Close() // the daemon dies holding all three

	cfg.Mode, cfg.HostNetns, cfg.NoEgress = ModeBridge, host, true
	removed, err := ReclaimBridge(context.Background(), cfg, map[int]bool{1: true}, testLogger(t))
	if err != nil {
		t.Fatalf("ReclaimBridge: %v", err)
	}
	if removed != 2 {
		t.Errorf("ReclaimBridge removed %d slots, want 2", removed)
	}
	for _, s := range slots {
		var exists bool
		_ = netns.Do(host, func() error { exists = linkExists(s.TAP); return nil })
		if want := s.Index == 1; exists != want {
			t.Errorf("tap %s exists = %v after reclaim, want %v", s.TAP, exists, want)
		}
	}
	p := testBridgePool(t, host, cfg)
	kept, err := p.Adopt(1)
	if err != nil {
		t.Fatalf("Adopt(1) after reclaim: %v", err)
	}
	t.Cleanup(func() { p.Return(context.Background(), kept) })
	if _, err := p.Adopt(0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Adopt(0) of a reclaimed slot = %v, want ErrNotFound", err)
	}
	if s := getSlot(t, p); s.Index != 0 {
		t.Errorf("Get after reclaim = slot %d, want the freed 0", s.Index)
	}
	// A second reclaim finds nothing more (the policy chains went too).
	if removed, err := ReclaimBridge(context.Background(), cfg, map[int]bool{0: true, 1: true}, testLogger(t)); err != nil || removed != 0 {
		t.Errorf("second ReclaimBridge = %d, %v, want 0, nil", removed, err)
	}
}
