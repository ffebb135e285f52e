package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/cleanup"
	"github.com/emberhq/ember/internal/failpoint"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/wire"
)

// pauseDir holds a paused sandbox's saved machine state. It appears (by a
// rename) only once the state is complete, so its presence means "resumable".
func pauseDir(r store.Sandbox) string { return filepath.Join(r.Dir, "pause") }

// Pause saves a running sandbox's machine state, stops its VMM, detaches its
// disk and parks its slot. A paused sandbox costs disk space only.
func (m *Manager) Pause(ctx context.Context, id string) (store.Sandbox, error) {
	done, err := m.begin()
	if err != nil {
		return store.Sandbox{}, err
	}
	defer done()
	sb, err := m.lookupLocked(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	defer sb.mu.Unlock()
	r, err := m.pauseLocked(ctx, sb, sb.Record())
	if err != nil {
		return store.Sandbox{}, err
	}
	return m.withUsage(r), nil
}

// lookupLocked finds a sandbox and locks it; a sandbox destroyed while the
// caller waited for the lock is not found.
func (m *Manager) lookupLocked(id string) (*Sandbox, error) {
	sb, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	sb.mu.Lock()
	if _, err := m.lookup(id); err != nil {
		sb.mu.Unlock()
		return nil, err
	}
	return sb, nil
}

func (m *Manager) pauseLocked(ctx context.Context, sb *Sandbox, r store.Sandbox) (_ store.Sandbox, err error) {
	if r.State != StateRunning || sb.machine == nil {
		return store.Sandbox{}, stateError(r, "running")
	}
	snapper, ok := sb.machine.(vmm.Snapshotter)
	if !ok {
		return store.Sandbox{}, fmt.Errorf("pause sandbox %s: %w", r.ID, m.unsupported())
	}
	o := m.track(OpPause, wire.EventPaused, r.ID, r.Template)
	defer func() { o.end(err, sb.Record().State) }()
	start := time.Now()
	machine, prev := sb.machine, sb.live.Load()
	// Back to running when the machine could not be saved: it never stopped.
	rollback := func(cause error) (store.Sandbox, error) {
		ctx := context.WithoutCancel(ctx)
		errs := []error{cause}
		if err := machine.Resume(ctx); err != nil {
			errs = append(errs, fmt.Errorf("resume vcpus: %w", err))
		}
		r.State = StateRunning
		sb.live.Store(prev)
		if err := m.put(ctx, sb, r); err != nil {
			errs = append(errs, err)
		}
		return store.Sandbox{}, opError("pause", r.ID, "save the machine", ErrVMMSave, errors.Join(errs...))
	}

	r.State = StatePausing
	sb.setLive(nil, netip.Addr{})
	if err := m.put(ctx, sb, r); err != nil {
		sb.live.Store(prev)
		return store.Sandbox{}, err
	}
	failpoint.Hit(failpoint.PausePausing)
	if err := machine.Pause(ctx); err != nil {
		return rollback(fmt.Errorf("pause vcpus: %w", err))
	}
	failpoint.Hit(failpoint.PauseStopped)
	dir := pauseDir(r)
	tmp := dir + ".tmp"
	if err := freshDir(tmp); err != nil {
		return rollback(err)
	}
	if err := snapper.Snapshot(ctx, tmp, vmm.SnapshotOptions{}); err != nil {
		return rollback(errors.Join(fmt.Errorf("save machine state: %w", err), os.RemoveAll(tmp)))
	}
	failpoint.Hit(failpoint.PauseSaved)
	if err := replaceDir(tmp, dir); err != nil {
		return rollback(errors.Join(err, os.RemoveAll(tmp)))
	}
	o.phase("save")
	failpoint.Hit(failpoint.PausePublished)

	// From here the saved state is the sandbox: what the running machine
	// held goes (the VMM first, it holds the disk open), what the paused
	// sandbox keeps stays.
	ctx = context.WithoutCancel(ctx)
	if err := sb.held.Release(ctx, cleanup.Runtime); err != nil {
		o.fail(sb, "pause: "+err.Error())
		return store.Sandbox{}, fmt.Errorf("pause sandbox %s: %w", r.ID, err)
	}
	o.phase("release")
	failpoint.Hit(failpoint.PauseReleased)
	slotIndex := -1
	if sb.parked {
		slotIndex = r.SlotIndex
	}
	r.State, r.VMMPID, r.SlotIndex = StatePaused, 0, slotIndex
	r.TimingsMS = withTiming(r.TimingsMS, "pause", time.Since(start))
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	return r, nil
}

// Resume brings a paused sandbox back: its disk re-attached, a slot (the
// parked one, where the provider kept it), the machine restored from the
// saved state and the agent answering. Its end time starts again from now.
func (m *Manager) Resume(ctx context.Context, id string) (store.Sandbox, error) {
	done, err := m.begin()
	if err != nil {
		return store.Sandbox{}, err
	}
	defer done()
	sb, err := m.lookupLocked(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	defer sb.mu.Unlock()
	r, err := m.resumeLocked(ctx, sb, sb.Record())
	if err != nil {
		return store.Sandbox{}, err
	}
	return m.withUsage(r), nil
}

func (m *Manager) resumeLocked(ctx context.Context, sb *Sandbox, r store.Sandbox) (rec store.Sandbox, err error) {
	if r.State != StatePaused {
		return store.Sandbox{}, stateError(r, "paused")
	}
	restorer, ok := m.d.VMM.(vmm.Restorer)
	if !ok {
		return store.Sandbox{}, fmt.Errorf("resume sandbox %s: %w", r.ID, m.unsupported())
	}
	pol, err := Policy(r.Network)
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("resume sandbox %s: stored policy: %w", r.ID, err)
	}
	o := m.track(OpResume, wire.EventResumed, r.ID, r.Template)
	// Registered first, so it runs last: after a failed resume is undone.
	defer func() { o.end(err, sb.Record().State) }()
	dir := pauseDir(r)
	if _, err := os.Stat(dir); err != nil {
		return store.Sandbox{}, m.lost(o, sb, fmt.Sprintf("saved machine state %s unreadable: %v", dir, err))
	}
	reservation, turnDone, err := m.admit(ctx, r.VCPUs, r.MemoryMiB)
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("resume sandbox %s: %w", r.ID, err)
	}
	defer turnDone()
	m.holdReservation(sb, reservation)
	start := time.Now()
	paused := r
	r.State = StateResuming
	if err := m.put(ctx, sb, r); err != nil {
		reservation()
		return store.Sandbox{}, err
	}
	failpoint.Hit(failpoint.ResumeResuming)
	lostDisk := false
	defer func() {
		if err == nil || lostDisk {
			return
		}
		// Back to paused: what this resume acquired goes, what the paused
		// sandbox keeps stays.
		if cerr := sb.held.Release(ctx, cleanup.Runtime); cerr != nil {
			m.log.Error("undo failed resume", "sandbox", r.ID, "err", cerr)
		}
		if perr := m.put(ctx, sb, paused); perr != nil {
			err = errors.Join(err, perr)
		}
	}()

	disk, err := m.d.Disks.Attach(ctx, r.ID, r.Dir)
	if errors.Is(err, rootfs.ErrNotFound) {
		lostDisk = true
		return store.Sandbox{}, m.lost(o, sb, "disk gone: "+err.Error())
	} else if err != nil {
		return store.Sandbox{}, opError("resume", r.ID, "attach its disk", ErrDisk, err)
	}
	m.holdAttachment(sb, r.ID, r.Dir)
	r.DiskPath, r.DiskFormat = disk.Path, disk.Format
	o.phase("disk")
	failpoint.Hit(failpoint.ResumeAttached)

	s, err := m.d.Slots.Unpark(ctx, paused.SlotIndex)
	if err != nil {
		return store.Sandbox{}, opError("resume", r.ID, "get a network slot", ErrNetwork, err)
	}
	m.holdSlot(sb, s)
	if err := m.d.Slots.SetPolicy(ctx, s, pol); err != nil {
		return store.Sandbox{}, opError("resume", r.ID, "apply its network policy", ErrNetwork, err)
	}
	r.SlotIndex = s.Index
	o.phase("network")

	if err := m.makeCgroup(sb, r); err != nil {
		return store.Sandbox{}, fmt.Errorf("resume sandbox %s: %w", r.ID, err)
	}
	machine, err := restorer.Restore(ctx, m.spec(r, m.kernelOf(r.Template), s), dir)
	if err != nil {
		return store.Sandbox{}, opError("resume", r.ID, "restore the machine ("+m.d.VMM.Name()+")", ErrVMMStart, err)
	}
	m.holdMachine(sb, machine)
	r.VMMPID = machine.PID()
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	o.phase("restore")
	failpoint.Hit(failpoint.ResumeRestored)

	ag := m.d.Agent(s.HostAddr, r.Token)
	readyCtx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	if err := ag.WaitReady(readyCtx); err != nil {
		return store.Sandbox{}, bootError("resume", r.ID, r.Dir, err)
	}
	// The guest wakes with the clock it was saved with; Init moves it to
	// the host's (and re-sends env and token, which it already has).
	if err := ag.Init(readyCtx, nil); err != nil {
		return store.Sandbox{}, opError("resume", r.ID, "set the guest up", ErrAgent, err)
	}
	o.phase("agent")

	now := time.Now()
	r.State = StateRunning
	r.ExpiresAt = now.Add(m.lifetime(r)).UTC()
	r.TimingsMS = withTiming(r.TimingsMS, "resume", now.Sub(start))
	m.holdLive(sb, ag, s)
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	failpoint.Hit(failpoint.ResumeRunning)
	m.watch(sb, machine)
	// The saved state is stale once the guest runs on: drop it.
	if err := os.RemoveAll(dir); err != nil {
		m.log.Warn("remove saved state of resumed sandbox", "sandbox", r.ID, "err", err)
	}
	o.with("slot", s.Index, "pid", r.VMMPID)
	return r, nil
}

