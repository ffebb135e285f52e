package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/emberhq/ember/internal/cleanup"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/wire"
)

// Recover takes over the sandboxes a previous daemon left in the store:
// running machines whose VMM process survived are re-adopted with their slots;
// the rest are released and kept in the error state with the reason, so no
// sandbox is forgotten silently. Every sandbox's holds are registered again
// from its record (hold.go), so what it still owns is released where it
// would have been. It returns what survived (sandboxes, their VMM processes
// and slots), for the start-up reclaim of everything else.
func (m *Manager) Recover(ctx context.Context) (reclaim.Keep, error) {
	recs, err := m.d.Store.ListSandboxes(ctx)
	if err != nil {
		return reclaim.Keep{}, err
	}
	keep := reclaim.Keep{Dir: m.cfg.Dir, Sandboxes: map[string]bool{}, PIDs: map[int]bool{}, Slots: map[int]bool{},
		Running: map[string]bool{}}
	var adopted, failed, finished int
	for _, r := range recs {
		sb := &Sandbox{}
		sb.publish(r)
		if err := m.register(sb, r.ID); err != nil {
			return reclaim.Keep{}, err
		}
		keep.Sandboxes[r.ID] = true
		sb.mu.Lock()
		m.holdRecord(sb, r.ID)
		m.holdRegistration(sb, r.ID)
		m.holdStorage(sb, r.ID, r.Dir)
		switch r.State {
		case StateError:
		case StatePaused:
			if r.SlotIndex >= 0 {
				if _, err := m.d.Slots.Reserve(r.SlotIndex); err != nil {
					m.log.Error("reserve parked slot of paused sandbox", "sandbox", r.ID, "slot", r.SlotIndex, "err", err)
				}
			}
		case StatePausing, StateResuming:
			// Interrupted with the saved state either complete (the
			// directory appears by rename) or not there at all.
			_, serr := os.Stat(pauseDir(r))
			switch {
			case serr != nil && r.State == StatePausing:
				// Nothing saved: the guest is still in its VMM, its
				// vCPUs perhaps stopped. It runs on, re-adopted.
				if err := os.RemoveAll(pauseDir(r) + ".tmp"); err != nil {
					m.log.Warn("remove half-saved state", "sandbox", r.ID, "err", err)
				}
				if m.adoptOrFail(ctx, sb, r, keep) {
					adopted++
				} else {
					failed++
				}
			case serr != nil:
				m.fail(sb, opRecover, "daemon stopped while the sandbox was "+r.State+", and its saved state is gone")
				failed++
			default:
				if err := m.stopOrphan(ctx, r); err != nil {
					m.failKeeping(sb, "daemon stopped while the sandbox was "+r.State+": "+err.Error())
					failed++
				} else {
					m.settlePaused(ctx, sb, r)
				}
			}
		case StateRunning:
			if m.adoptOrFail(ctx, sb, r, keep) {
				adopted++
			} else {
				failed++
			}
		case StateWarm, StateWarming:
			m.recoverWarm(ctx, sb, r, keep)
		case StateStopping:
			// The client asked for it gone: finish the destroy.
			if err := m.stopOrphan(ctx, r); err != nil {
				m.failKeeping(sb, "destroy interrupted by a daemon stop: "+err.Error())
			} else if err := m.destroyLocked(ctx, sb); err != nil {
				m.log.Error("finish interrupted destroy", "sandbox", r.ID, "err", err)
			}
			finished++
		default: // creating: the client never got an answer
			if err := m.stopOrphan(ctx, r); err != nil {
				m.failKeeping(sb, "daemon stopped while the sandbox was being created: "+err.Error())
			} else {
				m.fail(sb, opRecover, "daemon stopped while the sandbox was being created")
			}
			failed++
		}
		sb.mu.Unlock()
	}
	if err := m.reclaimSnapshots(ctx); err != nil {
		m.log.Error("reclaim snapshot files", "err", err)
	}
	m.log.Info("recovered sandboxes", "adopted", adopted, "failed", failed, "destroyed", finished)
	return keep, nil
}

