package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
)

// Limits bound what a create or exec request may ask for.
type Limits struct {
	MaxVCPUs      int
	MinMemoryMiB  int
	MaxMemoryMiB  int
	MaxTimeout    time.Duration
	MaxExecTimout time.Duration
	MaxDiskMiB    int
	// MaxForks bounds the sandboxes one fork request makes.
	MaxForks int
}

// Config configures a Manager.
type Config struct {
	// Dir holds one directory per sandbox.
	Dir string
	// SnapshotDir holds one directory per snapshot; empty means "snapshots"
	// next to Dir.
	SnapshotDir string
	// TemplateSnapshots makes creates from a template restore a memory
	// snapshot of it, captured once (per template build, vCPUs and memory)
	// from the first cold boot's ready guest, instead of cold-booting.
	TemplateSnapshots bool
	// SlotAddressed says guests are addressed by their network slot (the
	// bridge network mode): a restored machine keeps the address it was
	// saved with, so nothing that restores one (pause, named snapshots,
	// forks, template snapshots) is offered.
	SlotAddressed bool
	// Defaults for fields a create request leaves zero.
	DefaultTemplate  string
	DefaultVCPUs     int
	DefaultMemoryMiB int
	DefaultTimeout   time.Duration
	// DefaultExecTimeout bounds a command that names no timeout.
	DefaultExecTimeout time.Duration
	// BootTimeout bounds the wait for a new guest's agent.
	BootTimeout time.Duration
	Limits      Limits
}

// DefaultConfig returns the defaults the daemon uses.
func DefaultConfig(dir string) Config {
	return Config{
		Dir:                dir,
		DefaultTemplate:    "base",
		DefaultVCPUs:       1,
		DefaultMemoryMiB:   256,
		DefaultTimeout:     5 * time.Minute,
		DefaultExecTimeout: 60 * time.Second,
		BootTimeout:        60 * time.Second,
		TemplateSnapshots:  true,
		Limits: Limits{
			MaxVCPUs:      32,
			MinMemoryMiB:  64,
			MaxMemoryMiB:  64 * 1024,
			MaxTimeout:    24 * time.Hour,
			MaxExecTimout: 24 * time.Hour,
			MaxDiskMiB:    256 * 1024,
			MaxForks:      16,
		},
	}
}

// Deps are the parts a Manager drives.
type Deps struct {
	Store     *store.Store
	Templates Templates
	Disks     rootfs.Backend
	Slots     Slots
	VMM       vmm.Driver
	Agent     AgentDialer
	Log       *slog.Logger
}

// Manager holds every sandbox of this daemon.
type Manager struct {
	cfg Config
	d   Deps
	log *slog.Logger

	// mu guards sandboxes and closed; never held across a kernel call or a
	// VMM request.
	mu        sync.RWMutex
	sandboxes map[string]*Sandbox
	closed    bool

	// snapMu serialises snapshot deletes against creates that use them;
	// it guards snapBusy (names being written) and snapRefs (creates in
	// flight per snapshot). Taken before mu, never the other way round.
	snapMu   sync.Mutex
	snapBusy map[string]bool
	snapRefs map[string]int

	// wg tracks background work (the reaper, reaps of dead machines).
	wg   sync.WaitGroup
	stop chan struct{}
}

// NewManager returns a manager with no sandboxes; call Recover to take over
// the ones a previous daemon left.
func NewManager(cfg Config, d Deps) (*Manager, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create sandbox dir %s: %w", cfg.Dir, err)
	}
	if cfg.SnapshotDir == "" {
		cfg.SnapshotDir = filepath.Join(filepath.Dir(cfg.Dir), "snapshots")
	}
	if err := os.MkdirAll(cfg.SnapshotDir, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshot dir %s: %w", cfg.SnapshotDir, err)
	}
	if cfg.Limits.MaxForks == 0 {
		cfg.Limits.MaxForks = DefaultConfig(cfg.Dir).Limits.MaxForks
	}
	return &Manager{
		cfg:       cfg,
		d:         d,
		log:       d.Log,
		sandboxes: map[string]*Sandbox{},
		snapBusy:  map[string]bool{},
		snapRefs:  map[string]int{},
		stop:      make(chan struct{}),
	}, nil
}

