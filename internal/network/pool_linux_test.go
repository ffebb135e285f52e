//go:build linux

package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// testLogger sends a pool's log lines to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testPool returns a pool whose slots start at first. Unless the test says
// otherwise it has no egress, so it leaves the host's forwarding alone.
func testPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	testutil.RequireRoot(t)
	if cfg.Uplink == "" {
		cfg.NoEgress = true
	}
	p, err := NewPool(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// getSlot gets a slot that is returned when the test ends.
func getSlot(t *testing.T, p Slots) *Slot {
	t.Helper()
	s, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Return(context.Background(), s); err != nil {
			t.Errorf("Return: %v", err)
		}
	})
	return s
}

// serveGuest stands in for the guest: it puts the guest address on the slot
// namespace's lo and runs a TCP echo server on it. It returns the port.
func serveGuest(t *testing.T, s *Slot) int {
	t.Helper()
	var ln net.Listener
	err := netns.Do(s.NetnsPath, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		// A reused slot may still have it from an earlier stand-in.
		if err := netlink.AddrReplace(lo, addr(GuestAddr, 32)); err != nil {
			return fmt.Errorf("add guest address to lo: %w", err)
		}
		ln, err = net.Listen("tcp", netip.AddrPortFrom(GuestAddr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("guest stand-in in %s: %v", s.Netns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveEcho(ln)
	return ln.Addr().(*net.TCPAddr).Port
}

// serveEcho answers every connection with the peer's address, then echoes.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			io.Copy(c, c)
		}()
	}
}

// exchange dials addr (from local when it is valid, on the calling thread's
// namespace), checks the echo and returns the address the server saw.
func exchange(addr netip.AddrPort, local netip.Addr, timeout time.Duration) (string, error) {
	d := net.Dialer{Timeout: timeout}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	var got []byte
	for !bytes.HasSuffix(got, []byte("ping")) {
		n, err := c.Read(buf)
		if err != nil {
			return "", fmt.Errorf("read %q so far: %w", got, err)
		}
		got = append(got, buf[:n]...)
	}
	seen, _, _ := strings.Cut(string(got), "\n")
	return seen, nil
}

func TestGetBuildsSlot(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2000})
	s := getSlot(t, p)
	want := p.cfg.slot(2000)
	if *s != *want {
		t.Fatalf("Get() = %+v, want %+v", *s, *want)
	}
	hostEnd, nsEnd := p.cfg.vethAddrs(s.Index)

	if !netns.IsMounted(s.NetnsPath) {
		t.Errorf("no namespace mounted at %s", s.NetnsPath)
	}
	veth, err := netlink.LinkByName(s.HostVeth)
	if err != nil {
		t.Fatalf("host veth: %v", err)
	}
	if veth.Type() != "veth" || veth.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %s: type %s flags %v", s.HostVeth, veth.Type(), veth.Attrs().Flags)
	}
	checkAddr(t, veth, "host "+s.HostVeth, hostEnd, 31)
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: &net.IPNet{IP: s.HostAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_DST)
	if err != nil || len(routes) != 1 || !routes[0].Gw.Equal(nsEnd.AsSlice()) || routes[0].LinkIndex != veth.Attrs().Index {
		t.Errorf("host routes to %s = %v (%v), want one via %s dev %s", s.HostAddr, routes, err, nsEnd, s.HostVeth)
	}
	els, err := listSlotElements()
	if err != nil || !slices.Contains(els, s.HostVeth) {
		t.Errorf("slots set = %v (%v), want it to hold %s", els, err, s.HostVeth)
	}

	err = netns.Do(s.NetnsPath, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("lo is down")
		}
		eth, err := netlink.LinkByName(nsVeth)
		if err != nil {
			return err
		}
		if eth.Type() != "veth" || eth.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("namespace %s: type %s flags %v", nsVeth, eth.Type(), eth.Attrs().Flags)
		}
		checkAddr(t, eth, "namespace "+nsVeth, nsEnd, 31)
		tap, err := netlink.LinkByName(TAPName)
		if err != nil {
			return err
		}
		if tap.Type() != "tuntap" || tap.(*netlink.Tuntap).Mode != netlink.TUNTAP_MODE_TAP || tap.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: type %s flags %v", TAPName, tap.Type(), tap.Attrs().Flags)
		}
		checkAddr(t, tap, TAPName, GatewayAddr, GuestPrefixLen)
		neighs, err := netlink.NeighList(tap.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		found := false
		for _, n := range neighs {
			if n.IP.Equal(GuestAddr.AsSlice()) {
				found = true
				if n.HardwareAddr.String() != s.GuestMAC || n.State != netlink.NUD_PERMANENT {
					t.Errorf("neighbour %s: lladdr %s state %#x, want %s permanent", n.IP, n.HardwareAddr, n.State, s.GuestMAC)
				}
			}
		}
		if !found {
			t.Errorf("no neighbour entry for %s on %s: %v", GuestAddr, TAPName, neighs)
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		def := slices.IndexFunc(routes, func(r netlink.Route) bool {
			return (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(hostEnd.AsSlice()) && r.LinkIndex == eth.Attrs().Index
		})
		if def < 0 {
			t.Errorf("no default route via %s in namespace: %v", hostEnd, routes)
		}
		fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(fwd)) != "1" {
			t.Errorf("namespace ip_forward = %q, want 1", fwd)
		}
		c, err := nftables.New()
		if err != nil {
			return err
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		var names []string
		for _, ch := range chains {
			if ch.Table.Name == TableName {
				rules, err := c.GetRules(ch.Table, ch)
				if err != nil {
					return err
				}
				names = append(names, fmt.Sprintf("%s:%d", ch.Name, len(rules)))
			}
		}
		sort.Strings(names)
		if got := strings.Join(names, " "); got != "forward:2 output:1 policy:5 postrouting:1 prerouting:1" {
			t.Errorf("namespace table ip %s chains:rules = %q", TableName, got)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inspect namespace: %v", err)
	}
}

func checkAddr(t *testing.T, l netlink.Link, what string, want netip.Addr, bits int) {
	t.Helper()
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Errorf("%s addresses: %v", what, err)
		return
	}
	for _, a := range addrs {
		if ones, _ := a.Mask.Size(); a.IP.Equal(want.AsSlice()) && ones == bits {
			return
		}
	}
	t.Errorf("%s addresses = %v, want %s/%d", what, addrs, want, bits)
}

func TestHostReachesGuest(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2010})
	s := getSlot(t, p)
	port := serveGuest(t, s)
	seen, err := exchange(netip.AddrPortFrom(s.HostAddr, uint16(port)), netip.Addr{}, 2*time.Second)
	if err != nil {
		t.Fatalf("host -> %s:%d: %v", s.HostAddr, port, err)
	}
	hostEnd, _ := p.cfg.vethAddrs(s.Index)
	if seen != hostEnd.String() {
		t.Errorf("guest saw the host as %s, want %s (the host veth end)", seen, hostEnd)
	}
}

