//go:build linux

package network

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The host table (inet ember) is shared by every slot and every pool on the
// host. It is created once and only ever added to; its rules carry a comment
// tag so a second pool (or a restarted daemon) recognises them instead of
// adding duplicates:
//
//	set slots        ifname: the host veth of every live slot (per-slot, keyed by index)
//	chain input      slots may answer the host, never open connections to it
//	chain forward    slots reach only the uplink (not each other, not other interfaces);
//	                 only replies come back in
//	chain postrouting  masquerade slot traffic (HostCIDR) leaving by the uplink
//
// Per-uplink rules are inserted at the head of their chain so they precede
// the drops, whichever pool added what first.
const slotSetName = "slots"

var hostTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

var (
	hostInput = &nftables.Chain{Name: "input", Table: hostTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: policyAccept()}
	hostForward = &nftables.Chain{Name: "forward", Table: hostTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: policyAccept()}
	hostPostrouting = &nftables.Chain{Name: "postrouting", Table: hostTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: policyAccept()}
	hostChains = []*nftables.Chain{hostInput, hostForward, hostPostrouting}
)

// hostMu serialises changes to the host table's structure within this
// process (AddSet also bumps a package-global counter in the nftables
// library).
var hostMu sync.Mutex

func policyAccept() *nftables.ChainPolicy {
	p := nftables.ChainPolicyAccept
	return &p
}

// newSlotSet returns a fresh description of the slots set (AddSet writes to it).
func newSlotSet() *nftables.Set {
	// Interface names are host-endian strings to nft; with the byte order
	// recorded, `nft list` shows the elements as names.
	return &nftables.Set{Table: hostTable, Name: slotSetName, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, Comment: "host veths of live slots"}
}

// ruleSpec is a rule the host table must hold, recognised by its tag.
type ruleSpec struct {
	chain *nftables.Chain
	tag   string
	head  bool // insert before the chain's existing rules
	exprs []expr.Any
}

// hostRules lists the host table's rules: the isolation guard always, egress
// for uplink when it is not empty.
func hostRules(uplink string, hostCIDR netip.Prefix) []ruleSpec {
	rules := []ruleSpec{
		{hostInput, "slot replies to host", false, concat(ifnameIn(unix.NFT_META_IIFNAME), ctReply(), verdict(expr.VerdictAccept))},
		{hostInput, "slots never reach host", false, concat(ifnameIn(unix.NFT_META_IIFNAME), verdict(expr.VerdictDrop))},
		{hostForward, "slots reach only the uplink", false, concat(ifnameIn(unix.NFT_META_IIFNAME), verdict(expr.VerdictDrop))},
		{hostForward, "only replies reach slots", false, concat(ifnameIn(unix.NFT_META_OIFNAME), verdict(expr.VerdictDrop))},
	}
	if uplink == "" {
		return rules
	}
	return append(rules,
		ruleSpec{hostForward, uplinkTag("slot egress", uplink), true,
			concat(ifnameIn(unix.NFT_META_IIFNAME), ifnameIs(unix.NFT_META_OIFNAME, uplink), verdict(expr.VerdictAccept))},
		ruleSpec{hostForward, uplinkTag("slot egress replies", uplink), true,
			concat(ifnameIs(unix.NFT_META_IIFNAME, uplink), ifnameIn(unix.NFT_META_OIFNAME), ctReply(), verdict(expr.VerdictAccept))},
		ruleSpec{hostPostrouting, uplinkTag("slot masquerade "+hostCIDR.String(), uplink), false,
			concat(ipv4Only(), ifnameIs(unix.NFT_META_OIFNAME, uplink), addrIn(12, hostCIDR), []expr.Any{&expr.Masq{}})},
	)
}

// uplinkTag tags a rule that belongs to one uplink.
func uplinkTag(what, uplink string) string { return what + " via " + uplink }

// CheckNFTables reports whether this host's nf_tables answers, by listing
// its tables: every rule ember writes goes through it.
func CheckNFTables() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	if _, err := c.ListTables(); err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	return nil
}