func (m *Manager) validate(req *CreateRequest) error {
	if req.Template == "" && req.Snapshot == "" {
		req.Template = m.cfg.DefaultTemplate
	}
	if req.VCPUs == 0 {
		req.VCPUs = m.cfg.DefaultVCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = m.cfg.DefaultMemoryMiB
	}
	if req.TimeoutS == 0 {
		req.TimeoutS = int(m.cfg.DefaultTimeout / time.Second)
	}
	l := m.cfg.Limits
	switch {
	case req.VCPUs < 1 || req.VCPUs > l.MaxVCPUs:
		return invalid("vcpus", "must be between 1 and %d, got %d", l.MaxVCPUs, req.VCPUs)
	case req.MemoryMiB < l.MinMemoryMiB || req.MemoryMiB > l.MaxMemoryMiB:
		return invalid("memory_mib", "must be between %d and %d, got %d", l.MinMemoryMiB, l.MaxMemoryMiB, req.MemoryMiB)
	case req.TimeoutS < 1 || time.Duration(req.TimeoutS)*time.Second > l.MaxTimeout:
		return invalid("timeout_s", "must be between 1 and %d seconds, got %d", int(l.MaxTimeout/time.Second), req.TimeoutS)
	}
	for k := range req.Env {
		if k == "" || containsAny(k, "=\x00") {
			return invalid("env", "invalid variable name %q", k)
		}
	}
	if req.Network == nil {
		pol := slot.DefaultPolicy
		req.Network = &pol
	}
	if err := req.Network.Validate(); err != nil {
		return invalid("network", "%v", err)
	}
	return nil
}

func containsAny(s, chars string) bool {
	for _, c := range s {
		for _, d := range chars {
			if c == d {
				return true
			}
		}
	}
	return false
}

