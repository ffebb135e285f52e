// Package network gives every sandbox its own network slot: a named network
// namespace holding the TAP device the VMM uses and one end of a veth pair,
// with NAT so the host reaches the guest at a per-slot address and the guest
// reaches the outside world.
//
// Inside every namespace the guest is 169.254.0.21/30 behind tap0 at
// 169.254.0.22, so a memory snapshot restores into any slot unchanged.
//
// Everything about slot N derives from N and the Config: the namespace
// ember-ns-N, the host veth ember-vN, the veth /31 (host 2N, namespace 2N+1
// in VethCIDR), the host address (the Nth usable address of HostCIDR) and the
// guest MAC. Nothing is stored, so a restarted daemon finds its slots again
// from their indexes alone.
//
// Pool keeps slots pre-built and reuses returned ones; every slot carries a
// Policy (internet on/off, allow and deny prefixes) that SetPolicy changes
// while the sandbox runs. ModeBridge (BridgePool) is the alternative the
// single-host Firecracker libraries use: one host bridge, a TAP and an
// address per sandbox. Both implement Slots; New picks one by Config.Mode.
package network

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/slot"

	"github.com/emberhq/ember/internal/netns"
)

// Fixed in-namespace addressing, identical in every slot.
var (
	GuestAddr   = slot.GuestAddr
	GatewayAddr = slot.GatewayAddr
)

// The link-layer side of the fixed addressing: the guest NIC's MAC and the
// TAP's are the same in every namespace slot too. A restored guest keeps the
// NIC address and the gateway neighbour entry it had when it was saved, so
// with per-slot addresses a guest restored into another slot (a resume, a
// create from a snapshot) would drop the host's frames, and one restored
// into a rebuilt slot would send its replies to the old TAP's address until
// its neighbour entry expired (35-50 s).
const (
	NetnsGuestMAC   = "02:eb:00:00:00:15"
	NetnsGatewayMAC = "02:eb:00:00:00:16"
)

// GuestPrefixLen is the prefix length of the guest/TAP link.
const GuestPrefixLen = slot.GuestPrefixLen

// TAPName is the TAP device's name inside every slot's namespace.
const TAPName = "tap0"

// Kernel object names. Everything ember creates carries the "ember" prefix so
// reclaim removes exactly our objects.
const (
	// NetnsPrefix starts every slot namespace's name: ember-ns-<index>.
	NetnsPrefix = "ember-ns-"
	// VethPrefix starts every host-side veth's name: ember-v<index>.
	VethPrefix = "ember-v"
	// TableName is the nftables table ember owns, on the host and in every
	// slot namespace.
	TableName = "ember"
	// nsVeth is the veth end inside a slot namespace.
	nsVeth = "eth0"
)

// Default address ranges.
var (
	DefaultHostCIDR = netip.MustParsePrefix("10.11.0.0/16")
	DefaultVethCIDR = netip.MustParsePrefix("10.12.0.0/16")
)

// guestNet is the guest/TAP link, which no configured range may overlap.
var guestNet = netip.PrefixFrom(GuestAddr, GuestPrefixLen).Masked()

// maxIndexDigits bounds slot indexes so "ember-v<index>" fits IFNAMSIZ-1.
const maxIndexDigits = 15 - len(VethPrefix)

// Sentinel errors callers branch on.
var (
	// ErrInvalidConfig wraps every Config.Validate failure.
	ErrInvalidConfig = errors.New("invalid network config")
	// ErrNoCapacity means every slot index of the configured ranges is taken.
	ErrNoCapacity = slot.ErrNoCapacity
	// ErrNotFound means a slot's namespace does not exist.
	ErrNotFound = errors.New("network slot not found")
	// ErrInUse means the slot is already held by this pool.
	ErrInUse = errors.New("network slot in use")
	// ErrClosed is returned by a Pool after Close.
	ErrClosed = errors.New("network pool closed")
)