// ensureHostTable creates the host table, its sets and chains if missing and
// adds the rules it lacks. It never removes anything, so concurrent pools
// and a running daemon keep their slots.
func ensureHostTable(rules []ruleSpec, sets ...*nftables.Set) error {
	hostMu.Lock()
	defer hostMu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	c.AddTable(hostTable)
	for _, set := range append([]*nftables.Set{newSlotSet()}, sets...) {
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("add set %s: %w", set.Name, err)
		}
	}
	for _, ch := range hostChains {
		c.AddChain(ch)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("create nftables table inet %s: %w", TableName, err)
	}
	have := map[string]bool{}
	for _, ch := range hostChains {
		rs, err := c.GetRules(hostTable, ch)
		if err != nil {
			return fmt.Errorf("list rules of inet %s %s: %w", TableName, ch.Name, err)
		}
		for _, r := range rs {
			if tag, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
				have[ch.Name+"\x00"+tag] = true
			}
		}
	}
	added := 0
	for _, s := range rules {
		if have[s.chain.Name+"\x00"+s.tag] {
			continue
		}
		r := &nftables.Rule{Table: hostTable, Chain: s.chain, Exprs: s.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, s.tag)}
		if s.head {
			c.InsertRule(r)
		} else {
			c.AddRule(r)
		}
		added++
	}
	if added == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("add rules to nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// addSlotElement puts a slot's host veth into the slots set, which puts the
// slot under the host table's guard and egress rules.
func addSlotElement(veth string) error { return changeSlotElement(veth, true) }

// delSlotElement removes a slot's host veth from the slots set; an element,
// set or table that is already gone is success.
func delSlotElement(veth string) error { return changeSlotElement(veth, false) }

func changeSlotElement(veth string, add bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	op, change := "add %s to set %s", c.SetAddElements
	if !add {
		op, change = "delete %s from set %s", c.SetDeleteElements
	}
	err = change(newSlotSet(), []nftables.SetElement{{Key: ifname(veth)}})
	if err == nil {
		err = c.Flush()
	}
	if err == nil || !add && errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf(op+": %w", veth, slotSetName, err)
}

// listSlotElements returns the interface names in the slots set (none when
// the table does not exist).
func listSlotElements() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	// The library drops the errno from GetSetElements' error, so a missing
	// table cannot be told from a failure afterwards: look first.
	if ok, err := hostTableExists(c); err != nil || !ok {
		return nil, err
	}
	els, err := c.GetSetElements(newSlotSet())
	if err != nil {
		return nil, fmt.Errorf("list set inet %s %s: %w", TableName, slotSetName, err)
	}
	names := make([]string, 0, len(els))
	for _, e := range els {
		names = append(names, unpadIfname(e.Key))
	}
	return names, nil
}

// Chains of a slot namespace's own table (ip ember).
var (
	slotTable      = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	slotPrerouting = &nftables.Chain{Name: "prerouting", Table: slotTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest}
	slotPostrouting = &nftables.Chain{Name: "postrouting", Table: slotTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}
	slotForward = &nftables.Chain{Name: "forward", Table: slotTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: policyAccept()}
	// slotOutput subjects packets the namespace itself sends as the guest
	// to the policy too. The VMM's guest never takes this path (its packets
	// are forwarded from tap0); a process standing in for the guest inside
	// the namespace (tests, debugging tools) does, and must see the same
	// policy.
	slotOutput = &nftables.Chain{Name: "output", Table: slotTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: policyAccept()}
	// slotPolicy is a regular chain holding the sandbox's Policy; forward
	// jumps to it for everything the guest sends.
	slotPolicy = &nftables.Chain{Name: "policy", Table: slotTable}
)