// Create makes a sandbox and returns once its agent answers: cold-booted from
// a template, or restored from a snapshot (req.Snapshot). On error everything
// acquired is released and no record remains.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (rec store.Sandbox, err error) {
	var src source
	if req.Snapshot != "" {
		snap, release, err := m.useSnapshot(ctx, req.Snapshot)
		if err != nil {
			return store.Sandbox{}, err
		}
		// The reference keeps the snapshot from being deleted until the
		// new sandbox's record, which names it, is registered or gone.
		defer release()
		if err := fromSnapshot(&req, snap); err != nil {
			return store.Sandbox{}, err
		}
		src = source{template: snap.Template, kernel: m.kernelOf(snap.Template), rootfs: snapRootfs(snap.Dir),
			state: snapState(snap.Dir), snapshot: snap.Name, token: snap.Token}
	}
	if err := m.validate(&req); err != nil {
		return store.Sandbox{}, err
	}
	if src.snapshot == "" {
		tpl, err := m.d.Templates.Get(req.Template)
		if errors.Is(err, template.ErrNotFound) {
			return store.Sandbox{}, fmt.Errorf("template %q: %w", req.Template, ErrTemplateNotFound)
		} else if err != nil {
			return store.Sandbox{}, fmt.Errorf("look up template %q: %w", req.Template, err)
		}
		baseMiB := int((tpl.RootfsSizeBytes + 1<<20 - 1) >> 20)
		switch {
		case req.DiskMiB == 0:
			req.DiskMiB = baseMiB
		case req.DiskMiB < baseMiB || req.DiskMiB > m.cfg.Limits.MaxDiskMiB:
			return store.Sandbox{}, invalid("disk_mib", "must be between the template's %d and %d, got %d", baseMiB, m.cfg.Limits.MaxDiskMiB, req.DiskMiB)
		}
		src = source{template: tpl.Name, kernel: tpl.Kernel, rootfs: tpl.Rootfs, token: newToken()}
		if req.DiskMiB > baseMiB {
			src.sizeBytes = int64(req.DiskMiB) << 20
		} else {
			m.useTemplateSnapshot(&src, tpl, req)
		}
	}
	var restorer vmm.Restorer
	if src.state != "" {
		if err := m.restoreBlocked(); err != nil {
			return store.Sandbox{}, fmt.Errorf("restore from snapshot %q: %w", src.snapshot, err)
		}
		var ok bool
		if restorer, ok = m.d.VMM.(vmm.Restorer); !ok {
			return store.Sandbox{}, fmt.Errorf("restore from snapshot %q: %w", src.snapshot, ErrUnsupported)
		}
	}

	start := time.Now()
	id := newID()
	sb := &Sandbox{}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	r := store.Sandbox{
		ID: id, Template: src.template, State: StateCreating, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		DiskMiB: req.DiskMiB, Env: req.Env, Metadata: req.Metadata,
		Token: src.token, SlotIndex: -1, Dir: filepath.Join(m.cfg.Dir, id),
		CreatedAt: start.UTC(), ExpiresAt: start.Add(time.Duration(req.TimeoutS) * time.Second).UTC(),
		TimingsMS: map[string]float64{}, Network: storedPolicy(*req.Network),
		TimeoutS: req.TimeoutS, AutoPause: req.AutoPause, Snapshot: src.snapshot,
	}
	log := m.log.With("sandbox", id, "template", src.template)

	var undo cleanup
	defer func() {
		if err != nil {
			if cerr := undo.run(ctx); cerr != nil {
				log.Error("undo failed create", "err", cerr)
			}
		}
	}()

	// The record is the anchor: written first and deleted last, so a crash
	// at any point leaves something Recover finds.
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	undo.add(func(ctx context.Context) error { return m.d.Store.DeleteSandbox(ctx, id) })
	if err := m.register(sb, id); err != nil {
		return store.Sandbox{}, err
	}
	undo.add(func(context.Context) error { m.unregister(id); return nil })
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		return store.Sandbox{}, fmt.Errorf("create dir of sandbox %s: %w", id, err)
	}
	undo.add(func(context.Context) error { return os.RemoveAll(r.Dir) })

	phase := time.Now()
	disk, err := m.d.Disks.Prepare(ctx, id, r.Dir, src.rootfs, src.sizeBytes)
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("prepare disk of sandbox %s: %w", id, err)
	}
	undo.add(func(ctx context.Context) error { return m.d.Disks.Remove(ctx, id, r.Dir) })
	r.DiskPath, r.DiskFormat = disk.Path, disk.Format
	r.TimingsMS["disk"] = ms(time.Since(phase))

	phase = time.Now()
	slot, err := m.d.Slots.Get(ctx)
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("get network slot for sandbox %s: %w", id, err)
	}
	undo.add(func(ctx context.Context) error { return m.d.Slots.Return(ctx, slot) })
	if err := m.d.Slots.SetPolicy(ctx, slot, *req.Network); err != nil {
		return store.Sandbox{}, fmt.Errorf("apply network policy of sandbox %s: %w", id, err)
	}
	r.SlotIndex = slot.Index
	r.TimingsMS["network"] = ms(time.Since(phase))
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}

	phase = time.Now()
	spec := m.spec(r, src.kernel, slot.NetnsPath, slot.TAP, slot.GuestMAC, slot.BootArgs())
	var machine vmm.Machine
	if restorer != nil {
		machine, err = restorer.Restore(ctx, spec, src.state)
	} else {
		machine, err = m.d.VMM.Start(ctx, spec)
	}
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("start vmm of sandbox %s: %w", id, err)
	}
	undo.add(func(ctx context.Context) error { return machine.Stop(ctx) })
	r.VMMPID = machine.PID()
	if restorer != nil {
		r.TimingsMS["restore"] = ms(time.Since(phase))
	} else {
		r.TimingsMS["boot"] = ms(time.Since(phase))
	}
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}

	phase = time.Now()
	ag := m.d.Agent(slot.HostAddr, r.Token)
	readyCtx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	if err := ag.WaitReady(readyCtx); err != nil {
		return store.Sandbox{}, fmt.Errorf("wait for agent of sandbox %s (console log %s): %w", id, vmm.ConsoleLog(r.Dir), err)
	}
	r.TimingsMS["agent"] = ms(time.Since(phase))
	if src.capture != "" {
		phase = time.Now()
		if err := m.captureTemplate(ctx, machine, r, src.capture); err != nil {
			return store.Sandbox{}, err
		}
		r.TimingsMS["template_snapshot"] = ms(time.Since(phase))
	}
	phase = time.Now()
	// Init also moves a restored guest's clock to the host's.
	if err := ag.Init(readyCtx, r.Env); err != nil {
		return store.Sandbox{}, fmt.Errorf("init agent of sandbox %s: %w", id, err)
	}
	r.TimingsMS["init"] = ms(time.Since(phase))
	r.TimingsMS["total"] = ms(time.Since(start))

	r.State = StateRunning
	sb.machine, sb.slot = machine, slot
	sb.setLive(ag, slot.HostAddr)
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	m.watch(sb, machine)
	log.Info("sandbox created", "slot", slot.Index, "pid", r.VMMPID, "snapshot", src.snapshot, "timings_ms", r.TimingsMS)
	return r, nil
}

