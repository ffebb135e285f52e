package network

import (
	"net/netip"

	"github.com/emberhq/ember/internal/slot"
)

// Policy is what a sandbox's guest may reach (see package slot).
type Policy = slot.Policy

// DefaultPolicy is the policy of a fresh or reset slot: internet access, no
// lists.
var DefaultPolicy = slot.DefaultPolicy

// ErrInvalidPolicy wraps every Policy.Validate failure.
var ErrInvalidPolicy = slot.ErrInvalidPolicy

// MetadataAddr is the cloud metadata service address, always denied.
var MetadataAddr = slot.MetadataAddr

// alwaysDenied lists the destinations no policy opens, for a pool with cfg.
func (c Config) alwaysDenied() []netip.Prefix {
	return []netip.Prefix{
		c.HostCIDR,
		c.VethCIDR,
		netip.PrefixFrom(MetadataAddr, 32),
	}
}
