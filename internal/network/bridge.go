package network

import (
	"fmt"
	"hash/fnv"
	"net/netip"
)

// In ModeBridge every sandbox has a TAP on the host, attached to the bridge,
// and an address of the bridge subnet. Slot index i is the i-th guest
// address: BridgeCIDR's network address + 2 + i (the network address + 1
// is the bridge's own, the guests' gateway). Everything else derives from
// the bridge name and the index:
//
//	TAP   emb<hhhh>-<index>  hhhh: 16 bits of a hash of the bridge name, so
//	                         two bridges' TAPs never share a name
//	MAC   02:eb:<guest address as four bytes> (locally administered unicast)

// bridgeTAPPrefix starts the name of every TAP on bridge.
func bridgeTAPPrefix(bridge string) string {
	h := fnv.New32a()
	h.Write([]byte(bridge))
	return fmt.Sprintf("emb%04x-", h.Sum32()&0xffff)
}

// BridgeTAPName is the TAP name of slot index on bridge; at most 13 bytes
// (indexes stay below 65536 since the subnet is at least a /16).
func BridgeTAPName(bridge string, index int) string {
	return fmt.Sprintf("%s%d", bridgeTAPPrefix(bridge), index)
}

// BridgeMAC is the MAC of the guest with address a: 02:eb followed by a.
func BridgeMAC(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("02:eb:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// bridgeGateway is the bridge's own address, the guests' gateway.
func (c Config) bridgeGateway() netip.Addr { return c.BridgeCIDR.Addr().Next() }

// bridgeCapacity is how many guest addresses the bridge subnet holds.
func (c Config) bridgeCapacity() int { return 1<<(32-c.BridgeCIDR.Bits()) - 3 }

// bridgeSlot describes bridge slot index.
func (c Config) bridgeSlot(index int) *Slot {
	a := addAddr(c.BridgeCIDR.Addr(), uint32(index)+2)
	return &Slot{
		Index:     index,
		TAP:       BridgeTAPName(c.Bridge, index),
		GuestMAC:  BridgeMAC(a),
		HostAddr:  a,
		GuestAddr: a,
		Gateway:   c.bridgeGateway(),
		GuestBits: c.BridgeCIDR.Bits(),
	}
}

// allocator hands out the indexes [0, n): the lowest free one first, so a
// released index is reused before new ones are touched. An index is either
// free, in use, or reserved (kept for a paused sandbox without a device).
type allocator struct {
	n     int
	taken map[int]bool // true: in use; false: reserved
}

func newAllocator(n int) *allocator { return &allocator{n: n, taken: map[int]bool{}} }

// get takes the lowest free index. With none left it returns an error
// wrapping ErrNoCapacity.
func (a *allocator) get() (int, error) {
	for i := range a.n {
		if _, ok := a.taken[i]; !ok {
			a.taken[i] = true
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d addresses taken or reserved", ErrNoCapacity, a.n)
}

// take marks index i in use. A reserved index may be taken (the paused
// sandbox resumes); one in use may not (ErrInUse).
func (a *allocator) take(i int) error {
	if i < 0 || i >= a.n {
		return fmt.Errorf("%w: index %d outside [0, %d)", ErrNotFound, i, a.n)
	}
	if a.taken[i] {
		return fmt.Errorf("index %d: %w", i, ErrInUse)
	}
	a.taken[i] = true
	return nil
}

// reserve keeps index i from being handed out until take or put. An index
// in use cannot be reserved (ErrInUse); reserving twice is fine.
func (a *allocator) reserve(i int) error {
	if i < 0 || i >= a.n {
		return fmt.Errorf("%w: index %d outside [0, %d)", ErrNotFound, i, a.n)
	}
	if a.taken[i] {
		return fmt.Errorf("index %d: %w", i, ErrInUse)
	}
	a.taken[i] = false
	return nil
}

// park turns index i from in use into reserved: its sandbox paused.
func (a *allocator) park(i int) {
	if a.taken[i] {
		a.taken[i] = false
	}
}

// reserved reports whether index i is reserved.
func (a *allocator) reserved(i int) bool {
	inUse, ok := a.taken[i]
	return ok && !inUse
}

// put frees index i.
func (a *allocator) put(i int) { delete(a.taken, i) }