// writeSlotTable installs a slot namespace's own table (ip ember), with pol
// as its policy, in one batch. It must run on a thread inside the namespace:
// the netlink socket is opened in the calling thread's namespace.
//
//	prerouting   ip daddr <HostAddr> dnat to 169.254.0.21
//	postrouting  oifname eth0 ip saddr 169.254.0.21 snat to <HostAddr>
//	forward      iifname tap0 ip saddr != 169.254.0.21 drop (no spoofed sources)
//	             iifname tap0 jump policy
//	output       ip saddr 169.254.0.21 jump policy
//	policy       see policyRules
func writeSlotTable(hostAddr netip.Addr, denied []netip.Prefix, pol Policy) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	t := c.AddTable(slotTable)
	for _, ch := range []*nftables.Chain{slotPrerouting, slotPostrouting, slotForward, slotOutput, slotPolicy} {
		c.AddChain(ch)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: slotPrerouting, Exprs: concat(
		addrIs(16, hostAddr), nat(expr.NATTypeDestNAT, GuestAddr))})
	c.AddRule(&nftables.Rule{Table: t, Chain: slotPostrouting, Exprs: concat(
		ifnameIs(unix.NFT_META_OIFNAME, nsVeth), addrIs(12, GuestAddr), nat(expr.NATTypeSourceNAT, hostAddr))})
	c.AddRule(&nftables.Rule{Table: t, Chain: slotForward, Exprs: concat(
		ifnameIs(unix.NFT_META_IIFNAME, TAPName),
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: GuestAddr.AsSlice()},
		},
		verdict(expr.VerdictDrop))})
	c.AddRule(&nftables.Rule{Table: t, Chain: slotForward, Exprs: concat(
		ifnameIs(unix.NFT_META_IIFNAME, TAPName),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: slotPolicy.Name}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: slotOutput, Exprs: concat(
		addrIs(12, GuestAddr),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: slotPolicy.Name}})})
	addPolicyRules(c, slotPolicy, denied, pol)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table ip %s: %w", TableName, err)
	}
	return nil
}

// writeSlotPolicy replaces the policy chain of the slot namespace open as
// nsFd in one batch: the old rules and the new go in the same transaction,
// so no packet sees a half-written policy.
func writeSlotPolicy(nsFd int, denied []netip.Prefix, pol Policy) error {
	c, err := nftables.New(nftables.WithNetNSFd(nsFd))
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	c.FlushChain(slotPolicy)
	addPolicyRules(c, slotPolicy, denied, pol)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write chain ip %s %s: %w", TableName, slotPolicy.Name, err)
	}
	return nil
}

// addPolicyRules queues the rules enforcing pol (see Policy for the
// precedence) on ch:
//
//	ct direction reply accept        answers on connections opened towards the guest
//	ip daddr <always denied> drop
//	ip daddr <deny> drop
//	ip daddr <allow> accept
//	accept | drop                    Internet
func addPolicyRules(c *nftables.Conn, ch *nftables.Chain, denied []netip.Prefix, pol Policy) {
	add := func(exprs ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: concat(exprs...)})
	}
	add([]expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirReply}},
	}, verdict(expr.VerdictAccept))
	for _, p := range denied {
		add(addrIn(16, p), verdict(expr.VerdictDrop))
	}
	for _, p := range pol.Deny {
		add(addrIn(16, p), verdict(expr.VerdictDrop))
	}
	for _, p := range pol.Allow {
		add(addrIn(16, p), verdict(expr.VerdictAccept))
	}
	if pol.Internet {
		add(verdict(expr.VerdictAccept))
	} else {
		add(verdict(expr.VerdictDrop))
	}
}

// Expression helpers. Register 1 carries every match.

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ifname is an interface name as nftables compares it: IFNAMSIZ bytes,
// zero-padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func unpadIfname(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// ifnameIn matches an interface (iifname or oifname key) in the slots set.
func ifnameIn(key expr.MetaKey) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: slotSetName},
	}
}