// source is what a new sandbox is made from: a template's kernel and base
// image, or a snapshot's (with its saved machine state to restore).
type source struct {
	template  string
	kernel    string
	rootfs    string
	sizeBytes int64
	// state is the saved machine state to restore; "" cold-boots.
	state    string
	snapshot string
	token    string
	// capture, on a cold boot, is where to save the template snapshot
	// once the agent is ready (see useTemplateSnapshot).
	capture string
}

func (m *Manager) spec(r store.Sandbox, kernel, netnsPath, tap, mac, bootArgs string) vmm.Spec {
	return vmm.Spec{
		ID: r.ID, Dir: r.Dir, Kernel: kernel, RootDisk: r.DiskPath, DiskFormat: r.DiskFormat,
		Netns: netnsPath, TAP: tap, MAC: mac, BootArgs: bootArgs, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB,
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// put persists r and publishes it to readers.
func (m *Manager) put(ctx context.Context, sb *Sandbox, r store.Sandbox) error {
	if err := m.d.Store.PutSandbox(context.WithoutCancel(ctx), r); err != nil {
		return err
	}
	sb.publish(r)
	return nil
}

func (m *Manager) register(sb *Sandbox, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.sandboxes[id] = sb
	return nil
}

func (m *Manager) unregister(id string) {
	m.mu.Lock()
	delete(m.sandboxes, id)
	m.mu.Unlock()
}

func (m *Manager) lookup(id string) (*Sandbox, error) {
	m.mu.RLock()
	sb, ok := m.sandboxes[id]
	m.mu.RUnlock()
	if !ok || sb.rec.Load() == nil {
		return nil, fmt.Errorf("sandbox %q: %w", id, ErrNotFound)
	}
	return sb, nil
}

// Get returns one sandbox's record, with its disk and memory usage.
func (m *Manager) Get(id string) (store.Sandbox, error) {
	sb, err := m.lookup(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	return m.withUsage(sb.Record()), nil
}

// List returns every sandbox's record, with its usage, oldest first.
func (m *Manager) List() []store.Sandbox {
	recs := m.records()
	for i := range recs {
		recs[i] = m.withUsage(recs[i])
	}
	return recs
}

// records returns every sandbox's record, oldest first.
func (m *Manager) records() []store.Sandbox {
	m.mu.RLock()
	out := make([]store.Sandbox, 0, len(m.sandboxes))
	for _, sb := range m.sandboxes {
		if r := sb.rec.Load(); r != nil {
			out = append(out, *r)
		}
	}
	m.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Address returns where the host reaches a running sandbox's guest.
func (m *Manager) Address(id string) (netip.Addr, error) {
	sb, err := m.lookup(id)
	if err != nil {
		return netip.Addr{}, err
	}
	l := sb.live.Load()
	if l == nil {
		return netip.Addr{}, fmt.Errorf("sandbox %s is %s, not running: %w", id, sb.Record().State, ErrConflict)
	}
	return l.addr, nil
}

// SetNetwork replaces a running sandbox's egress policy; it takes effect at
// once, on flows already open too.
func (m *Manager) SetNetwork(ctx context.Context, id string, pol slot.Policy) (store.Sandbox, error) {
	if err := pol.Validate(); err != nil {
		return store.Sandbox{}, invalid("network", "%v", err)
	}
	sb, err := m.lookup(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	r := sb.Record()
	if r.State != StateRunning || sb.slot == nil {
		return store.Sandbox{}, fmt.Errorf("sandbox %s is %s, not running: %w", id, r.State, ErrConflict)
	}
	if err := m.d.Slots.SetPolicy(ctx, sb.slot, pol); err != nil {
		return store.Sandbox{}, fmt.Errorf("apply network policy of sandbox %s: %w", id, err)
	}
	r.Network = storedPolicy(pol)
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	return r, nil
}

// Destroy stops a sandbox's machine, releases its disk and slot and deletes
// its record. A create in progress finishes first.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	sb, err := m.lookup(id)
	if err != nil {
		return err
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	r := sb.Record()
	if _, err := m.lookup(id); err != nil {
		// Destroyed (or its create undone) while we waited for the lock.
		return err
	}
	start := time.Now()
	r.State = StateStopping
	if err := m.put(ctx, sb, r); err != nil {
		return err
	}
	if err := m.releaseLocked(ctx, sb, r); err != nil {
		// Keep the record so the failure is visible and a retry can finish.
		r.State = StateError
		r.Error = "destroy: " + err.Error()
		if perr := m.put(ctx, sb, r); perr != nil {
			err = errors.Join(err, perr)
		}
		return fmt.Errorf("destroy sandbox %s: %w", id, err)
	}
	if err := m.d.Store.DeleteSandbox(context.WithoutCancel(ctx), id); err != nil {
		return err
	}
	m.unregister(id)
	m.log.Info("sandbox destroyed", "sandbox", id, "duration_ms", ms(time.Since(start)))
	if r.Snapshot != "" {
		m.dropHidden(ctx, r.Snapshot)
	}
	return nil
}

// releaseLocked stops the machine, then removes the disk (the VMM holds it
// open until it exits), returns the slot and removes the sandbox directory.
// Every step runs even if an earlier one failed; "already gone" is success.
func (m *Manager) releaseLocked(ctx context.Context, sb *Sandbox, r store.Sandbox) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	if sb.machine != nil {
		if err := sb.machine.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop vmm: %w", err))
		} else {
			sb.machine = nil
		}
	}
	if len(errs) > 0 {
		// The disk may still be open and the slot in use: keep both.
		return errors.Join(errs...)
	}
	if err := m.d.Disks.Remove(ctx, r.ID, r.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove disk: %w", err))
	}
	if parker, ok := m.d.Slots.(SlotParker); ok && sb.slot == nil && r.SlotIndex >= 0 {
		// A paused sandbox's parked address.
		parker.Unreserve(r.SlotIndex)
	}
	if sb.slot != nil {
		if err := m.d.Slots.Return(ctx, sb.slot); err != nil {
			errs = append(errs, fmt.Errorf("return slot %d: %w", sb.slot.Index, err))
		} else {
			sb.slot = nil
		}
	}
	if err := os.RemoveAll(r.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove dir: %w", err))
	}
	return errors.Join(errs...)
}

// Exec runs a command in a running sandbox, streaming its output to the
// writers as it is produced.
func (m *Manager) Exec(ctx context.Context, id string, req ExecRequest, stdout, stderr io.Writer) (ExecResult, error) {
	if req.Cmd == "" {
		return ExecResult{}, invalid("cmd", "must not be empty")
	}
	if req.Timeout < 0 || req.Timeout > m.cfg.Limits.MaxExecTimout {
		return ExecResult{}, invalid("timeout_s", "must be between 0 and %d seconds", int(m.cfg.Limits.MaxExecTimout/time.Second))
	}
	if req.Timeout == 0 {
		req.Timeout = m.cfg.DefaultExecTimeout
	}
	sb, err := m.lookup(id)
	if err != nil {
		return ExecResult{}, err
	}
	ag := sb.getAgent()
	if r := sb.Record(); r.State != StateRunning || ag == nil {
		return ExecResult{}, fmt.Errorf("sandbox %s is %s, not running: %w", id, r.State, ErrConflict)
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	start := time.Now()
	st, err := ag.Exec(ctx, agent.ExecRequest{Cmd: req.Cmd, Args: req.Args, Env: req.Env, Cwd: req.Cwd, Stdin: req.Stdin}, stdout, stderr)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return ExecResult{}, fmt.Errorf("exec %q in sandbox %s after %s: %w", req.Cmd, id, req.Timeout, ErrExecTimeout)
		}
		return ExecResult{}, fmt.Errorf("exec %q in sandbox %s: %w", req.Cmd, id, err)
	}
	return ExecResult{ExitCode: st.Code, Duration: time.Since(start)}, nil
}

// watch marks the sandbox as failed and releases it when its VMM exits
// without being asked to (a guest crash, an outside kill).
func (m *Manager) watch(sb *Sandbox, machine vmm.Machine) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		select {
		case <-machine.Done():
		case <-m.stop:
			return
		}
		sb.mu.Lock()
		defer sb.mu.Unlock()
		if sb.machine != machine {
			return // stopped on purpose
		}
		r := sb.Record()
		sb.machine = nil
		m.fail(sb, r, "vmm process exited unexpectedly")
	}()
}

