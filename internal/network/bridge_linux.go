//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/slot"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BridgePool hands out slots in ModeBridge: a TAP on the host bridge and an
// address of the bridge subnet per sandbox, with the same Get, Return,
// Adopt, SetPolicy and Close as Pool. TAPs are quick to make, so nothing is
// pre-built.
//
// Kernel objects, besides the bridge itself (created if missing, never
// removed) and the TAPs:
//
//	inet ember (the host table)
//	  map policy-<bridge>     guest address : jump p-<bridge>-<index>
//	  chain p-<bridge>-<index> the slot's Policy (see addPolicyRules)
//	  input     bridge traffic to the host: replies only
//	  forward   from the bridge: only to the uplink, through the sender's
//	            policy chain; to the bridge: replies only
//	  postrouting  masquerade the bridge subnet leaving by the uplink
//	bridge ember
//	  chain pre-<bridge>  every TAP sends only with its guest's MAC and address
//	  chain fwd-<bridge>  TAP to TAP only within a Group
//
// The bridge family chains are rewritten whole, in the same transaction as
// the change that needs it, whenever a slot comes, goes or changes group.
type BridgePool struct {
	cfg    Config
	log    *slog.Logger
	uplink string

	policyMap *nftables.Set
	pre, fwd  *nftables.Chain

	work gate // Get and Adopt in flight

	mu    sync.Mutex
	alloc *allocator
	slots map[int]*bridgeSlot // in use
}

// bridgeSlot is what the pool knows about a slot in use.
type bridgeSlot struct {
	s     *Slot
	group string
}

var bridgeTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}

// NewBridgePool validates cfg (Mode must be ModeBridge), creates the bridge
// if it is missing, and installs the host rules for it. A nil log discards.
func NewBridgePool(cfg Config, log *slog.Logger) (*BridgePool, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.Mode != ModeBridge {
		return nil, fmt.Errorf("%w: bridge pool with mode %q", ErrInvalidConfig, cfg.Mode)
	}
	b := cfg.Bridge
	p := &BridgePool{
		cfg: cfg, log: log,
		alloc: newAllocator(cfg.bridgeCapacity()),
		slots: map[int]*bridgeSlot{},
		policyMap: &nftables.Set{Table: hostTable, Name: "policy-" + b, KeyType: nftables.TypeIPAddr,
			DataType: nftables.TypeVerdict, IsMap: true},
		pre: &nftables.Chain{Name: "pre-" + b, Table: bridgeTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter, Policy: policyAccept()},
		fwd: &nftables.Chain{Name: "fwd-" + b, Table: bridgeTable, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: policyAccept()},
	}
	if err := p.onHost(p.setupHost); err != nil {
		return nil, err
	}
	return p, nil
}

// onHost runs fn in the namespace the pool treats as the host.
func (p *BridgePool) onHost(fn func() error) error {
	if p.cfg.HostNetns == "" {
		return fn()
	}
	return netns.Do(p.cfg.HostNetns, fn)
}

// setupHost creates the bridge and the host rules, and rewrites the bridge
// family chains for an empty bridge (TAPs a previous daemon left are
// isolated until Adopt brings them back).
func (p *BridgePool) setupHost() error {
	cfg := p.cfg
	if !cfg.NoEgress {
		up, err := ResolveUplink(cfg.Uplink)
		if err != nil {
			return err
		}
		p.uplink = up
	}
	if err := ensureBridge(cfg.Bridge, netip.PrefixFrom(cfg.bridgeGateway(), cfg.BridgeCIDR.Bits())); err != nil {
		return err
	}
	if err := ensureHostTable(bridgeHostRules(cfg.Bridge, p.uplink, p.policyMap.Name, cfg.BridgeCIDR), p.policyMap); err != nil {
		return err
	}
	if _, err := ensureForeignForward(cfg.Bridge); err != nil {
		return err
	}
	if err := p.commit(nil); err != nil {
		return err
	}
	if p.uplink != "" {
		if err := enableForwarding(p.log); err != nil {
			return err
		}
	}
	p.log.Info("bridge network", "bridge", cfg.Bridge, "cidr", cfg.BridgeCIDR, "uplink", p.uplink)
	return nil
}

