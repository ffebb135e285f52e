// Package slot describes a sandbox's network slot and its egress policy:
// plain data, shared by the kernel-facing network package that builds slots
// and the layers above it (the sandbox manager, the HTTP API), which never
// touch the kernel themselves.
package slot

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
)

// Fixed in-namespace addressing, identical in every namespace slot: the guest
// is 169.254.0.21/30 behind its gateway 169.254.0.22, so a memory snapshot
// restores into any slot unchanged.
var (
	GuestAddr   = netip.MustParseAddr("169.254.0.21")
	GatewayAddr = netip.MustParseAddr("169.254.0.22")
)

// GuestPrefixLen is the prefix length of the guest/TAP link.
const GuestPrefixLen = 30

// guestDevice is the guest kernel's name for its NIC (for BootArgs).
const guestDevice = "eth0"

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
	// HostAddr is where the host reaches the guest: in ModeNetns a
	// per-slot address DNATed to GuestAddr inside the namespace, in
	// ModeBridge the guest's own address.
	HostAddr netip.Addr
	// GuestAddr, Gateway and GuestBits are the guest's own address
	// configuration (BootArgs): the fixed 169.254.0.21/30 via .22 in
	// ModeNetns, an address of the bridge subnet via the bridge in
	// ModeBridge. Zero values mean the ModeNetns ones.
	GuestAddr netip.Addr
	Gateway   netip.Addr
	GuestBits int
}

// BootArgs returns the guest kernel's static IP configuration argument
// (ip=<client>::<gateway>:<netmask>::<device>:off). In ModeNetns it is the
// same for every slot.
func (s *Slot) BootArgs() string {
	guest, gw, bits := s.GuestAddr, s.Gateway, s.GuestBits
	if !guest.IsValid() {
		guest, gw, bits = GuestAddr, GatewayAddr, GuestPrefixLen
	}
	m := uint32(math.MaxUint32) << (32 - bits)
	netmask := netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)})
	return fmt.Sprintf("ip=%s::%s:%s::%s:off", guest, gw, netmask, guestDevice)
}

// ErrNoCapacity means every slot index a pool may hand out is taken. The
// network package's pools return it; it lives here so the sandbox layer
// can name it without importing them.
var ErrNoCapacity = errors.New("no free network slot")

// ErrInvalidPolicy wraps every Policy.Validate failure.
var ErrInvalidPolicy = errors.New("invalid network policy")

// Policy is what a sandbox's guest may reach. It is applied per slot and can
// change while the sandbox runs.
//
// Precedence, for a connection the guest opens to address d:
//
//  1. d in an always-denied range: dropped, whatever the policy. These are
//     the host itself (every host address and service, the daemon's API
//     included: the host table drops slot traffic on its input path), other
//     sandboxes (HostCIDR, VethCIDR, other slots' links) and the cloud
//     metadata address 169.254.169.254.
//  2. d in a Deny prefix: dropped (Deny beats Allow).
//  3. d in an Allow prefix: allowed.
//  4. otherwise allowed exactly when Internet is true.
//
// So with Internet false only the Allow prefixes are reachable, and with
// Internet true everything but Deny (and the always-denied ranges) is.
// Connections opened towards the guest (the host reaching a server in it)
// are not subject to the policy. The policy is checked on every packet the
// guest sends, so a change cuts flows already running, not only new ones.
type Policy struct {
	// Internet allows destinations not listed in Allow or Deny.
	Internet bool
	// Allow lists prefixes reachable even without Internet.
	Allow []netip.Prefix
	// Deny lists prefixes never reachable; they win over Allow.
	Deny []netip.Prefix
	// Group names the sandboxes (bridge mode) that may reach each other;
	// empty means none. Namespace mode ignores it: slots never reach each
	// other there.
	Group string
}

// DefaultPolicy is the policy of a fresh or reset slot: internet access, no
// lists.
var DefaultPolicy = Policy{Internet: true}

// MetadataAddr is the cloud metadata service address, always denied.
var MetadataAddr = netip.MustParseAddr("169.254.169.254")

// maxPolicyPrefixes bounds each list so one policy stays one small batch.
const maxPolicyPrefixes = 256

// maxGroupLen bounds a group name.
const maxGroupLen = 63

// Validate reports the first problem with pol, wrapped in ErrInvalidPolicy:
// prefixes must be valid IPv4 prefixes without host bits, lists at most 256
// long, and a group name at most 63 letters, digits, '-', '_' or '.'.
func (pol Policy) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidPolicy, fmt.Sprintf(format, args...))
	}
	for _, l := range []struct {
		name string
		ps   []netip.Prefix
	}{{"allow", pol.Allow}, {"deny", pol.Deny}} {
		if len(l.ps) > maxPolicyPrefixes {
			return bad("%s list has %d prefixes (at most %d)", l.name, len(l.ps), maxPolicyPrefixes)
		}
		for _, p := range l.ps {
			switch {
			case !p.IsValid():
				return bad("%s prefix %s is not a prefix", l.name, p)
			case !p.Addr().Is4():
				return bad("%s prefix %s is not IPv4", l.name, p)
			case p != p.Masked():
				return bad("%s prefix %s has host bits set (want %s)", l.name, p, p.Masked())
			}
		}
	}
	if len(pol.Group) > maxGroupLen {
		return bad("group %q is longer than %d characters", pol.Group, maxGroupLen)
	}
	for _, r := range pol.Group {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return bad("group %q may hold only letters, digits, '-', '_' and '.'", pol.Group)
		}
	}
	return nil
}

// Stats is how a slot provider's slots stand, for the daemon's metrics: a
// pool that runs dry makes every create wait for a slot to be built.
type Stats struct {
	// Idle slots are built ahead of demand and waiting; Reused slots were
	// returned, reset and wait for their next sandbox; InUse are handed out.
	Idle, Reused, InUse int
	// Reuses counts the slots handed out again after a reset, since the
	// provider started.
	Reuses uint64
}
