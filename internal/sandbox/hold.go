package sandbox

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/emberhq/ember/internal/cleanup"
	"github.com/emberhq/ember/internal/failpoint"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/vmm"
)

// The one place each resource of a sandbox is released. Whoever acquires a
// resource registers its release here, right after the acquire (create,
// resume, the re-adoption after a restart); whoever ends the sandbox, or part
// of it, runs the registered releases of its scope: pause the runtime ones,
// fail the runtime and storage ones, destroy all (package cleanup). A new
// resource adds one acquire, one hold below and one reclaim step.
// Every hold is called with sb.mu held.

// holdRecord registers the sandbox's record, its anchor: written first and
// deleted last.
func (m *Manager) holdRecord(sb *Sandbox, id string) {
	sb.held.Push(cleanup.Anchor, "record", func(ctx context.Context) error { return m.d.Store.DeleteSandbox(ctx, id) })
}

// holdRegistration registers the sandbox's entry in the manager's table.
func (m *Manager) holdRegistration(sb *Sandbox, id string) {
	sb.held.Push(cleanup.Anchor, "registration", func(context.Context) error { m.unregister(id); return nil })
}

// holdDir registers the sandbox's directory. It is released only once every
// newer release succeeded: a disk file under a live device, or a directory
// a VMM still writes to, is never removed.
func (m *Manager) holdDir(sb *Sandbox, dir string) {
	sb.held.Push(cleanup.Storage, "directory", func(context.Context) error {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
		return nil
	})
}

// holdDisk registers the sandbox's disk (its copy-on-write data).
func (m *Manager) holdDisk(sb *Sandbox, id, dir string) {
	sb.held.Push(cleanup.Storage, "disk", func(ctx context.Context) error { return m.d.Disks.Remove(ctx, id, dir) })
}

// holdAddress registers the address a slot provider may hold for the
// sandbox while it is paused (the bridge network mode), found from the
// record when released.
func (m *Manager) holdAddress(sb *Sandbox) {
	sb.held.Push(cleanup.Storage, "address", func(context.Context) error {
		if r := sb.rec.Load(); r != nil && r.SlotIndex >= 0 {
			m.d.Slots.Unreserve(r.SlotIndex)
		}
		return nil
	})
}

// holdStorage registers everything a sandbox keeps while it is not running,
// in acquisition order: what Recover re-registers for a recorded sandbox.
func (m *Manager) holdStorage(sb *Sandbox, id, dir string) {
	m.holdDir(sb, dir)
	m.holdDisk(sb, id, dir)
	m.holdAddress(sb)
}

// holdAttachment registers the disk's attachment to the host (a device,
// an open image): a pause detaches it and keeps the data.
func (m *Manager) holdAttachment(sb *Sandbox, id, dir string) {
	sb.held.Push(cleanup.Runtime, "disk attachment", func(ctx context.Context) error { return m.d.Disks.Detach(ctx, id, dir) })
}

// holdSlot registers the network slot the machine runs on. Releasing it
// parks it: the provider keeps the address where the paused guest needs it
// (and the storage "address" entry frees it on destroy).
func (m *Manager) holdSlot(sb *Sandbox, s *slot.Slot) {
	sb.slot = s
	sb.held.Push(cleanup.Runtime, "slot", func(ctx context.Context) error {
		held, err := m.d.Slots.Park(ctx, s)
		if err != nil {
			return fmt.Errorf("park slot %d: %w", s.Index, err)
		}
		sb.slot, sb.parked = nil, held
		return nil
	})
}

// holdMachine registers the VMM process. Stopping it on purpose clears
// sb.machine first, so the exit watcher does not take it for a crash.
func (m *Manager) holdMachine(sb *Sandbox, machine vmm.Machine) {
	sb.machine = machine
	sb.held.Push(cleanup.Runtime, "vmm", func(ctx context.Context) error {
		if sb.machine == machine {
			sb.machine = nil
		}
		if err := machine.Stop(ctx); err != nil {
			sb.machine = machine
			return fmt.Errorf("stop vmm pid %d: %w", machine.PID(), err)
		}
		if r := sb.rec.Load(); r != nil && r.State == StateStopping {
			failpoint.Hit(failpoint.DestroyVMM)
		}
		return nil
	})
}

// holdCgroup registers the sandbox's cgroup, which holds its VMM and
// helpers: released after them (a group with a process in it cannot go).
func (m *Manager) holdCgroup(sb *Sandbox, id string) {
	if m.d.Cgroups == nil {
		return
	}
	sb.held.Push(cleanup.Runtime, "cgroup", func(context.Context) error { return m.d.Cgroups.Remove(id) })
}

// holdLive registers what a running sandbox offers the host (its agent and
// address): withdrawn first, so no exec or proxied request reaches a
// machine on its way out.
func (m *Manager) holdLive(sb *Sandbox, a Agent, s *slot.Slot) {
	sb.setLive(a, s.HostAddr)
	sb.held.Push(cleanup.Runtime, "agent", func(context.Context) error { sb.setLive(nil, netip.Addr{}); return nil })
}