// adoptOrFail re-adopts a sandbox whose machine should run (running, or
// interrupted in a pause before its state was saved) and records it
// running; one whose machine is gone or does not answer goes to the error
// state. Called with sb.mu held.
func (m *Manager) adoptOrFail(ctx context.Context, sb *Sandbox, r store.Sandbox, keep reclaim.Keep) bool {
	err := m.adopt(ctx, sb, r)
	if err == nil {
		keep.Slots[r.SlotIndex], keep.PIDs[r.VMMPID], keep.Running[r.ID] = true, true, true
		if h, ok := sb.machine.(vmm.HelperProcs); ok {
			for _, pid := range h.Helpers() {
				keep.PIDs[pid] = true
			}
		}
		if r.State != StateRunning {
			r.State = StateRunning
			if err := m.put(ctx, sb, r); err != nil {
				m.log.Error("record re-adopted sandbox", "sandbox", r.ID, "err", err)
			}
			m.log.Info("interrupted pause undone: the guest runs on", "sandbox", r.ID)
		}
		return true
	}
	m.log.Warn("sandbox not re-adopted", "sandbox", r.ID, "err", err)
	if errors.Is(err, vmm.ErrNotRunning) {
		m.fail(sb, opRecover, "vmm process gone after daemon restart")
	} else {
		m.failKeeping(sb, "not re-adopted after daemon restart: "+err.Error())
	}
	return false
}

// adopt re-attaches a surviving machine, its slot and its agent, and
// registers what it holds. An error wrapping vmm.ErrNotRunning means the
// machine is gone or stopped; any other leaves it possibly alive (it did
// not answer). Called with sb.mu held.
func (m *Manager) adopt(ctx context.Context, sb *Sandbox, r store.Sandbox) error {
	ag, err := m.adoptMachine(ctx, sb, r)
	if err != nil {
		return err
	}
	m.holdLive(sb, ag, sb.slot)
	m.watch(sb, sb.machine)
	return nil
}

// adoptMachine is adopt up to the agent's answer: the machine, its slot,
// disk attachment, capacity and cgroup re-attached and held, the agent
// returned, not yet offered to clients. Called with sb.mu held.
func (m *Manager) adoptMachine(ctx context.Context, sb *Sandbox, r store.Sandbox) (Agent, error) {
	if r.VMMPID <= 0 || r.SlotIndex < 0 {
		return nil, fmt.Errorf("no vmm pid or slot recorded: %w", vmm.ErrNotRunning)
	}
	// The slot first: the machine's spec names its TAP and MAC, which a
	// later snapshot of it records (as it records the kernel), so that
	// the snapshot restores.
	s, err := m.d.Slots.Adopt(r.SlotIndex)
	if err != nil {
		if serr := m.stopOrphan(ctx, r); serr != nil {
			return nil, fmt.Errorf("adopt slot %d: %w; %w", r.SlotIndex, err, serr)
		}
		return nil, fmt.Errorf("adopt slot %d: %w: %w", r.SlotIndex, err, vmm.ErrNotRunning)
	}
	// A machine that runs holds what it holds: its capacity is counted
	// unchecked. Registered before the machine is attached, so a machine
	// that turns out gone gives them back with the rest (fail), and one
	// that does not answer keeps them (failKeeping).
	m.holdReservation(sb, m.adm.force(r.VCPUs, r.MemoryMiB))
	m.holdAttachment(sb, r.ID, r.Dir)
	m.holdSlot(sb, s)
	m.holdCgroup(sb, r.ID)
	machine, err := m.d.VMM.Attach(ctx, m.spec(r, m.kernelOf(r.Template), s), r.VMMPID)
	if err != nil {
		return nil, fmt.Errorf("attach vmm pid %d: %w", r.VMMPID, err)
	}
	// A daemon that died with the vCPUs stopped (in a pause, a snapshot
	// or a fork) leaves the guest frozen: it runs again.
	if st, ok := machine.(vmm.Stater); ok {
		if s, err := st.State(ctx); err == nil && s == vmm.StatePaused {
			if err := machine.Resume(ctx); err != nil {
				m.log.Warn("resume vcpus of re-adopted sandbox", "sandbox", r.ID, "err", err)
			} else {
				m.log.Info("re-adopted sandbox had its vcpus stopped: resumed", "sandbox", r.ID)
			}
		}
	}
	m.holdMachine(sb, machine)
	ag := m.d.Agent(s.HostAddr, r.Token)
	// A guest whose vCPUs were stopped, on a host busy with software
	// emulation, takes seconds to answer; given up on, a live guest
	// would be marked error.
	hctx, cancel := context.WithTimeout(ctx, adoptReadyTimeout)
	defer cancel()
	if err := ag.WaitReady(hctx); err != nil {
		if rerr := sb.held.Release(ctx, cleanup.Runtime); rerr != nil {
			return nil, fmt.Errorf("agent: %w; %w", err, rerr)
		}
		return nil, fmt.Errorf("agent: %w: %w", err, vmm.ErrNotRunning)
	}
	return ag, nil
}

