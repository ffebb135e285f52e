//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/emberhq/ember/internal/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Steps of building a slot, in order; failure injection in tests names them.
const (
	stepNetns     = "netns"
	stepGuard     = "guard"
	stepVeth      = "veth"
	stepNamespace = "namespace"
	stepRoute     = "route"
)

// cleanup is a stack of releases, run last-in first-out.
type cleanup []func() error

func (c *cleanup) push(fn func() error) { *c = append(*c, fn) }

// run releases everything, past failures, and joins the errors.
func (c *cleanup) run() error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		errs = append(errs, (*c)[i]())
	}
	*c = nil
	return errors.Join(errs...)
}

// build creates every kernel object of slot s. The namespace, the anchor a
// crash leaves for reclaim to find, comes first. On failure, including
// cancellation of ctx between steps, everything made so far is released.
// hook, when set, runs after each step (tests inject failures with it).
func build(ctx context.Context, cfg Config, s *Slot, hook func(step string) error) (err error) {
	var undo cleanup
	defer func() {
		if err != nil {
			err = errors.Join(err, undo.run())
		}
	}()
	hostEnd, nsEnd := cfg.vethAddrs(s.Index)
	steps := []struct {
		name string
		do   func() error
	}{
		{stepNetns, func() error {
			if err := netns.Create(s.Netns); err != nil {
				return fmt.Errorf("create netns %s: %w", s.Netns, err)
			}
			undo.push(func() error { return netns.Delete(s.Netns) })
			return nil
		}},
		{stepGuard, func() error {
			// Under the host guard before the veth exists.
			if err := addSlotElement(s.HostVeth); err != nil {
				return err
			}
			undo.push(func() error { return delSlotElement(s.HostVeth) })
			return nil
		}},
		{stepVeth, func() error {
			made, err := addVeth(s, hostEnd)
			if made {
				undo.push(func() error { return deleteLink(s.HostVeth) })
			}
			return err
		}},
		{stepNamespace, func() error {
			return netns.Do(s.NetnsPath, func() error { return setupNamespace(s, nsEnd, hostEnd, cfg.alwaysDenied()) })
		}},
		{stepRoute, func() error {
			r := hostRoute(s, nsEnd)
			if err := netlink.RouteAdd(r); err != nil {
				return fmt.Errorf("add route %s via %s dev %s: %w", r.Dst, r.Gw, s.HostVeth, err)
			}
			undo.push(func() error { return deleteRoute(r) })
			return nil
		}},
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("create slot %d: %w", s.Index, err)
		}
		if err := st.do(); err != nil {
			return fmt.Errorf("create slot %d: %w", s.Index, err)
		}
		if hook != nil {
			if err := hook(st.name); err != nil {
				return fmt.Errorf("create slot %d after %s: %w", s.Index, st.name, err)
			}
		}
	}
	return nil
}

// addVeth creates the veth pair with its namespace end (eth0) directly in the
// slot's namespace, addresses the host end and brings it up. made reports
// whether the pair exists (and needs deleting); an error wrapping
// os.ErrExist means the host name was taken.
func addVeth(s *Slot, hostEnd netip.Addr) (made bool, err error) {
	ns, err := vnetns.GetFromPath(s.NetnsPath)
	if err != nil {
		return false, fmt.Errorf("open netns %s: %w", s.NetnsPath, err)
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.HostVeth, Flags: net.FlagUp},
		PeerName:      nsVeth,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%w (%w)", os.ErrExist, err)
		}
		return false, fmt.Errorf("add veth %s peer %s in netns %s: %w", s.HostVeth, nsVeth, s.Netns, err)
	}
	if err := netlink.AddrAdd(veth, addr(hostEnd, 31)); err != nil {
		return true, fmt.Errorf("add address %s/31 to %s: %w", hostEnd, s.HostVeth, err)
	}
	return true, nil
}