// fail releases what a sandbox whose machine is gone still holds and keeps
// its record in the error state. Called with sb.mu held.
func (m *Manager) fail(sb *Sandbox, r store.Sandbox, reason string) {
	ctx := context.Background()
	rerr := m.releaseLocked(ctx, sb, r)
	r.State, r.Error, r.VMMPID, r.SlotIndex = StateError, reason, 0, -1
	if rerr != nil {
		r.Error += "; cleanup: " + rerr.Error()
	}
	sb.setLive(nil, netip.Addr{})
	if err := m.put(ctx, sb, r); err != nil {
		m.log.Error("record failed sandbox", "sandbox", r.ID, "err", err)
	}
	m.log.Warn("sandbox failed", "sandbox", r.ID, "reason", reason, "cleanup_err", rerr)
}

// Close stops background work. Running machines keep running: a restarted
// daemon re-adopts them (Recover).
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	close(m.stop)
	m.mu.Unlock()
	m.wg.Wait()
}

// restoreBlocked reports why this manager's machines cannot be saved and
// restored anywhere but where they were saved (named snapshots, forks,
// template snapshots), or nil. Pause asks pauseBlocked instead.
func (m *Manager) restoreBlocked() error {
	if m.cfg.SlotAddressed {
		return fmt.Errorf("the bridge network mode gives each guest its own address, which a restored machine cannot change: %w", ErrUnsupported)
	}
	return nil
}

// pauseBlocked reports why a sandbox cannot pause, or nil: with guests
// addressed by their slot, only a provider that parks slots lets the guest
// resume on its own address.
func (m *Manager) pauseBlocked() error {
	if _, ok := m.d.Slots.(SlotParker); ok {
		return nil
	}
	return m.restoreBlocked()
}
