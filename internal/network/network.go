// Package network gives every sandbox its own network slot: a named network
// namespace holding the TAP device the VMM uses and one end of a veth pair,
// with NAT so the host reaches the guest at a per-slot address and the guest
// reaches the outside world.
//
// Inside every namespace the guest is 169.254.0.21/30 behind tap0 at
// 169.254.0.22, so a memory snapshot restores into any slot unchanged.
package network

import "net/netip"

// Fixed in-namespace addressing, identical in every slot.
var (
	GuestAddr   = netip.MustParseAddr("169.254.0.21")
	GatewayAddr = netip.MustParseAddr("169.254.0.22")
)

// GuestPrefixLen is the prefix length of the guest/TAP link.
const GuestPrefixLen = 30

// TAPName is the TAP device's name inside every slot's namespace.
const TAPName = "tap0"

// Slot is one sandbox's network: everything a VMM and the daemon need to know.
type Slot struct {
	// Index is the slot number; names and addresses derive from it.
	Index int
	// Netns is the namespace's name ("ember-ns-<index>"); NetnsPath its bind
	// mount (/run/netns/<name>).
	Netns     string
	NetnsPath string
	// TAP is the TAP device inside the namespace; GuestMAC the address the
	// guest's NIC must use.
	TAP      string
	GuestMAC string
	// HostVeth is the veth end in the host namespace ("ember-v<index>").
	HostVeth string
	// HostAddr is where the host reaches the guest (DNAT to GuestAddr inside
	// the namespace).
	HostAddr netip.Addr
}