// Config chooses the address ranges and the uplink. The zero value is valid:
// default ranges, uplink from the default route.
type Config struct {
	// HostCIDR holds the per-slot host addresses (default 10.11.0.0/16).
	HostCIDR netip.Prefix
	// VethCIDR holds the per-slot veth /31s (default 10.12.0.0/16).
	VethCIDR netip.Prefix
	// Uplink is the outbound interface for sandbox egress. Empty means the
	// interface of the default route; when there is none, slots get no
	// egress NAT (not an error).
	Uplink string
	// NoEgress leaves the host's forwarding and NAT alone: slots are reachable
	// from the host but reach nothing beyond it. Uplink is ignored.
	NoEgress bool
	// FirstIndex is the lowest slot index the pool hands out. Tests offset
	// their slots with it so they never collide with a running daemon.
	FirstIndex int
	// SlotCount, when positive, bounds the pool to indexes FirstIndex up to
	// FirstIndex+SlotCount-1: it hands out and reclaims nothing beyond, so
	// several daemons (test runs) can share a host on ranges of their own.
	// 0 means every index from FirstIndex up.
	SlotCount int
	// HostNetns, when set, is the path of a network namespace the pool
	// treats as the host: host veths, routes, the host table and the
	// uplink live there. Empty means the namespace the pool runs in. Tests
	// and benchmarks use it to stand a whole host up without touching the
	// real one.
	HostNetns string
	// PoolSize is how many idle slots the pool keeps built in the
	// background and how many returned slots it keeps for reuse. 0 builds
	// every slot on demand and tears every returned slot down; the daemon
	// uses DefaultPoolSize.
	PoolSize int

	// Mode is ModeNetns (the default: a namespace per sandbox) or
	// ModeBridge (every sandbox's TAP on one host bridge). HostCIDR,
	// VethCIDR, FirstIndex and PoolSize apply to ModeNetns only; Bridge and
	// BridgeCIDR to ModeBridge only.
	Mode string
	// Bridge is the bridge's interface name (default DefaultBridge).
	Bridge string
	// BridgeCIDR is the bridge's subnet (default DefaultBridgeCIDR): the
	// first usable address is the host's (the guests' gateway), the rest
	// go to guests. At most /29, at least /16.
	BridgeCIDR netip.Prefix
}

// Network modes.
const (
	ModeNetns  = "netns"
	ModeBridge = "bridge"
)

// Bridge mode defaults.
var (
	DefaultBridge     = "ember-br0"
	DefaultBridgeCIDR = netip.MustParsePrefix("172.30.0.0/24")
)

// DefaultPoolSize is the daemon's pool size.
const DefaultPoolSize = 8

// withDefaults fills in the zero fields.
func (c Config) withDefaults() Config {
	if !c.HostCIDR.IsValid() {
		c.HostCIDR = DefaultHostCIDR
	}
	if !c.VethCIDR.IsValid() {
		c.VethCIDR = DefaultVethCIDR
	}
	if c.Mode == "" {
		c.Mode = ModeNetns
	}
	if c.Mode == ModeBridge {
		if c.Bridge == "" {
			c.Bridge = DefaultBridge
		}
		if !c.BridgeCIDR.IsValid() {
			c.BridgeCIDR = DefaultBridgeCIDR
		}
	}
	return c
}

