package e2b

import (
	"net/netip"
	"strings"

	"github.com/emberhq/ember/internal/slot"
	"go4.org/netipx"
)

// allTraffic is the prefix E2B's SDKs deny to cut a sandbox off the
// internet (ALL_TRAFFIC).
var allTraffic = netip.MustParsePrefix("0.0.0.0/0")

// createPolicy translates a create's egress settings into ember's policy,
// and says whether the sandbox's ports need its traffic token
// (allowPublicTraffic: false). nil policy: the daemon's default.
func createPolicy(allowInternet *bool, n *NetworkConfig) (*slot.Policy, bool, error) {
	if n == nil && allowInternet == nil {
		return nil, false, nil
	}
	private := false
	var allow, deny []string
	if n != nil {
		switch {
		case n.EgressProxy != nil:
			return nil, false, errNotServed("network.egressProxy: egress proxies are not served")
		case present(n.Rules):
			return nil, false, errNotServed("network.rules: request transforms are not served")
		case n.MaskRequestHost != "":
			return nil, false, errNotServed("network.maskRequestHost: host masking is not served")
		case len(n.HTTPSPorts) > 0:
			return nil, false, errNotServed("network.httpsPorts: the port proxy speaks plain HTTP to the sandbox")
		}
		private = n.AllowPublicTraffic != nil && !*n.AllowPublicTraffic
		allow, deny = n.AllowOut, n.DenyOut
	}
	pol, err := policy(allowInternet, allow, deny)
	return &pol, private, err
}

// updatePolicy translates PUT /sandboxes/{id}/network, which replaces the
// egress configuration whole (what it leaves out is cleared).
func updatePolicy(u NetworkUpdate) (slot.Policy, error) {
	switch {
	case u.EgressProxy != nil:
		return slot.Policy{}, errNotServed("egressProxy: egress proxies are not served")
	case present(u.Rules):
		return slot.Policy{}, errNotServed("rules: request transforms are not served")
	}
	return policy(u.AllowInternetAccess, u.AllowOut, u.DenyOut)
}

// policy turns E2B's egress lists into ember's. E2B lets allowOut win over
// denyOut; ember checks deny first. So 0.0.0.0/0 in denyOut (E2B's "no
// internet") becomes Internet off, and the rest of denyOut is what it
// covers outside allowOut, which keeps E2B's outcome for every address.
func policy(allowInternet *bool, allowOut, denyOut []string) (slot.Policy, error) {
	pol := slot.Policy{Internet: allowInternet == nil || *allowInternet}
	allowed, err := prefixes("allowOut", allowOut)
	if err != nil {
		return slot.Policy{}, err
	}
	denied, err := prefixes("denyOut", denyOut)
	if err != nil {
		return slot.Policy{}, err
	}
	var b netipx.IPSetBuilder
	for _, d := range denied {
		if d == allTraffic {
			pol.Internet = false
			continue
		}
		b.AddPrefix(d)
	}
	for _, a := range allowed {
		b.RemovePrefix(a)
	}
	set, err := b.IPSet()
	if err != nil {
		return slot.Policy{}, invalid("denyOut: %v", err)
	}
	pol.Allow, pol.Deny = allowed, set.Prefixes()
	if err := pol.Validate(); err != nil {
		return slot.Policy{}, invalid("network: %v", err)
	}
	return pol, nil
}

// prefixes parses CIDRs and bare IPv4 addresses; ember's egress policy
// knows no domain names.
func prefixes(field string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		if field == "allowOut" && strings.ContainsAny(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ*") {
			return nil, errNotServed(field + ": " + s + ": domain names are not served; ember's egress policy takes IP addresses and CIDRs")
		}
		return nil, invalid("%s: %q: want an IP address or a CIDR", field, s)
	}
	return out, nil
}