// lost moves a paused sandbox whose saved state or disk is gone to the error
// state (it can never resume) and returns the error that says so.
func (m *Manager) lost(o *tracker, sb *Sandbox, reason string) error {
	o.fail(sb, "resume: "+reason)
	return fmt.Errorf("sandbox %s cannot resume (%s); it is now in the error state: %w", sb.Record().ID, reason, ErrConflict)
}

// lifetime is how long a sandbox lives from its (re)start.
func (m *Manager) lifetime(r store.Sandbox) time.Duration {
	if r.TimeoutS > 0 {
		return time.Duration(r.TimeoutS) * time.Second
	}
	return m.cfg.DefaultTimeout
}

// kernelOf returns the kernel of a restored machine's template: the one it
// was saved running. A template gone since gives "": the QEMU driver then
// takes the kernel its saved state names.
func (m *Manager) kernelOf(name string) string {
	tpl, err := m.d.Templates.Get(name)
	if err != nil {
		return ""
	}
	return tpl.Kernel
}

// SetTimeout sets a sandbox's end time to now + seconds; a paused sandbox
// keeps it as its lifetime for when it resumes.
func (m *Manager) SetTimeout(ctx context.Context, id string, seconds int) (store.Sandbox, error) {
	if seconds < 1 || time.Duration(seconds)*time.Second > m.cfg.Limits.MaxTimeout {
		return store.Sandbox{}, invalid("timeout_s", "must be between 1 and %d seconds, got %d", int(m.cfg.Limits.MaxTimeout/time.Second), seconds)
	}
	sb, err := m.lookupLocked(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	defer sb.mu.Unlock()
	r := sb.Record()
	if r.State != StateRunning && r.State != StatePaused {
		return store.Sandbox{}, stateError(r, "running or paused")
	}
	r.TimeoutS = seconds
	r.ExpiresAt = time.Now().Add(time.Duration(seconds) * time.Second).UTC()
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	return m.withUsage(r), nil
}

// withUsage fills in the bytes a sandbox's disk and saved memory occupy.
func (m *Manager) withUsage(r store.Sandbox) store.Sandbox {
	switch r.State {
	case StateError, StateCreating, StateStopping:
		return r
	}
	if n, err := m.d.Disks.Usage(context.Background(), r.ID, r.Dir); err == nil {
		r.DiskBytes = n
	}
	if r.State == StatePaused {
		r.MemoryBytes = allocated(pauseDir(r))
	}
	if r.State == StateRunning && m.d.Cgroups != nil {
		if u, err := m.d.Cgroups.Usage(r.ID); err == nil {
			r.Usage = &u
		}
	}
	return r
}

// allocated sums the blocks the files under path occupy (st_blocks × 512).
func allocated(path string) int64 {
	var n int64
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += blocks(info)
		}
		return nil
	})
	return n
}

func withTiming(t map[string]float64, phase string, d time.Duration) map[string]float64 {
	out := make(map[string]float64, len(t)+1)
	for k, v := range t {
		out[k] = v
	}
	out[phase] = ms(d)
	return out
}

// freshDir makes path an empty directory.
func freshDir(path string) error {
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("clear %s: %w", path, err)
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

// replaceDir renames src over dst, dropping what dst held.
func replaceDir(src, dst string) error {
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("clear %s: %w", dst, err)
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("publish %s: %w", dst, err)
	}
	return nil
}