// Validate reports the first problem with c (after defaults are applied),
// wrapped in ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	for _, r := range []struct {
		name    string
		p       netip.Prefix
		maxBits int
	}{
		{"host cidr", c.HostCIDR, 30}, // a host address needs network and broadcast around it
		{"veth cidr", c.VethCIDR, 31}, // one /31 at least
	} {
		switch {
		case !r.p.Addr().Is4():
			return bad("%s %s is not IPv4", r.name, r.p)
		case r.p != r.p.Masked():
			return bad("%s %s has host bits set (want %s)", r.name, r.p, r.p.Masked())
		case r.p.Bits() > r.maxBits:
			return bad("%s %s is too small (at most /%d)", r.name, r.p, r.maxBits)
		case r.p.Overlaps(guestNet):
			return bad("%s %s overlaps the guest link %s", r.name, r.p, guestNet)
		}
	}
	if c.HostCIDR.Overlaps(c.VethCIDR) {
		return bad("host cidr %s overlaps veth cidr %s", c.HostCIDR, c.VethCIDR)
	}
	if c.HostNetns != "" && !strings.HasPrefix(c.HostNetns, "/") {
		return bad("host netns %q is not an absolute path", c.HostNetns)
	}
	if c.PoolSize < 0 {
		return bad("pool size %d is negative", c.PoolSize)
	}
	if n := c.capacity(); c.FirstIndex < 0 || c.FirstIndex >= n {
		return bad("first index %d outside [0, %d)", c.FirstIndex, n)
	}
	if c.SlotCount < 0 {
		return bad("slot count %d is negative", c.SlotCount)
	}
	if c.Uplink != "" && !c.NoEgress {
		if !validIfname(c.Uplink) {
			return bad("uplink %q is not an interface name", c.Uplink)
		}
		if strings.HasPrefix(c.Uplink, VethPrefix) {
			return bad("uplink %q is a slot veth", c.Uplink)
		}
	}
	switch c.Mode {
	case ModeNetns:
	case ModeBridge:
		return c.validateBridge(bad)
	default:
		return bad("mode %q is neither %q nor %q", c.Mode, ModeNetns, ModeBridge)
	}
	return nil
}

// validateBridge checks the bridge mode settings.
func (c Config) validateBridge(bad func(string, ...any) error) error {
	p := c.BridgeCIDR
	switch {
	case !validIfname(c.Bridge):
		return bad("bridge %q is not an interface name (1-15 letters, digits, '-', '_', '.')", c.Bridge)
	case c.Bridge == c.Uplink:
		return bad("bridge %q is the uplink", c.Bridge)
	case !p.Addr().Is4():
		return bad("bridge cidr %s is not IPv4", p)
	case p != p.Masked():
		return bad("bridge cidr %s has host bits set (want %s)", p, p.Masked())
	case p.Bits() > 29:
		return bad("bridge cidr %s is too small: a /%d leaves no room for a gateway and guests (at most /29)", p, p.Bits())
	case p.Bits() < 16:
		return bad("bridge cidr %s is too large (at least /16)", p)
	case p.Overlaps(guestNet) || p.Overlaps(netip.PrefixFrom(MetadataAddr, 32)):
		return bad("bridge cidr %s overlaps the link-local guest range", p)
	case p.Overlaps(c.HostCIDR) || p.Overlaps(c.VethCIDR):
		return bad("bridge cidr %s overlaps the slot ranges %s, %s", p, c.HostCIDR, c.VethCIDR)
	}
	return nil
}