// ensureBridge creates the bridge if missing, gives it the gateway address
// and brings it up.
func ensureBridge(name string, gw netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add bridge %s: %w", name, err)
		}
		l, err = netlink.LinkByName(name)
	}
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", name, err)
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("%w: %s is a %s, not a bridge", ErrInvalidConfig, name, l.Type())
	}
	if err := netlink.AddrReplace(l, addr(gw.Addr(), gw.Bits())); err != nil {
		return fmt.Errorf("add address %s to bridge %s: %w", gw, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// bridgeHostRules are the host table's rules for one bridge.
func bridgeHostRules(bridge, uplink, policyMap string, cidr netip.Prefix) []ruleSpec {
	in, out := ifnameIs(unix.NFT_META_IIFNAME, bridge), ifnameIs(unix.NFT_META_OIFNAME, bridge)
	tag := func(what string) string { return what + " on bridge " + bridge }
	rules := []ruleSpec{
		{hostInput, tag("guest replies to host"), false, concat(in, ctReply(), verdict(expr.VerdictAccept))},
		{hostInput, tag("guests never reach host"), false, concat(in, verdict(expr.VerdictDrop))},
		// Bridged frames reach this hook only with br_netfilter; the bridge
		// table decides about them.
		{hostForward, tag("bridged"), false, concat(in, out, verdict(expr.VerdictAccept))},
	}
	if uplink != "" {
		rules = append(rules, ruleSpec{hostForward, tag("guests reach only " + uplink), false, concat(in,
			[]expr.Any{
				&expr.Meta{Key: unix.NFT_META_OIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(uplink)},
			}, verdict(expr.VerdictDrop))})
	}
	rules = append(rules,
		ruleSpec{hostForward, tag("guest policy"), false, concat(in, ipv4Only(),
			[]expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
				&expr.Lookup{SourceRegister: 1, SetName: policyMap, IsDestRegSet: true, DestRegister: 0},
			})},
		ruleSpec{hostForward, tag("unknown guests"), false, concat(in, verdict(expr.VerdictDrop))},
		ruleSpec{hostForward, tag("replies reach guests"), false, concat(out, ctReply(), verdict(expr.VerdictAccept))},
		ruleSpec{hostForward, tag("only replies reach guests"), false, concat(out, verdict(expr.VerdictDrop))},
	)
	if uplink != "" {
		rules = append(rules, ruleSpec{hostPostrouting, tag("masquerade " + cidr.String() + " via " + uplink), false,
			concat(ipv4Only(), ifnameIs(unix.NFT_META_OIFNAME, uplink), addrIn(12, cidr), []expr.Any{&expr.Masq{}})})
	}
	return rules
}

// policyChain is slot index's policy chain in the host table.
func (p *BridgePool) policyChain(index int) *nftables.Chain {
	return &nftables.Chain{Name: "p-" + p.cfg.Bridge + "-" + strconv.Itoa(index), Table: hostTable}
}

// denied is what no bridge guest's policy opens: the ModeNetns ranges, the
// metadata address and the bridge subnet (other guests, the gateway).
func (p *BridgePool) denied() []netip.Prefix {
	return append(p.cfg.alwaysDenied(), p.cfg.BridgeCIDR)
}

// Get returns a slot with a new TAP on the bridge, the lowest free address
// and DefaultPolicy. With every address taken or reserved it returns an
// error wrapping ErrNoCapacity.
func (p *BridgePool) Get(ctx context.Context) (*Slot, error) {
	if err := p.work.enter(); err != nil {
		return nil, err
	}
	defer p.work.leave()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	index, err := p.alloc.get()
	p.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("get bridge slot: %w", err)
	}
	s, err := p.attach(index)
	if err != nil {
		p.mu.Lock()
		p.alloc.put(index)
		p.mu.Unlock()
		return nil, err
	}
	return s, nil
}