// ifnameIs matches one interface by name.
func ifnameIs(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

// ctReply matches packets of established or related connections.
func ctReply() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// ipv4Only restricts an inet-family rule to IPv4 before it reads IPv4 headers.
func ipv4Only() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// addrIs matches the IPv4 address at offset (12 source, 16 destination).
func addrIs(offset uint32, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

// addrIn matches an IPv4 address at offset inside prefix p.
func addrIn(offset uint32, p netip.Prefix) []expr.Any {
	var m [4]byte
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// nat rewrites the source or destination address to a.
func nat(t expr.NATType, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: a.AsSlice()},
		&expr.NAT{Type: t, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

func verdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k}}
}

// hostTableExists reports whether the host table exists.
func hostTableExists(c *nftables.Conn) (bool, error) {
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list inet tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// ctDirReply is conntrack's reply direction (IP_CT_DIR_REPLY), one byte to
// nftables.
const ctDirReply = 1

// The foreign forward chain: iptables (and Docker, which sets its policy to
// DROP) keep the host's forward filter in the base chain FORWARD of table
// ip filter. nftables runs every base chain on a hook and a drop anywhere is
// final, so ember's accept in its own table cannot override it: slot traffic
// needs an accept in that chain too. The rules go at the head of the chain,
// match only interfaces with ember's prefix and carry a comment tag, so they
// are added once however often a pool starts. They only keep the foreign
// chain from dropping slot traffic; what slots may reach is still decided by
// ember's own table.
var (
	foreignFilter      = &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}
	foreignForwardName = "FORWARD"
	foreignTagPrefix   = "ember: "
)

// foreignForwardRules are the accept rules ember keeps in a foreign FORWARD
// chain, in insertion order (each goes to the head): for the slot veths and
// for each bridge.
func foreignForwardRules(bridges ...string) []ruleSpec {
	rules := []ruleSpec{
		{nil, foreignTagPrefix + "slot traffic in", true, concat(ifnamePrefix(unix.NFT_META_IIFNAME, VethPrefix), verdict(expr.VerdictAccept))},
		{nil, foreignTagPrefix + "slot traffic out", true, concat(ifnamePrefix(unix.NFT_META_OIFNAME, VethPrefix), verdict(expr.VerdictAccept))},
	}
	for _, b := range bridges {
		rules = append(rules,
			ruleSpec{nil, foreignTagPrefix + "bridge " + b + " traffic in", true, concat(ifnameIs(unix.NFT_META_IIFNAME, b), verdict(expr.VerdictAccept))},
			ruleSpec{nil, foreignTagPrefix + "bridge " + b + " traffic out", true, concat(ifnameIs(unix.NFT_META_OIFNAME, b), verdict(expr.VerdictAccept))},
		)
	}
	return rules
}

// ensureForeignForward adds ember's accept rules (for slot veths and the
// given bridges) to the ip filter FORWARD base chain when that chain exists
// and lacks them. added reports whether
// it added any. Without such a chain it does nothing. (A host whose
// iptables are the legacy, non-nftables kind keeps FORWARD where nftables
// cannot see it.)
func ensureForeignForward(bridges ...string) (added bool, err error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("open nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("list ip chains: %w", err)
	}
	var fwd *nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name == foreignFilter.Name && ch.Name == foreignForwardName && ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward {
			fwd = ch
		}
	}
	if fwd == nil {
		return false, nil
	}
	rules, err := c.GetRules(fwd.Table, fwd)
	if err != nil {
		return false, fmt.Errorf("list rules of ip filter FORWARD: %w", err)
	}
	have := map[string]bool{}
	for _, r := range rules {
		if tag, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
			have[tag] = true
		}
	}
	for _, s := range foreignForwardRules(bridges...) {
		if have[s.tag] {
			continue
		}
		c.InsertRule(&nftables.Rule{Table: fwd.Table, Chain: fwd, Exprs: s.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, s.tag)})
		added = true
	}
	if !added {
		return false, nil
	}
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("add rules to ip filter FORWARD: %w", err)
	}
	return true, nil
}

// ifnamePrefix matches interfaces whose name starts with prefix (nft's
// iifname "prefix*", iptables' -i prefix+).
func ifnamePrefix(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}
}