// adoptReadyTimeout bounds the wait for a re-adopted guest's agent.
const adoptReadyTimeout = 15 * time.Second

// settlePaused finishes an interrupted pause or undoes an interrupted
// resume: no VMM runs, the disk is detached, the slot parked and the
// sandbox is paused. Called with sb.mu held.
func (m *Manager) settlePaused(ctx context.Context, sb *Sandbox, r store.Sandbox) {
	if err := m.d.Disks.Detach(ctx, r.ID, r.Dir); err != nil {
		m.log.Warn("detach disk of paused sandbox", "sandbox", r.ID, "err", err)
	}
	slotIndex := -1
	if r.SlotIndex >= 0 {
		// Park the slot if it still exists (the provider keeps the address
		// where the saved guest needs it), else hold its address.
		var held bool
		if s, err := m.d.Slots.Adopt(r.SlotIndex); err == nil {
			if held, err = m.d.Slots.Park(ctx, s); err != nil {
				m.log.Warn("park slot of paused sandbox", "sandbox", r.ID, "slot", r.SlotIndex, "err", err)
			}
		} else if held, err = m.d.Slots.Reserve(r.SlotIndex); err != nil {
			m.log.Warn("reserve slot of paused sandbox", "sandbox", r.ID, "slot", r.SlotIndex, "err", err)
		}
		if held {
			slotIndex = r.SlotIndex
		}
	}
	r.State, r.VMMPID, r.SlotIndex = StatePaused, 0, slotIndex
	if err := m.put(ctx, sb, r); err != nil {
		m.log.Error("record paused sandbox", "sandbox", r.ID, "err", err)
	}
}

// stopOrphan stops the machine recorded for a sandbox that is not to be
// kept. It returns nil once no such machine runs, and an error when one
// might (it is there but did not answer, or would not stop): then nothing
// it may hold open is released, and start-up reclaim ends the process.
func (m *Manager) stopOrphan(ctx context.Context, r store.Sandbox) error {
	if r.VMMPID <= 0 {
		return nil
	}
	machine, err := m.d.VMM.Attach(ctx, m.spec(r, "", nil), r.VMMPID)
	if errors.Is(err, vmm.ErrNotRunning) {
		return nil
	} else if err != nil {
		return fmt.Errorf("vmm pid %d did not answer: %w", r.VMMPID, err)
	}
	if err := machine.Stop(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("stop orphaned vmm pid %d: %w", r.VMMPID, err)
	}
	return nil
}

// failKeeping is fail for a sandbox whose VMM may still run: it records the
// error and releases nothing (the process may hold the disk and slot),
// leaving every hold for the destroy that follows reclaim's end of the
// process. Called with sb.mu held.
func (m *Manager) failKeeping(sb *Sandbox, reason string) {
	r := sb.Record()
	r.State, r.Error = StateError, reason
	if err := m.put(context.Background(), sb, r); err != nil {
		m.log.Error("record failed sandbox", "sandbox", r.ID, "err", err)
	}
	m.failed(r, opRecover, "sandbox failed; its resources stay held until it is deleted")
}

// RunReaper destroys sandboxes past their end time until ctx ends or the
// manager closes. It reads end times from the records, so it picks up where a
// previous daemon left off.
func (m *Manager) RunReaper(ctx context.Context, every time.Duration) {
	m.background(ctx, every, func(now time.Time) { m.reap(ctx, now) })
}

// background runs fn every interval, in the background, until ctx ends or
// the manager closes (which waits for it).
func (m *Manager) background(ctx context.Context, every time.Duration, fn func(now time.Time)) {
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
				fn(now)
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
		m.logOp(slog.LevelInfo, "sandbox timed out", r.ID, r.Template, opReap, 0, nil, "expires_at", r.ExpiresAt, "auto_pause", r.AutoPause)
		m.events.Publish(wire.Event{Type: wire.EventTimeout, Sandbox: r.ID, Template: r.Template, Op: opReap, State: r.State})
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