func TestReturnRemovesEverything(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2020})
	s, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if err := p.Return(context.Background(), s); err != nil {
		t.Fatalf("Return: %v", err)
	}
	if l := settledLeftovers(s.Index, &s.HostAddr); len(l) > 0 {
		t.Errorf("after Return: %v", l)
	}
	if err := p.Return(context.Background(), s); err != nil {
		t.Errorf("second Return = %v, want nil (already gone is success)", err)
	}
	p.reaping.Wait() // the index is free once the teardown is over
	again, err := p.Get(context.Background())
	if err != nil {
		t.Fatalf("Get after Return: %v", err)
	}
	defer p.Return(context.Background(), again)
	if again.Index != s.Index {
		t.Errorf("Get after Return took index %d, want the freed %d", again.Index, s.Index)
	}
}

func TestGetFailureLeavesNothing(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2030})
	errInjected := errors.New("injected")
	for _, step := range []string{stepNetns, stepGuard, stepVeth, stepNamespace, stepRoute} {
		t.Run("after "+step, func(t *testing.T) {
			p.hook = func(s string) error {
				if s == step {
					return errInjected
				}
				return nil
			}
			defer func() { p.hook = nil }()
			s, err := p.Get(context.Background())
			if !errors.Is(err, errInjected) {
				t.Fatalf("Get() = %v, %v, want the injected error", s, err)
			}
			hostAddr := p.cfg.hostAddr(2030)
			if l := leftovers(2030, &hostAddr); len(l) > 0 {
				t.Errorf("after a failure %s: %v", step, l)
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		p.hook = func(s string) error {
			if s == stepVeth {
				cancel()
			}
			return nil
		}
		defer func() { p.hook = nil }()
		if s, err := p.Get(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Get() = %v, %v, want context.Canceled", s, err)
		}
		hostAddr := p.cfg.hostAddr(2030)
		if l := leftovers(2030, &hostAddr); len(l) > 0 {
			t.Errorf("after cancellation: %v", l)
		}
	})
	// The pool still works and reuses the index.
	if s := getSlot(t, p); s.Index != 2030 {
		t.Errorf("Get after failures took index %d, want 2030", s.Index)
	}
}

func TestGetSkipsExistingObjects(t *testing.T) {
	testutil.RequireRoot(t)
	// Something else owns 2040's namespace and 2041's veth name.
	if err := netns.Create(NetnsName(2040)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(NetnsName(2040)) })
	addTestVeth(t, VethName(2041), "embtpeer2041")

	p := testPool(t, Config{FirstIndex: 2040})
	if s := getSlot(t, p); s.Index != 2042 {
		t.Errorf("Get() took index %d, want 2042 (2040 and 2041 are taken)", s.Index)
	}
	if !netns.IsMounted(NetnsPath(2040)) {
		t.Errorf("Get disturbed the foreign namespace %s", NetnsName(2040))
	}
}