// attach creates slot index's TAP and rules; the index is already taken.
func (p *BridgePool) attach(index int) (s *Slot, err error) {
	start := time.Now()
	s = p.cfg.bridgeSlot(index)
	var undo cleanup
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("create bridge slot %d: %w", index, err), p.onHost(undo.run))
		}
	}()
	err = p.onHost(func() error {
		if err := addBridgeTAP(s.TAP, p.cfg.Bridge); err != nil {
			return err
		}
		undo.push(func() error { return deleteLink(s.TAP) })
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.slots[index] = &bridgeSlot{s: s}
	p.mu.Unlock()
	undo.push(func() error {
		p.mu.Lock()
		delete(p.slots, index)
		p.mu.Unlock()
		return nil
	})
	if err := p.onHost(func() error {
		return p.commit(func(c *nftables.Conn) error { return p.addSlotRules(c, s, DefaultPolicy) })
	}); err != nil {
		return nil, err
	}
	p.log.Debug("bridge slot created", "slot", index, "tap", s.TAP, "addr", s.GuestAddr, "duration", time.Since(start))
	return s, nil
}

// addBridgeTAP creates a TAP attached to bridge and brings it up.
func addBridgeTAP(name, bridge string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	if err := netlink.LinkSetMaster(tap, br); err != nil {
		return errors.Join(fmt.Errorf("attach tap %s to %s: %w", name, bridge, err), deleteLink(name))
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return errors.Join(fmt.Errorf("set tap %s up: %w", name, err), deleteLink(name))
	}
	return nil
}

// addSlotRules queues slot s's policy chain and its map element.
func (p *BridgePool) addSlotRules(c *nftables.Conn, s *Slot, pol Policy) error {
	ch := c.AddChain(p.policyChain(s.Index))
	c.FlushChain(ch)
	addPolicyRules(c, ch, p.denied(), pol)
	return c.SetAddElements(p.policyMap, []nftables.SetElement{{Key: s.GuestAddr.AsSlice(),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}})
}

// commit sends one transaction: what queue adds (may be nil), then the
// bridge family chains rewritten for the slots in use.
func (p *BridgePool) commit(queue func(c *nftables.Conn) error) error {
	hostMu.Lock() // anonymous sets bump the library's global set counter
	defer hostMu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	if queue != nil {
		if err := queue(c); err != nil {
			return err
		}
	}
	if err := p.queueBridgeChains(c); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write rules of bridge %s: %w", p.cfg.Bridge, err)
	}
	return nil
}

// queueBridgeChains rewrites the bridge family chains from the slots in use:
//
//	pre-<bridge>  iifname <tap> ether saddr != <mac> drop
//	              iifname <tap> meta protocol ip ip saddr != <addr> drop
//	fwd-<bridge>  iifname {group members} oifname {group members} accept   (per group)
//	              iifname "<tap prefix>*" oifname "<tap prefix>*" drop
func (p *BridgePool) queueBridgeChains(c *nftables.Conn) error {
	p.mu.Lock()
	slots := make([]bridgeSlot, 0, len(p.slots))
	for _, bs := range p.slots {
		slots = append(slots, *bs)
	}
	p.mu.Unlock()
	sort.Slice(slots, func(i, j int) bool { return slots[i].s.Index < slots[j].s.Index })

	c.AddTable(bridgeTable)
	pre, fwd := c.AddChain(p.pre), c.AddChain(p.fwd)
	c.FlushChain(pre)
	c.FlushChain(fwd)
	groups := map[string][]string{}
	for _, bs := range slots {
		s := bs.s
		mac, err := net.ParseMAC(s.GuestMAC)
		if err != nil {
			return fmt.Errorf("parse guest mac %q: %w", s.GuestMAC, err)
		}
		tap := ifnameIs(unix.NFT_META_IIFNAME, s.TAP)
		c.AddRule(&nftables.Rule{Table: bridgeTable, Chain: pre, Exprs: concat(tap, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: mac},
		}, verdict(expr.VerdictDrop))})
		c.AddRule(&nftables.Rule{Table: bridgeTable, Chain: pre, Exprs: concat(tap, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: s.GuestAddr.AsSlice()},
		}, verdict(expr.VerdictDrop))})
		if bs.group != "" {
			groups[bs.group] = append(groups[bs.group], s.TAP)
		}
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	for _, g := range names {
		members := groups[g]
		if len(members) < 2 {
			continue
		}
		var elems []nftables.SetElement
		for _, m := range members {
			elems = append(elems, nftables.SetElement{Key: ifname(m)})
		}
		var exprs []expr.Any
		for _, key := range []expr.MetaKey{unix.NFT_META_IIFNAME, unix.NFT_META_OIFNAME} {
			set := &nftables.Set{Table: bridgeTable, Anonymous: true, Constant: true, KeyType: nftables.TypeIFName}
			if err := c.AddSet(set, elems); err != nil {
				return fmt.Errorf("add set of group %q: %w", g, err)
			}
			exprs = append(exprs, &expr.Meta{Key: key, Register: 1},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
		}
		c.AddRule(&nftables.Rule{Table: bridgeTable, Chain: fwd, Exprs: concat(exprs, verdict(expr.VerdictAccept))})
	}
	prefix := bridgeTAPPrefix(p.cfg.Bridge)
	c.AddRule(&nftables.Rule{Table: bridgeTable, Chain: fwd, Exprs: concat(
		ifnamePrefix(unix.NFT_META_IIFNAME, prefix), ifnamePrefix(unix.NFT_META_OIFNAME, prefix), verdict(expr.VerdictDrop))})
	return nil
}

