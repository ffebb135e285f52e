package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/emberhq/ember/internal/store"
)

// Recover takes over the sandboxes a previous daemon left in the store:
// running machines whose VMM process survived are re-adopted with their slots;
// the rest are released and kept in the error state with the reason, so no
// sandbox is forgotten silently. It returns the slot indexes now in use, for
// the caller's reclaim of orphaned network objects.
func (m *Manager) Recover(ctx context.Context) (slots map[int]bool, err error) {
	recs, err := m.d.Store.ListSandboxes(ctx)
	if err != nil {
		return nil, err
	}
	slots = map[int]bool{}
	var adopted, failed, finished int
	for _, r := range recs {
		sb := &Sandbox{}
		sb.publish(r)
		if err := m.register(sb, r.ID); err != nil {
			return nil, err
		}
		switch r.State {
		case StateError:
			continue
		case StatePaused:
			if parker, ok := m.d.Slots.(SlotParker); ok && r.SlotIndex >= 0 {
				if err := parker.Reserve(r.SlotIndex); err != nil {
					m.log.Error("reserve parked slot of paused sandbox", "sandbox", r.ID, "slot", r.SlotIndex, "err", err)
				}
			}
			continue
		case StatePausing, StateResuming:
			// Interrupted with the saved state either complete (the
			// directory appears by rename) or not there at all.
			m.stopOrphan(ctx, sb, r)
			sb.mu.Lock()
			if _, err := os.Stat(pauseDir(r)); err == nil {
				m.settlePaused(ctx, sb, r)
			} else {
				m.fail(sb, r, "daemon stopped while the sandbox was "+r.State+", before its state was saved")
				failed++
			}
			sb.mu.Unlock()
		case StateRunning:
			if err := m.adopt(ctx, sb, r); err == nil {
				slots[r.SlotIndex] = true
				adopted++
				continue
			} else {
				m.log.Warn("sandbox not re-adopted", "sandbox", r.ID, "err", err)
			}
			sb.mu.Lock()
			m.fail(sb, r, "vmm process gone after daemon restart")
			sb.mu.Unlock()
			failed++
		case StateStopping:
			// The client asked for it gone: finish the destroy.
			m.stopOrphan(ctx, sb, r)
			if err := m.Destroy(ctx, r.ID); err != nil {
				m.log.Error("finish interrupted destroy", "sandbox", r.ID, "err", err)
			}
			finished++
		default: // creating: the client never got an answer
			m.stopOrphan(ctx, sb, r)
			sb.mu.Lock()
			m.fail(sb, r, "daemon stopped while the sandbox was being created")
			sb.mu.Unlock()
			failed++
		}
	}
	if err := m.reclaimSnapshots(ctx); err != nil {
		m.log.Error("reclaim snapshot files", "err", err)
	}
	m.log.Info("recovered sandboxes", "adopted", adopted, "failed", failed, "destroyed", finished)
	return slots, nil
}

// adopt re-attaches a surviving machine, its slot and its agent.
func (m *Manager) adopt(ctx context.Context, sb *Sandbox, r store.Sandbox) error {
	if r.VMMPID <= 0 || r.SlotIndex < 0 {
		return errors.New("no vmm pid or slot recorded")
	}
	machine, err := m.d.VMM.Attach(ctx, m.spec(r, "", "", "", "", ""), r.VMMPID)
	if err != nil {
		return fmt.Errorf("attach vmm pid %d: %w", r.VMMPID, err)
	}
	slot, err := m.d.Slots.Adopt(r.SlotIndex)
	if err != nil {
		return errors.Join(fmt.Errorf("adopt slot %d: %w", r.SlotIndex, err), machine.Stop(context.WithoutCancel(ctx)))
	}
	ag := m.d.Agent(slot.HostAddr, r.Token)
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := ag.WaitReady(hctx); err != nil {
		return errors.Join(fmt.Errorf("agent: %w", err), machine.Stop(context.WithoutCancel(ctx)),
			m.d.Slots.Return(context.WithoutCancel(ctx), slot))
	}
	sb.mu.Lock()
	sb.machine, sb.slot = machine, slot
	sb.setLive(ag, slot.HostAddr)
	sb.mu.Unlock()
	m.watch(sb, machine)
	return nil
}

// settlePaused finishes an interrupted pause or undoes an interrupted
// resume: no VMM runs, the disk is detached and the sandbox is paused.
// Called with sb.mu held.
func (m *Manager) settlePaused(ctx context.Context, sb *Sandbox, r store.Sandbox) {
	if err := m.d.Disks.Detach(ctx, r.ID, r.Dir); err != nil {
		m.log.Warn("detach disk of paused sandbox", "sandbox", r.ID, "err", err)
	}
	slotIndex := -1
	if parker, ok := m.d.Slots.(SlotParker); ok && r.SlotIndex >= 0 {
		// Keep the saved guest's address: park the slot if it still
		// exists, else hold its address.
		if s, err := m.d.Slots.Adopt(r.SlotIndex); err == nil {
			err = parker.Park(ctx, s)
			if err != nil {
				m.log.Warn("park slot of paused sandbox", "sandbox", r.ID, "slot", r.SlotIndex, "err", err)
			}
		} else if err := parker.Reserve(r.SlotIndex); err != nil {
			m.log.Warn("reserve slot of paused sandbox", "sandbox", r.ID, "slot", r.SlotIndex, "err", err)
		}
		slotIndex = r.SlotIndex
	}
	r.State, r.VMMPID, r.SlotIndex = StatePaused, 0, slotIndex
	if err := m.put(ctx, sb, r); err != nil {
		m.log.Error("record paused sandbox", "sandbox", r.ID, "err", err)
	}
}

// stopOrphan stops a machine recorded for a sandbox that is not to be kept.
func (m *Manager) stopOrphan(ctx context.Context, sb *Sandbox, r store.Sandbox) {
	if r.VMMPID <= 0 {
		return
	}
	machine, err := m.d.VMM.Attach(ctx, m.spec(r, "", "", "", "", ""), r.VMMPID)
	if err != nil {
		return // already gone
	}
	if err := machine.Stop(context.WithoutCancel(ctx)); err != nil {
		m.log.Error("stop orphaned vmm", "sandbox", r.ID, "pid", r.VMMPID, "err", err)
	}
}

// RunReaper destroys sandboxes past their end time until ctx ends or the
// manager closes. It reads end times from the records, so it picks up where a
// previous daemon left off.
func (m *Manager) RunReaper(ctx context.Context, every time.Duration) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-m.stop:
				return
			case now := <-t.C:
				m.reap(ctx, now)
			}
		}
	}()
}

// reap ends the running sandboxes past their end time: paused when they
// asked for auto-pause (destroyed if this VMM cannot pause), else destroyed.
// Paused sandboxes do not expire: their end time starts again on resume.
func (m *Manager) reap(ctx context.Context, now time.Time) {
	for _, r := range m.records() {
		if r.State != StateRunning || now.Before(r.ExpiresAt) {
			continue
		}
		m.log.Info("sandbox timed out", "sandbox", r.ID, "expires_at", r.ExpiresAt, "auto_pause", r.AutoPause)
		if r.AutoPause {
			_, err := m.Pause(ctx, r.ID)
			if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
				continue
			}
			if !errors.Is(err, ErrUnsupported) {
				m.log.Error("pause timed-out sandbox", "sandbox", r.ID, "err", err)
				continue // try again at the next tick
			}
		}
		if err := m.Destroy(ctx, r.ID); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Error("destroy timed-out sandbox", "sandbox", r.ID, "err", err)
		}
	}
}