// addTestVeth makes a veth pair in the host namespace, removed at the end of
// the test.
func addTestVeth(t *testing.T, name, peer string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	t.Cleanup(func() { deleteLink(name) })
}

func TestConcurrentSlots(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2050})
	const n = 4
	slots := make([]*Slot, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { slots[i], errs[i] = p.Get(context.Background()) })
	}
	wg.Wait()
	for i, s := range slots {
		if errs[i] != nil {
			t.Fatalf("Get %d: %v", i, errs[i])
		}
		t.Cleanup(func() {
			if err := p.Return(context.Background(), s); err != nil {
				t.Errorf("Return: %v", err)
			}
		})
	}
	seen := map[string]bool{}
	for _, s := range slots {
		for _, k := range []string{s.Netns, s.HostVeth, s.HostAddr.String()} {
			if seen[k] {
				t.Errorf("two slots share %s", k)
			}
			seen[k] = true
		}
	}
	// Every guest answers at its own address, all at once.
	for _, s := range slots {
		port := serveGuest(t, s)
		wg.Go(func() {
			if _, err := exchange(netip.AddrPortFrom(s.HostAddr, uint16(port)), netip.Addr{}, 2*time.Second); err != nil {
				t.Errorf("host -> slot %d: %v", s.Index, err)
			}
		})
	}
	wg.Wait()
}

func TestReclaim(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2060})
	kept := getSlot(t, p)
	// Orphans of every shape: a whole slot its pool forgot, a bare
	// namespace, a bare veth and a lone set element.
	orphan, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { remove(orphan.Index, nil) })
	if err := netns.Create(NetnsName(2070)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(NetnsName(2070)) })
	addTestVeth(t, VethName(2071), "embtpeer2071")
	if err := addSlotElement(VethName(2072)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { delSlotElement(VethName(2072)) })

	// Keep everything above this test's range (other tests') and the one
	// slot still in use; below it, first protects what is not ours.
	keep := map[int]bool{kept.Index: true}
	for _, i := range allSlotIndexes(t) {
		if i > 2079 {
			keep[i] = true
		}
	}
	removed, err := Reclaim(context.Background(), 2060, keep, testLogger(t))
	if err != nil {
		t.Fatalf("Reclaim: %v", err)
	}
	if removed != 4 {
		t.Errorf("Reclaim removed %d slots, want 4", removed)
	}
	for _, i := range []int{orphan.Index, 2070, 2071, 2072} {
		if l := leftovers(i, nil); len(l) > 0 {
			t.Errorf("after Reclaim: %v", l)
		}
	}
	if l := leftovers(kept.Index, nil); len(l) != 3 {
		t.Errorf("kept slot %d: %v, want its netns, link and set element", kept.Index, l)
	}
	port := serveGuest(t, kept)
	if _, err := exchange(netip.AddrPortFrom(kept.HostAddr, uint16(port)), netip.Addr{}, 2*time.Second); err != nil {
		t.Errorf("kept slot unreachable after Reclaim: %v", err)
	}
}

// allSlotIndexes lists the indexes of every ember slot object on the host.
func allSlotIndexes(t *testing.T) []int {
	t.Helper()
	var out []int
	entries, _ := os.ReadDir(netns.Dir)
	for _, e := range entries {
		if i, ok := parseIndex(e.Name(), NetnsPrefix); ok {
			out = append(out, i)
		}
	}
	ls, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if i, ok := parseIndex(l.Attrs().Name, VethPrefix); ok {
			out = append(out, i)
		}
	}
	names, err := listSlotElements()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if i, ok := parseIndex(n, VethPrefix); ok {
			out = append(out, i)
		}
	}
	return out
}