// Return deletes slot s's TAP and rules, forgets its connections and frees
// its address. Returning a slot the pool does not hold is a no-op.
func (p *BridgePool) Return(ctx context.Context, s *Slot) error {
	return p.release(ctx, s, false)
}

// Park is Return for a sandbox that pauses: the TAP, rules and connections
// go, but the address stays reserved, so Adopt brings the slot back
// unchanged and the restored guest, which keeps the address and MAC it was
// saved with, resumes on it.
func (p *BridgePool) Park(ctx context.Context, s *Slot) (held bool, err error) {
	return true, p.release(ctx, s, true)
}

// release tears slot s down and frees its address, or reserves it when
// park is set.
func (p *BridgePool) release(ctx context.Context, s *Slot, park bool) error {
	if s == nil {
		return nil
	}
	p.mu.Lock()
	bs, ok := p.slots[s.Index]
	if ok {
		delete(p.slots, s.Index)
	}
	p.mu.Unlock()
	if !ok {
		return nil
	}
	start := time.Now()
	s = bs.s
	err := p.onHost(func() error {
		errs := []error{
			p.commit(func(c *nftables.Conn) error { return p.delSlotRules(c, s) }),
			deleteLink(s.TAP),
			flushHostConntrack(s.GuestAddr),
		}
		return errors.Join(errs...)
	})
	p.mu.Lock()
	if park {
		p.alloc.park(s.Index)
	} else {
		p.alloc.put(s.Index)
	}
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("return bridge slot %d: %w", s.Index, err)
	}
	p.log.Debug("bridge slot removed", "slot", s.Index, "duration", time.Since(start))
	return nil
}

// delSlotRules queues the removal of slot s's map element and policy chain.
func (p *BridgePool) delSlotRules(c *nftables.Conn, s *Slot) error {
	if err := c.SetDeleteElements(p.policyMap, []nftables.SetElement{{Key: s.GuestAddr.AsSlice()}}); err != nil {
		return err
	}
	ch := p.policyChain(s.Index)
	c.FlushChain(ch)
	c.DelChain(ch)
	return nil
}

// SetPolicy applies pol to slot s in one transaction: its policy chain and,
// when its group changes, the bridge's group rules.
func (p *BridgePool) SetPolicy(ctx context.Context, s *Slot, pol Policy) error {
	if err := pol.Validate(); err != nil {
		return fmt.Errorf("set policy of bridge slot %d: %w", s.Index, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set policy of bridge slot %d: %w", s.Index, err)
	}
	p.mu.Lock()
	bs, ok := p.slots[s.Index]
	var old string
	if ok {
		old, bs.group = bs.group, pol.Group
	}
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("set policy of bridge slot %d: %w", s.Index, ErrNotFound)
	}
	err := p.onHost(func() error {
		return p.commit(func(c *nftables.Conn) error { return p.addSlotRules(c, bs.s, pol) })
	})
	if err != nil {
		p.mu.Lock()
		bs.group = old
		p.mu.Unlock()
		return fmt.Errorf("set policy of bridge slot %d: %w", s.Index, err)
	}
	return nil
}

