//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/runner"
)

// shellSlot is the baseline: the same slot ember builds (namespace, veth
// pair, addresses, TAP, routes, forwarding, SNAT/DNAT in the namespace,
// FORWARD and MASQUERADE on the host), set up the way E2B-style sandbox
// managers do it, one `ip`/`iptables`/`sysctl` process per step. Every
// command runs from a thread in the fake host namespace, so the host's own
// tables are never touched.
type shellSlot struct {
	host   string // fake host namespace path
	uplink string
	ns     string // the slot's namespace name
	veth   string
	// hostEnd/nsEnd are the veth /31, hostAddr the slot's host address.
	hostEnd, nsEnd, hostAddr netip.Addr
}

// newShellSlot derives slot i's names and addresses. The names do not use
// ember's prefixes, so nothing ember reclaims could mistake them.
func newShellSlot(host, uplink string, i int) *shellSlot {
	v := netip.MustParseAddr("10.212.0.0").As4()
	v[2], v[3] = byte(2*i>>8), byte(2*i)
	hostEnd := netip.AddrFrom4(v)
	h := netip.MustParseAddr("10.211.0.0").As4()
	h[2], h[3] = byte((i+1)>>8), byte(i+1)
	return &shellSlot{
		host: host, uplink: uplink,
		ns:      "embench-ns-" + strconv.Itoa(i),
		veth:    "embench-v" + strconv.Itoa(i),
		hostEnd: hostEnd, nsEnd: hostEnd.Next(), hostAddr: netip.AddrFrom4(h),
	}
}

// setup runs the setup commands.
func (s *shellSlot) setup(ctx context.Context) error {
	guest, gw := network.GuestAddr.String(), network.GatewayAddr.String()
	in := func(args ...string) []string { return append([]string{"ip", "netns", "exec", s.ns}, args...) }
	return s.run(ctx,
		[]string{"ip", "netns", "add", s.ns},
		[]string{"ip", "link", "add", s.veth, "type", "veth", "peer", "name", "eth0", "netns", s.ns},
		[]string{"ip", "addr", "add", s.hostEnd.String() + "/31", "dev", s.veth},
		[]string{"ip", "link", "set", s.veth, "up"},
		in("ip", "addr", "add", s.nsEnd.String()+"/31", "dev", "eth0"),
		in("ip", "link", "set", "eth0", "up"),
		in("ip", "link", "set", "lo", "up"),
		in("ip", "tuntap", "add", "tap0", "mode", "tap"),
		in("ip", "addr", "add", gw+"/30", "dev", "tap0"),
		in("ip", "link", "set", "tap0", "up"),
		in("ip", "route", "add", "default", "via", s.hostEnd.String()),
		in("sysctl", "-qw", "net.ipv4.ip_forward=1"),
		in("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-s", guest, "-j", "SNAT", "--to", s.hostAddr.String()),
		in("iptables", "-t", "nat", "-A", "PREROUTING", "-i", "eth0", "-d", s.hostAddr.String(), "-j", "DNAT", "--to", guest),
		[]string{"ip", "route", "add", s.hostAddr.String() + "/32", "via", s.nsEnd.String()},
		[]string{"iptables", "-A", "FORWARD", "-i", s.veth, "-o", s.uplink, "-j", "ACCEPT"},
		[]string{"iptables", "-A", "FORWARD", "-i", s.uplink, "-o", s.veth, "-j", "ACCEPT"},
		[]string{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", s.hostAddr.String() + "/32", "-o", s.uplink, "-j", "MASQUERADE"},
	)
}

// teardown runs the teardown commands; it keeps going past failures (a
// half-built slot) and returns the first.
func (s *shellSlot) teardown(ctx context.Context) error {
	var first error
	for _, c := range [][]string{
		{"iptables", "-D", "FORWARD", "-i", s.veth, "-o", s.uplink, "-j", "ACCEPT"},
		{"iptables", "-D", "FORWARD", "-i", s.uplink, "-o", s.veth, "-j", "ACCEPT"},
		{"iptables", "-t", "nat", "-D", "POSTROUTING", "-s", s.hostAddr.String() + "/32", "-o", s.uplink, "-j", "MASQUERADE"},
		{"ip", "route", "del", s.hostAddr.String() + "/32"},
		{"ip", "link", "del", s.veth},
		{"ip", "netns", "del", s.ns},
	} {
		if err := s.run(ctx, c); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// run runs commands one after the other in the fake host namespace.
func (s *shellSlot) run(ctx context.Context, cmds ...[]string) error {
	return netns.Do(s.host, func() error {
		for _, c := range cmds {
			if _, err := runner.Run(ctx, c[0], c[1:]...); err != nil {
				return fmt.Errorf("baseline slot %s: %w", s.ns, err)
			}
		}
		return nil
	})
}
