//go:build linux

package network

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// reset readies slot s for another sandbox: nothing of the previous one's
// connections survives (its namespace's conntrack table is flushed, and the
// host's entries for its host address deleted) and its policy is
// DefaultPolicy again.
func (p *Pool) reset(s *Slot) error {
	return p.onHost(func() error { return p.resetHere(s) })
}

// resetHere is reset on a thread in the host namespace.
func (p *Pool) resetHere(s *Slot) error {
	ns, err := vnetns.GetFromPath(s.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", s.NetnsPath, err)
	}
	defer ns.Close()
	if err := flushConntrack(ns, s.HostAddr); err != nil {
		return err
	}
	if err := writeSlotPolicy(int(ns), p.cfg.alwaysDenied(), DefaultPolicy); err != nil {
		return fmt.Errorf("netns %s: %w", s.Netns, err)
	}
	return nil
}

// setSlotPolicy writes pol into slot s's namespace.
func setSlotPolicy(s *Slot, denied []netip.Prefix, pol Policy) error {
	ns, err := vnetns.GetFromPath(s.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", s.NetnsPath, err)
	}
	defer ns.Close()
	if err := writeSlotPolicy(int(ns), denied, pol); err != nil {
		return fmt.Errorf("netns %s: %w", s.Netns, err)
	}
	return nil
}

// flushConntrack forgets every connection of a slot: the whole table of its
// namespace ns (only the slot's traffic passes there) and the host's entries
// to or from its host address (the host's side of the same flows).
func flushConntrack(ns vnetns.NsHandle, hostAddr netip.Addr) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open netlink in netns: %w", err)
	}
	defer h.Close()
	var errs []error
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		errs = append(errs, fmt.Errorf("flush conntrack in slot netns: %w", err))
	}
	if err := flushHostConntrack(hostAddr); err != nil {
		errs = append(errs, fmt.Errorf("host: %w", err))
	}
	return errors.Join(errs...)
}