// Reserve keeps slot index's address for a paused sandbox that has no TAP
// now (after a daemon restart): Get will not hand it out, and Adopt brings
// the slot back unchanged. It returns ErrInUse when the slot is in use.
func (p *BridgePool) Reserve(index int) (held bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.alloc.reserve(index); err != nil {
		return false, fmt.Errorf("reserve bridge slot %d: %w", index, err)
	}
	return true, nil
}

// Unreserve frees a reserved address (the paused sandbox was deleted).
func (p *BridgePool) Unreserve(index int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.alloc.reserved(index) {
		p.alloc.put(index)
	}
}

// Unpark takes back the slot parked on index: the resumed guest keeps the
// address and MAC it was saved with.
func (p *BridgePool) Unpark(_ context.Context, index int) (*Slot, error) { return p.Adopt(index) }

// Movable says no: each guest on the bridge has its own address, which a
// restored machine cannot change.
func (p *BridgePool) Movable() error {
	return fmt.Errorf("the bridge network mode gives each guest its own address, which a restored machine keeps: %w", ErrNotMovable)
}

// Stats counts the slots in use: a bridge slot is built on demand, so none
// wait.
func (p *BridgePool) Stats() slot.Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slot.Stats{InUse: len(p.slots)}
}

// Reclaim is ReclaimBridge over this pool's bridge.
func (p *BridgePool) Reclaim(ctx context.Context, keep reclaim.Keep) (reclaim.Result, error) {
	n, err := ReclaimBridge(ctx, p.cfg, keep.Slots, p.log)
	return reclaim.Result{Found: n, Removed: n}, err
}

// Adopt takes slot index back: one whose TAP a previous daemon process made,
// or a reserved one, whose TAP it creates. Its policy is DefaultPolicy until
// SetPolicy. It returns ErrNotFound when the slot has neither and ErrInUse
// when this pool holds it.
func (p *BridgePool) Adopt(index int) (*Slot, error) {
	if err := p.work.enter(); err != nil {
		return nil, err
	}
	defer p.work.leave()
	if index < 0 || index >= p.cfg.bridgeCapacity() {
		return nil, fmt.Errorf("adopt bridge slot %d: %w: index outside [0, %d)", index, ErrNotFound, p.cfg.bridgeCapacity())
	}
	s := p.cfg.bridgeSlot(index)
	exists := false
	if err := p.onHost(func() error { exists = linkExists(s.TAP); return nil }); err != nil {
		return nil, fmt.Errorf("adopt bridge slot %d: %w", index, err)
	}
	p.mu.Lock()
	reserved := p.alloc.reserved(index)
	if !exists && !reserved {
		p.mu.Unlock()
		return nil, fmt.Errorf("adopt bridge slot %d: %w: no tap %s", index, ErrNotFound, s.TAP)
	}
	if err := p.alloc.take(index); err != nil {
		p.mu.Unlock()
		return nil, fmt.Errorf("adopt bridge slot %d: %w", index, err)
	}
	p.mu.Unlock()
	if !exists {
		got, err := p.attach(index)
		if err != nil {
			// Still the paused sandbox's: from taken back to reserved
			// (reserve would refuse an index in use).
			p.mu.Lock()
			p.alloc.park(index)
			p.mu.Unlock()
			return nil, err
		}
		return got, nil
	}
	p.mu.Lock()
	p.slots[index] = &bridgeSlot{s: s}
	p.mu.Unlock()
	err := p.onHost(func() error {
		return p.commit(func(c *nftables.Conn) error { return p.addSlotRules(c, s, DefaultPolicy) })
	})
	if err != nil {
		p.mu.Lock()
		delete(p.slots, index)
		p.alloc.put(index)
		p.mu.Unlock()
		return nil, fmt.Errorf("adopt bridge slot %d: %w", index, err)
	}
	return s, nil
}