// validIfname reports whether name can be a Linux interface name that is
// safe to log and match: 1-15 letters, digits, '-', '_' or '.'.
func validIfname(name string) bool {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// capacity is the number of slot indexes the ranges allow: one usable host
// address and one /31 each, and a name that fits an interface name.
func (c Config) capacity() int {
	hostUsable := uint64(1)<<(32-c.HostCIDR.Bits()) - 2
	pairs := uint64(1) << (32 - c.VethCIDR.Bits() - 1)
	n := min(hostUsable, pairs, uint64(math.Pow10(maxIndexDigits)))
	return int(n)
}

// end is one past the highest index the pool may use: the capacity of the
// ranges, or less under SlotCount.
func (c Config) end() int {
	if c.SlotCount > 0 {
		return min(c.capacity(), c.FirstIndex+c.SlotCount)
	}
	return c.capacity()
}

// owns reports whether index is in the pool's range.
func (c Config) owns(index int) bool { return index >= c.FirstIndex && index < c.end() }

// hostAddr is slot index's host address: the index-th usable address of
// HostCIDR, counting from 0 (the network address is skipped).
func (c Config) hostAddr(index int) netip.Addr {
	return addAddr(c.HostCIDR.Addr(), uint32(index)+1)
}

// vethAddrs are slot index's /31: the host end (2N) and the namespace end
// (2N+1) in VethCIDR.
func (c Config) vethAddrs(index int) (host, ns netip.Addr) {
	host = addAddr(c.VethCIDR.Addr(), 2*uint32(index))
	return host, host.Next()
}

// slot describes slot index.
func (c Config) slot(index int) *Slot {
	return &Slot{
		Index:     index,
		Netns:     NetnsName(index),
		NetnsPath: NetnsPath(index),
		TAP:       TAPName,
		GuestMAC:  NetnsGuestMAC,
		HostVeth:  VethName(index),
		HostAddr:  c.hostAddr(index),
		GuestAddr: GuestAddr,
		Gateway:   GatewayAddr,
		GuestBits: GuestPrefixLen,
	}
}

// addAddr returns a+n for an IPv4 address.
func addAddr(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// NetnsName is slot index's namespace name, ember-ns-<index>.
func NetnsName(index int) string { return NetnsPrefix + strconv.Itoa(index) }

// NetnsPath is where slot index's namespace is bind-mounted.
func NetnsPath(index int) string { return netns.Dir + "/" + NetnsName(index) }

// VethName is slot index's host-side veth name, ember-v<index>.
func VethName(index int) string { return VethPrefix + strconv.Itoa(index) }

// GuestMAC is slot index's guest MAC: locally administered, unicast,
// 02:eb followed by the index as four big-endian bytes.
func GuestMAC(index int) string {
	i := uint32(index)
	return fmt.Sprintf("02:eb:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
}

// parseIndex returns the slot index a kernel object name carries after
// prefix, if it is one ember made: the canonical decimal form only.
func parseIndex(name, prefix string) (int, bool) {
	s, ok := strings.CutPrefix(name, prefix)
	if !ok || s == "" || len(s) > maxIndexDigits {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}

// Slots hands out network slots; Pool (ModeNetns) and BridgePool
// (ModeBridge) implement it, and New picks one by Config.Mode. How a slot is
// kept for a paused sandbox is the mode's business: a namespace slot is given
// back whole (every namespace gives its guest the same address, so a restore
// fits any slot), a bridge slot keeps its address for the guest saved with
// it.
type Slots interface {
	// Get returns a slot ready for a sandbox, with DefaultPolicy.
	Get(ctx context.Context) (*Slot, error)
	// Return gives a slot back; the caller must not use it afterwards.
	Return(ctx context.Context, s *Slot) error
	// Park gives up the slot of a sandbox that pauses: its devices go, and
	// where the guest is addressed by its slot the address stays reserved
	// until Unpark or Unreserve (held says so).
	Park(ctx context.Context, s *Slot) (held bool, err error)
	// Unpark gives a paused sandbox parked on index a slot to resume on.
	Unpark(ctx context.Context, index int) (*Slot, error)
	// Reserve holds a parked slot's address again after a daemon restart
	// (held says whether there is one to hold); Unreserve frees it when
	// its paused sandbox goes away.
	Reserve(index int) (held bool, err error)
	Unreserve(index int)
	// Adopt takes back a slot a previous daemon process handed out.
	Adopt(index int) (*Slot, error)
	// SetPolicy replaces a slot's policy at once (see Policy).
	SetPolicy(ctx context.Context, s *Slot, pol Policy) error
	// Movable says whether a machine saved on one slot can be restored on
	// another (named snapshots, forks, template snapshots): nil, or why
	// not.
	Movable() error
	// Reclaim removes, at daemon start, the slots of this provider's range
	// that keep.Slots does not list (see package reclaim).
	Reclaim(ctx context.Context, keep reclaim.Keep) (reclaim.Result, error)
	// Stats says how many slots wait and how many are handed out.
	Stats() slot.Stats
	// Close stops handing out slots and waits for work in flight; slots
	// handed out stay.
	Close() error
}

// ErrNotMovable is wrapped by Movable's answer in ModeBridge.
var ErrNotMovable = errors.New("restored machines cannot move to another slot")

// Slot is one sandbox's network (see package slot, which holds the type so
// that callers need not import this kernel-facing package).
type Slot = slot.Slot