func TestAdopt(t *testing.T) {
	old := testPool(t, Config{FirstIndex: 2080})
	s, err := old.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	old.Close()

	// A restarted daemon's pool.
	p := testPool(t, Config{FirstIndex: 2080})
	got, err := p.Adopt(s.Index)
	if err != nil {
		t.Fatalf("Adopt(%d): %v", s.Index, err)
	}
	t.Cleanup(func() {
		if err := p.Return(context.Background(), got); err != nil {
			t.Errorf("Return: %v", err)
		}
	})
	if *got != *s {
		t.Errorf("Adopt() = %+v, want %+v", *got, *s)
	}
	if _, err := p.Adopt(s.Index); !errors.Is(err, ErrInUse) {
		t.Errorf("second Adopt = %v, want ErrInUse", err)
	}
	if _, err := p.Adopt(2089); !errors.Is(err, ErrNotFound) {
		t.Errorf("Adopt of a missing slot = %v, want ErrNotFound", err)
	}
	if next := getSlot(t, p); next.Index == s.Index {
		t.Errorf("Get handed out adopted index %d", s.Index)
	}
	port := serveGuest(t, got)
	if _, err := exchange(netip.AddrPortFrom(got.HostAddr, uint16(port)), netip.Addr{}, 2*time.Second); err != nil {
		t.Errorf("adopted slot unreachable: %v", err)
	}
}

func TestClosedPool(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2090})
	s := getSlot(t, p) // returned by cleanup, after Close
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if !netns.IsMounted(s.NetnsPath) {
		t.Errorf("Close tore down a handed-out slot")
	}
}

func TestSlotTiming(t *testing.T) {
	p := testPool(t, Config{FirstIndex: 2200})
	const n = 20
	var up, down []time.Duration
	for range n {
		start := time.Now()
		s, err := p.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		mid := time.Now()
		if err := p.Return(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		up, down = append(up, mid.Sub(start)), append(down, time.Since(mid))
	}
	slices.Sort(up)
	slices.Sort(down)
	t.Logf("slot setup: median %v (min %v, max %v); teardown: median %v (min %v, max %v); n=%d",
		up[n/2], up[0], up[n-1], down[n/2], down[0], down[n-1], n)
}

// A daemon reclaims at start while its pool's filler is already building
// slots: the pool's own slots must survive, orphans must not.
func TestPoolReclaimSparesItsOwnSlots(t *testing.T) {
	// SlotCount bounds the range: what lies beyond belongs to others (here
	// a namespace at 2810, and every other test's slots).
	p := testPool(t, Config{FirstIndex: 2700, SlotCount: 100, PoolSize: 2})
	held := getSlot(t, p)
	deadline := time.Now().Add(10 * time.Second)
	for p.Idle() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("pool filled %d of 2", p.Idle())
		}
		time.Sleep(10 * time.Millisecond)
	}
	orphan, outside := 2750, 2810
	for _, i := range []int{orphan, outside} {
		if err := netns.Create(NetnsName(i)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netns.Delete(NetnsName(i)) })
	}
	res, err := p.Reclaim(context.Background(), reclaim.Keep{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 1 || res.Found != 1 {
		t.Errorf("reclaimed %+v, want the 1 orphan", res)
	}
	if !netns.Exists(NetnsName(outside)) {
		t.Errorf("reclaim removed slot %d, beyond the pool's range", outside)
	}
	if l := leftovers(orphan, nil); len(l) > 0 {
		t.Errorf("orphan left: %v", l)
	}
	if !netns.Exists(NetnsName(held.Index)) {
		t.Errorf("reclaim removed slot %d, which is handed out", held.Index)
	}
	if p.Idle() != 2 {
		t.Errorf("idle slots after reclaim: %d, want 2", p.Idle())
	}
	// The idle slots are whole: Get hands one out and it works.
	s := getSlot(t, p)
	port := serveGuest(t, s)
	if _, err := exchange(netip.AddrPortFrom(s.HostAddr, uint16(port)), netip.Addr{}, 2*time.Second); err != nil {
		t.Errorf("pooled slot unreachable after reclaim: %v", err)
	}
}