// Close stops the pool handing out slots and waits for the work in flight.
// Slots in use, the bridge and its rules stay (a restarted daemon adopts
// them).
func (p *BridgePool) Close() error {
	p.work.close()
	return nil
}

// flushHostConntrack deletes the calling namespace's conntrack entries to
// or from a.
func flushHostConntrack(a netip.Addr) error {
	ip := net.IP(a.AsSlice())
	from, to := &netlink.ConntrackFilter{}, &netlink.ConntrackFilter{}
	if err := errors.Join(from.AddIP(netlink.ConntrackOrigSrcIP, ip), to.AddIP(netlink.ConntrackOrigDstIP, ip)); err != nil {
		return fmt.Errorf("conntrack filter for %s: %w", a, err)
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, from, to); err != nil {
		return fmt.Errorf("delete conntrack entries of %s: %w", a, err)
	}
	return nil
}

// ReclaimBridge removes every slot of cfg's bridge (ModeBridge) whose index
// is not in keep: its TAP, its policy chain and its policy map element. It
// is meant for daemon start, before NewBridgePool, with keep holding the
// slots of sandboxes that survived the restart (Adopt them afterwards, and
// Reserve the addresses of paused ones). removed counts the slots it
// cleared. Like all releasing, it runs to the end even when ctx is
// cancelled.
func ReclaimBridge(ctx context.Context, cfg Config, keep map[int]bool, log *slog.Logger) (removed int, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Mode = ModeBridge
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	cfg = cfg.withDefaults()
	p := &BridgePool{cfg: cfg,
		policyMap: &nftables.Set{Table: hostTable, Name: "policy-" + cfg.Bridge, KeyType: nftables.TypeIPAddr,
			DataType: nftables.TypeVerdict, IsMap: true}}
	err = p.onHost(func() error {
		found := map[int]bool{}
		ls, err := whole(netlink.LinkList)
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		prefix := bridgeTAPPrefix(cfg.Bridge)
		var errs []error
		for _, l := range ls {
			if i, ok := parseIndex(l.Attrs().Name, prefix); ok && !keep[i] {
				found[i] = true
				errs = append(errs, deleteLink(l.Attrs().Name))
			}
		}
		c, err := nftables.New()
		if err != nil {
			return fmt.Errorf("open nftables: %w", err)
		}
		if ok, err := hostTableExists(c); err != nil || !ok {
			removed = len(found)
			return errors.Join(append(errs, err)...)
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("list inet chains: %w", err)
		}
		chainPrefix := "p-" + cfg.Bridge + "-"
		n := 0
		for _, ch := range chains {
			i, ok := parseIndex(ch.Name, chainPrefix)
			if ch.Table.Name != TableName || !ok || keep[i] {
				continue
			}
			found[i] = true
			// The element may be gone already; delete it on its own so a
			// missing one does not fail the chain's removal.
			if err := p.delElement(i); err != nil {
				errs = append(errs, err)
			}
			c.FlushChain(ch)
			c.DelChain(ch)
			n++
		}
		if n > 0 {
			if err := c.Flush(); err != nil {
				errs = append(errs, fmt.Errorf("delete policy chains of bridge %s: %w", cfg.Bridge, err))
			}
		}
		removed = len(found)
		return errors.Join(errs...)
	})
	log.Info("reclaimed bridge slots", "bridge", cfg.Bridge, "removed", removed, "kept", len(keep))
	return removed, err
}

// delElement deletes slot index's policy map element; a missing one is
// success.
func (p *BridgePool) delElement(index int) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	a := p.cfg.bridgeSlot(index).GuestAddr
	if err := c.SetDeleteElements(p.policyMap, []nftables.SetElement{{Key: a.AsSlice()}}); err != nil {
		return err
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete %s from map %s: %w", a, p.policyMap.Name, err)
	}
	return nil
}