// setupNamespace configures a slot namespace from a thread inside it: lo,
// the veth end, the TAP (netlink creates it in the calling thread's
// namespace, whatever a handle says), the guest's permanent neighbour entry
// (saves the ARP round trips before the guest's first reply), the default
// route, forwarding and the slot's nftables table.
func setupNamespace(s *Slot, nsEnd, hostEnd netip.Addr, denied []netip.Prefix) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink in netns %s: %w", s.Netns, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in netns %s: %w", s.Netns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in netns %s: %w", s.Netns, err)
	}
	eth, err := h.LinkByName(nsVeth)
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", nsVeth, s.Netns, err)
	}
	if err := h.AddrAdd(eth, addr(nsEnd, 31)); err != nil {
		return fmt.Errorf("add address %s/31 to %s in netns %s: %w", nsEnd, nsVeth, s.Netns, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up in netns %s: %w", nsVeth, s.Netns, err)
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: s.TAP},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// The VMM's own TUNSETIFF replaces these when it opens the device.
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := h.LinkAdd(tap); err != nil {
		return fmt.Errorf("create tap %s in netns %s: %w", s.TAP, s.Netns, err)
	}
	gwMAC, err := net.ParseMAC(NetnsGatewayMAC)
	if err != nil {
		return fmt.Errorf("parse gateway mac %q: %w", NetnsGatewayMAC, err)
	}
	if err := h.LinkSetHardwareAddr(tap, gwMAC); err != nil {
		return fmt.Errorf("set mac of %s in netns %s: %w", s.TAP, s.Netns, err)
	}
	if err := h.AddrAdd(tap, addr(GatewayAddr, GuestPrefixLen)); err != nil {
		return fmt.Errorf("add address %s/%d to %s in netns %s: %w", GatewayAddr, GuestPrefixLen, s.TAP, s.Netns, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("set %s up in netns %s: %w", s.TAP, s.Netns, err)
	}
	mac, err := net.ParseMAC(s.GuestMAC)
	if err != nil {
		return fmt.Errorf("parse guest mac %q: %w", s.GuestMAC, err)
	}
	if err := h.NeighAdd(&netlink.Neigh{
		LinkIndex:    tap.Attrs().Index,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           GuestAddr.AsSlice(),
		HardwareAddr: mac,
	}); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s dev %s in netns %s: %w", GuestAddr, mac, s.TAP, s.Netns, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: hostEnd.AsSlice()}); err != nil {
		return fmt.Errorf("add default route via %s in netns %s: %w", hostEnd, s.Netns, err)
	}
	// /proc/sys/net belongs to the namespace of the thread that opens it.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward in netns %s: %w", s.Netns, err)
	}
	if err := writeSlotTable(s.HostAddr, denied, DefaultPolicy); err != nil {
		return fmt.Errorf("netns %s: %w", s.Netns, err)
	}
	return nil
}

// hostRoute is the host's route to a slot's host address.
func hostRoute(s *Slot, nsEnd netip.Addr) *netlink.Route {
	return &netlink.Route{
		Dst: &net.IPNet{IP: s.HostAddr.AsSlice(), Mask: net.CIDRMask(32, 32)},
		Gw:  nsEnd.AsSlice(),
	}
}

// remove releases slot index's kernel objects, newest first, the namespace
// (the anchor) last. route may be nil: it goes with the veth anyway. What is
// already gone is success; every step runs whatever failed before it.
func remove(index int, route *netlink.Route) error {
	veth, name := VethName(index), NetnsName(index)
	var errs []error
	if route != nil {
		errs = append(errs, deleteRoute(route))
	}
	errs = append(errs,
		deleteLink(veth),
		delSlotElement(veth),
	)
	if err := netns.Delete(name); err != nil {
		errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// deleteLink deletes a host link by name; a missing link is success. A veth
// takes its peer with it.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// deleteRoute deletes a host route; a missing route is success.
func deleteRoute(r *netlink.Route) error {
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete route %s: %w", r.Dst, err)
	}
	return nil
}

func addr(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}
}
