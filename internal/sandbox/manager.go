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
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/cleanup"
	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/internal/failpoint"
	"github.com/emberhq/ember/internal/resource"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/wire"
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
	// Defaults for fields a create request leaves zero.
	DefaultTemplate  string
	DefaultVCPUs     int
	DefaultMemoryMiB int
	DefaultTimeout   time.Duration
	// DefaultExecTimeout bounds a command that names no timeout.
	DefaultExecTimeout time.Duration
	// BootTimeout bounds the wait for a new guest's agent.
	BootTimeout time.Duration
	// ReadyTimeout bounds the wait for a template's start command to be
	// ready (its ready command to succeed) on a cold boot.
	ReadyTimeout time.Duration
	Limits       Limits
	// SampleHistory bounds the usage samples kept per sandbox (see
	// RunSampler); 0 takes DefaultSampleHistory.
	SampleHistory int

	// Capacity bounds what running machines may commit and how many
	// creates and resumes run at once (admission.go).
	Capacity Capacity
	// Resources are the default bounds of a sandbox's cgroup: CPU per
	// vCPU, processes and I/O weight; its memory bound is its guest RAM
	// plus Capacity.OverheadMiB. A create may ask for less.
	Resources ResourceDefaults
}

// ResourceDefaults are the bounds a sandbox's cgroup gets unless its
// create asks for less.
type ResourceDefaults struct {
	CPUPerVCPU float64
	Pids       int
	IOWeight   int
}

// limitsFor returns the default bounds of a machine of that shape.
func (m *Manager) limitsFor(vcpus, memMiB int) resource.Limits {
	d := m.cfg.Resources
	return resource.Limits{CPUs: d.CPUPerVCPU * float64(vcpus), MemoryMiB: memMiB + m.cfg.Capacity.OverheadMiB,
		Pids: d.Pids, IOWeight: d.IOWeight}
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
		ReadyTimeout:       2 * time.Minute,
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
	// Observer hears of every lifecycle operation as it ends (the
	// daemon's metrics); nil: none.
	Observer Observer
	// Events receives the lifecycle events; nil gives the manager a hub
	// of its own (Events returns it).
	Events *event.Hub
	// Meter reads a running sandbox's VMM process on the host for its
	// usage samples; nil samples the guest alone.
	Meter HostMeter
	// Cgroups, when set, gives every running sandbox a cgroup.
	Cgroups Cgroups
}

// Manager holds every sandbox of this daemon.
type Manager struct {
	cfg    Config
	d      Deps
	log    *slog.Logger
	events *event.Hub

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

	// capMu guards capturing: the template snapshot directories being
	// captured, each with a channel closed when its capture is over.
	capMu     sync.Mutex
	capturing map[string]chan struct{}

	// pools are the templates' warm pools (warm.go).
	pools warmPools
	// tplMu serialises template deletes against creates from them
	// (templates.go): it guards tplBusy (templates being deleted) and
	// tplRefs (creates in flight per template).
	tplMu   sync.Mutex
	tplBusy map[string]bool
	tplRefs map[string]int

	// wg tracks background work (the reaper, reaps of dead machines); ops
	// the lifecycle operations in flight (begin).
	wg   sync.WaitGroup
	ops  sync.WaitGroup
	stop chan struct{}

	// adm commits capacity to machines and hands out create turns.
	adm *admission
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
	if cfg.SampleHistory <= 0 {
		cfg.SampleHistory = DefaultSampleHistory
	}
	events := d.Events
	if events == nil {
		events = event.NewHub(event.DefaultHistory)
	}
	return &Manager{
		cfg:       cfg,
		d:         d,
		log:       d.Log,
		events:    events,
		sandboxes: map[string]*Sandbox{},
		snapBusy:  map[string]bool{},
		snapRefs:  map[string]int{},
		capturing: map[string]chan struct{}{},
		pools:     newWarmPools(),
		stop:      make(chan struct{}),
		adm:       newAdmission(cfg.Capacity),
	}, nil
}

func (m *Manager) validate(req *CreateRequest) error {
	if req.Template == "" && req.Snapshot == "" && req.Image == nil {
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
	case req.AutoResume && !req.AutoPause:
		return invalid("auto_resume", "needs auto_pause: a sandbox destroyed at its end time has nothing to resume")
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
	def := m.limitsFor(req.VCPUs, req.MemoryMiB)
	if lim := def.Lower(req.Limits); req.Limits != (resource.Limits{}) {
		if f, ok := lim.Within(def); !ok {
			return invalid("limits."+f, "may only lower the daemon's bound (cpus %g, memory_mib %d, pids %d, io_weight %d)",
				def.CPUs, def.MemoryMiB, def.Pids, def.IOWeight)
		}
		if lim.MemoryMiB > 0 && lim.MemoryMiB < req.MemoryMiB {
			return invalid("limits.memory_mib", "must hold the guest's %d MiB of RAM, got %d", req.MemoryMiB, lim.MemoryMiB)
		}
		if lim.IOWeight != 0 && lim.IOWeight < 10 {
			return invalid("limits.io_weight", "must be between 10 and %d, got %d", max(def.IOWeight, 10), lim.IOWeight)
		}
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
func (m *Manager) Create(ctx context.Context, req CreateRequest) (store.Sandbox, error) {
	done, err := m.begin()
	if err != nil {
		return store.Sandbox{}, err
	}
	defer done()
	if r, ok, err := m.claimWarm(ctx, req); ok {
		return r, err
	}
	src, release, err := m.resolve(ctx, &req)
	if err != nil {
		return store.Sandbox{}, err
	}
	// A snapshot's reference keeps it from being deleted until the new
	// sandbox's record, which names it, is registered or gone.
	defer release()
	// Refused at once when its machine would overcommit the host; queued
	// for a turn when enough creates run already.
	reservation, turnDone, err := m.admit(ctx, req.VCPUs, req.MemoryMiB)
	for errors.Is(err, ErrNoCapacity) && !isQueueFull(err) && m.evictWarm(ctx) {
		// Warm sandboxes commit capacity as any machine does, but give
		// way to a client's create.
		reservation, turnDone, err = m.admit(ctx, req.VCPUs, req.MemoryMiB)
	}
	if err != nil {
		return store.Sandbox{}, err
	}
	defer turnDone()
	return m.create(ctx, req, src, reservation)
}

// resolve validates a create request and finds what the sandbox is made
// from: a snapshot (held until release) or a template, and whether it
// restores saved machine state.
func (m *Manager) resolve(ctx context.Context, req *CreateRequest) (_ source, release func(), err error) {
	release = func() {}
	var src source
	if req.Snapshot != "" {
		snap, rel, uerr := m.useSnapshot(ctx, req.Snapshot)
		if uerr != nil {
			return source{}, nil, uerr
		}
		// err is the named result: the reference goes with a failed resolve.
		defer func() {
			if err != nil {
				rel()
			}
		}()
		release = rel
		if err := fromSnapshot(req, snap); err != nil {
			return source{}, nil, err
		}
		src = source{template: snap.Template, kernel: m.kernelOf(snap.Template), rootfs: snapRootfs(snap.Dir),
			state: snapState(snap.Dir), snapshot: snap.Name, token: snap.Token}
	}
	if err := m.validate(req); err != nil {
		return source{}, nil, err
	}
	if req.Image != nil {
		if src, err = m.fromImage(req); err != nil {
			return source{}, nil, err
		}
	} else if src.snapshot == "" {
		rel, uerr := m.useTemplate(req.Template)
		if uerr != nil {
			return source{}, nil, uerr
		}
		// Held, like a snapshot's reference, until the new record names
		// the template (or the create failed).
		prev := release
		release = func() { rel(); prev() }
		defer func() {
			if err != nil {
				rel()
			}
		}()
		tpl, err := m.d.Templates.Get(req.Template)
		if errors.Is(err, template.ErrNotFound) {
			return source{}, nil, fmt.Errorf("template %q: %w", req.Template, ErrTemplateNotFound)
		} else if err != nil {
			return source{}, nil, fmt.Errorf("look up template %q: %w", req.Template, err)
		}
		baseMiB := int((tpl.RootfsSizeBytes + 1<<20 - 1) >> 20)
		switch {
		case req.DiskMiB == 0:
			req.DiskMiB = baseMiB
		case req.DiskMiB < baseMiB || req.DiskMiB > m.cfg.Limits.MaxDiskMiB:
			return source{}, nil, invalid("disk_mib", "must be between the template's %d and %d, got %d", baseMiB, m.cfg.Limits.MaxDiskMiB, req.DiskMiB)
		}
		src = source{template: tpl.Name, kernel: tpl.Kernel, rootfs: tpl.Rootfs, token: newToken(), key: tpl.Key}
		withTemplateConfig(req, &src, tpl)
		if req.DiskMiB > baseMiB {
			src.sizeBytes = int64(req.DiskMiB) << 20
		} else if err := m.useTemplateSnapshot(ctx, &src, tpl, *req); err != nil {
			return source{}, nil, err
		}
	}
	if src.state != "" {
		if err := m.restoreBlocked(); err != nil {
			return source{}, nil, fmt.Errorf("restore from snapshot %q: %w", src.snapshot, err)
		}
		var ok bool
		if src.restorer, ok = m.d.VMM.(vmm.Restorer); !ok {
			return source{}, nil, fmt.Errorf("restore from snapshot %q: %w", src.snapshot, m.unsupported())
		}
	}
	return src, release, nil
}

// create acquires a new sandbox's resources in order, each release
// registered right after its acquire; on error it runs them all.
func (m *Manager) create(ctx context.Context, req CreateRequest, src source, reservation func()) (rec store.Sandbox, err error) {
	start := time.Now()
	id := newID()
	op, typ, state := OpCreate, wire.EventCreated, StateCreating
	switch {
	case src.snapshot != "":
		op = OpRestore
	case src.warm:
		op, typ, state = OpWarm, "", StateWarming
	}
	o := m.track(op, typ, id, src.template)
	o.event.Snapshot = src.snapshot
	// Registered first, so it runs last: the operation ends once a failed
	// create is undone.
	defer func() { o.end(err, rec.State) }()
	if src.captured != nil {
		// However the create ends, creates waiting for its capture go on.
		defer src.captured()
	}
	sb := &Sandbox{}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	m.holdReservation(sb, reservation)
	r := store.Sandbox{
		ID: id, Template: src.template, State: state, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		DiskMiB: req.DiskMiB, Env: req.Env, Metadata: req.Metadata,
		Token: src.token, SlotIndex: -1, Dir: filepath.Join(m.cfg.Dir, id),
		CreatedAt: start.UTC(), ExpiresAt: start.Add(time.Duration(req.TimeoutS) * time.Second).UTC(),
		TimingsMS: map[string]float64{}, Network: storedPolicy(*req.Network),
		TimeoutS: req.TimeoutS, AutoPause: req.AutoPause, Snapshot: src.snapshot,
		AutoResume: req.AutoResume,
		Limits:     m.limitsFor(req.VCPUs, req.MemoryMiB).Lower(req.Limits),
	}
	if req.PrivateTraffic {
		r.TrafficToken = newToken()
	}
	if src.warm {
		r.Metadata = map[string]string{warmKeyMeta: src.key}
	}
	defer func() {
		if err != nil {
			if cerr := sb.held.Release(ctx, cleanup.Anchor); cerr != nil {
				m.log.Error("undo failed create", "sandbox", id, "template", src.template, "err", cerr)
			}
		}
	}()

	// The record is the anchor: written first and deleted last, so a crash
	// at any point leaves something Recover finds.
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	m.holdRecord(sb, id)
	if err := m.register(sb, id); err != nil {
		return store.Sandbox{}, err
	}
	m.holdRegistration(sb, id)
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		return store.Sandbox{}, opError("create", id, "create its directory", ErrDisk, err)
	}
	m.holdDir(sb, r.Dir)
	failpoint.Hit(failpoint.CreateRecord)

	o.phase("setup")
	disk, err := m.d.Disks.Prepare(ctx, id, r.Dir, src.rootfs, src.sizeBytes)
	if err != nil {
		return store.Sandbox{}, opError("create", id, "prepare its disk", ErrDisk, err)
	}
	m.holdDisk(sb, id, r.Dir)
	m.holdAddress(sb)
	m.holdAttachment(sb, id, r.Dir)
	r.DiskPath, r.DiskFormat = disk.Path, disk.Format
	r.TimingsMS["disk"] = o.phase("disk")
	failpoint.Hit(failpoint.CreateDisk)

	s, err := m.d.Slots.Get(ctx)
	if errors.Is(err, ErrNoSlots) && !src.warm && m.evictWarm(ctx) {
		// Warm sandboxes count against capacity, but give way to a
		// client's create.
		s, err = m.d.Slots.Get(ctx)
	}
	if err != nil {
		return store.Sandbox{}, opError("create", id, "get a network slot", ErrNetwork, err)
	}
	m.holdSlot(sb, s)
	if err := m.d.Slots.SetPolicy(ctx, s, *req.Network); err != nil {
		return store.Sandbox{}, opError("create", id, "apply its network policy", ErrNetwork, err)
	}
	r.SlotIndex = s.Index
	r.TimingsMS["network"] = o.phase("network")
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	failpoint.Hit(failpoint.CreateSlot)

	if err := m.makeCgroup(sb, r); err != nil {
		return store.Sandbox{}, err
	}
	o.skip() // the record's writes and the cgroup are no phase's

	spec := m.spec(r, src.kernel, s)
	var machine vmm.Machine
	if src.restorer != nil {
		machine, err = src.restorer.Restore(ctx, spec, src.state)
	} else {
		machine, err = m.d.VMM.Start(ctx, spec)
	}
	if err != nil {
		return store.Sandbox{}, opError("create", id, "start the vmm ("+m.d.VMM.Name()+")", ErrVMMStart, err)
	}
	m.holdMachine(sb, machine)
	r.VMMPID = machine.PID()
	if src.restorer != nil {
		r.TimingsMS["restore"] = o.phase("restore")
	} else {
		r.TimingsMS["boot"] = o.phase("boot")
	}
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	o.skip()
	failpoint.Hit(failpoint.CreateVMM)

	ag := m.d.Agent(s.HostAddr, r.Token)
	readyCtx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	if err := ag.WaitReady(readyCtx); err != nil {
		return store.Sandbox{}, bootError("create", id, r.Dir, err)
	}
	r.TimingsMS["agent"] = o.phase("agent")
	if src.start != nil && src.state == "" {
		// A cold boot starts the template's process before its snapshot
		// is taken; a restore has it running already.
		if err := m.startProcess(ctx, ag, *src.start); err != nil {
			return store.Sandbox{}, opError("create", id, "run the template's start command", ErrStartCmd, err)
		}
		r.TimingsMS["start"] = o.phase("start")
	}
	if src.capture != "" {
		err := m.captureTemplate(ctx, machine, r, src.capture)
		src.captured()
		if err != nil {
			return store.Sandbox{}, err
		}
		r.TimingsMS["template_snapshot"] = o.phase("template_snapshot")
	}
	if src.warm {
		if err := prewarm(readyCtx, ag); err != nil {
			return store.Sandbox{}, opError("create", id, "warm the guest up", ErrAgent, err)
		}
		// Left for a claim to initialise (warm.go).
		r.State = StateWarm
		r.TimingsMS["total"] = ms(time.Since(start))
		if err := m.put(ctx, sb, r); err != nil {
			return store.Sandbox{}, err
		}
		m.watch(sb, machine)
		m.putWarm(sb, ag, src.key)
		o.with("slot", s.Index, "pid", r.VMMPID)
		return r, nil
	}
	// Init also moves a restored guest's clock to the host's. A guest
	// restored from a named snapshot knows that snapshot's token: it is
	// handed one of its own, so no two sandboxes share a token.
	if rk, ok := ag.(Rekeyer); ok && src.snapshot != "" {
		token := newToken()
		if err := rk.Rekey(readyCtx, r.Env, token); err != nil {
			return store.Sandbox{}, opError("create", id, "set the guest up", ErrAgent, err)
		}
		r.Token = token
		ag = m.d.Agent(s.HostAddr, r.Token)
	} else if err := ag.Init(readyCtx, r.Env); err != nil {
		return store.Sandbox{}, opError("create", id, "set the guest up", ErrAgent, err)
	}
	r.TimingsMS["init"] = o.phase("init")
	r.TimingsMS["total"] = ms(time.Since(start))

	r.State = StateRunning
	m.holdLive(sb, ag, s)
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	failpoint.Hit(failpoint.CreateRunning)
	m.watch(sb, machine)
	o.with("slot", s.Index, "pid", r.VMMPID, "snapshot", src.snapshot)
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
	// once the agent is ready (see useTemplateSnapshot); captured, then
	// set, tells the creates waiting for it that it is over (it may run
	// more than once).
	capture  string
	captured func()
	// restorer restores state; nil when state is "".
	restorer vmm.Restorer
	// key is the template build; warm makes the sandbox for the
	// template's warm pool.
	key  string
	warm bool
	// start is the template's process, started on a cold boot before
	// the agent is handed over (see startProcess); nil: none.
	start *startSpec
}

// spec describes the machine of r, on slot s when it has one (a spec for
// Attach needs none).
func (m *Manager) spec(r store.Sandbox, kernel string, s *slot.Slot) vmm.Spec {
	spec := vmm.Spec{
		ID: r.ID, Dir: r.Dir, Kernel: kernel, RootDisk: r.DiskPath, DiskFormat: r.DiskFormat,
		VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB,
	}
	if s != nil {
		spec.Netns, spec.TAP, spec.MAC, spec.BootArgs = s.NetnsPath, s.TAP, s.GuestMAC, s.BootArgs()
	}
	if cg := m.d.Cgroups; cg != nil {
		id := r.ID
		spec.Place = func(pid int) error { return cg.Place(id, pid) }
	}
	return spec
}

// makeCgroup makes the cgroup a sandbox's machine is about to run in,
// with the record's limits, and registers its removal.
func (m *Manager) makeCgroup(sb *Sandbox, r store.Sandbox) error {
	if m.d.Cgroups == nil {
		return nil
	}
	if err := m.d.Cgroups.Create(r.ID, r.Limits); err != nil {
		return fmt.Errorf("make cgroup of sandbox %s: %w", r.ID, err)
	}
	m.holdCgroup(sb, r.ID)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// put persists r and publishes it to readers.
func (m *Manager) put(ctx context.Context, sb *Sandbox, r store.Sandbox) error {
	if err := m.d.Store.PutSandbox(context.WithoutCancel(ctx), r); err != nil {
		return opError("record", r.ID, "write its state ("+r.State+")", ErrStore, err)
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
	if !ok || sb.rec.Load() == nil || hidden(*sb.rec.Load()) {
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

// List returns every sandbox's record, with its usage, oldest first; the
// warm pools' sandboxes are no client's and not listed.
func (m *Manager) List() []store.Sandbox {
	return slices.DeleteFunc(m.ListAll(), hidden)
}

// ListAll is List with the warm pools' sandboxes, for the host's figures
// (metrics): they hold memory, a slot and a disk like any other.
func (m *Manager) ListAll() []store.Sandbox {
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
		return netip.Addr{}, stateError(sb.Record(), "running")
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
		return store.Sandbox{}, stateError(r, "running")
	}
	if err := m.d.Slots.SetPolicy(ctx, sb.slot, pol); err != nil {
		return store.Sandbox{}, opError("set the network of", id, "apply its network policy", ErrNetwork, err)
	}
	r.Network = storedPolicy(pol)
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	return r, nil
}

// Destroy stops a sandbox's machine, releases everything it holds and
// deletes its record. A lifecycle operation in progress finishes first.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	done, err := m.begin()
	if err != nil {
		return err
	}
	defer done()
	sb, err := m.lookupLocked(id)
	if err != nil {
		return err
	}
	defer sb.mu.Unlock()
	return m.destroyLocked(ctx, sb)
}

func (m *Manager) destroyLocked(ctx context.Context, sb *Sandbox) (err error) {
	r := sb.Record()
	o := m.track(OpDestroy, wire.EventDestroyed, r.ID, r.Template)
	state := ""
	defer func() { o.end(err, state) }()
	state, r.State = r.State, StateStopping
	if err := m.put(ctx, sb, r); err != nil {
		return err
	}
	failpoint.Hit(failpoint.DestroyStopping)
	if err := sb.held.Release(ctx, cleanup.Anchor); err != nil {
		// What failed and everything under it stay held, and the record
		// says why: a retry finishes the destroy.
		state, r.State = StateError, StateError
		r.Error = "destroy: " + err.Error()
		if perr := m.put(ctx, sb, r); perr != nil {
			err = errors.Join(err, perr)
		}
		return fmt.Errorf("destroy sandbox %s: %w", r.ID, err)
	}
	state = ""
	o.phase("release")
	if r.Snapshot != "" {
		m.dropHidden(ctx, r.Snapshot)
	}
	return nil
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
	ag, err := m.guest(id)
	if err != nil {
		return ExecResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	start := time.Now()
	st, err := ag.Exec(ctx, agent.ExecRequest{Cmd: req.Cmd, Args: req.Args, Env: req.Env, Cwd: req.Cwd, User: userOr(req.User),
		Stdin: req.Stdin, KeepStdin: req.KeepStdin, Started: req.Started}, stdout, stderr)
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
		if hidden(sb.Record()) {
			m.forgetWarm(sb)
			m.dropWarmLocked(context.Background(), sb, "vmm process exited unexpectedly")
			return
		}
		m.fail(sb, opRunning, "vmm process exited unexpectedly")
	}()
}

// fail releases what a sandbox holds but its record, and keeps the record
// in the error state with the reason (and what could not be released, which
// a destroy retries). op names what found it failed. Called with sb.mu held.
func (m *Manager) fail(sb *Sandbox, op, reason string) {
	ctx := context.Background()
	rerr := sb.held.Release(ctx, cleanup.Storage)
	r := sb.Record()
	r.State, r.Error, r.VMMPID, r.SlotIndex = StateError, reason, 0, -1
	if rerr != nil {
		r.Error += "; cleanup: " + rerr.Error()
	}
	if err := m.put(ctx, sb, r); err != nil {
		m.log.Error("record failed sandbox", "sandbox", r.ID, "err", err)
	}
	m.failed(r, op, "sandbox failed", "cleanup_err", rerr)
}

// failed logs and publishes a sandbox's move to the error state.
func (m *Manager) failed(r store.Sandbox, op, msg string, attrs ...any) {
	m.logOp(slog.LevelWarn, msg, r.ID, r.Template, op, 0, errors.New(r.Error), attrs...)
	m.events.Publish(wire.Event{Type: wire.EventFailed, Sandbox: r.ID, Template: r.Template, Op: op,
		State: r.State, Error: r.Error})
}

// begin registers a lifecycle operation (create, destroy, pause, resume,
// snapshot) so that Close waits for it to settle; it fails once the manager
// is closing.
func (m *Manager) begin() (done func(), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	m.ops.Add(1)
	return m.ops.Done, nil
}

// Close refuses new lifecycle operations, waits for those in flight to
// settle (their callers' contexts end them: a cancelled create unwinds, a
// cancelled pause rolls back), then stops background work. Running machines
// keep running: a restarted daemon re-adopts them (Recover), and no sandbox
// is left half created or half paused for it to recover.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	m.mu.Unlock()
	m.ops.Wait()
	close(m.stop)
	m.wg.Wait()
}

// restoreBlocked reports why this manager's machines cannot be restored
// anywhere but where they were saved (named snapshots, forks, template
// snapshots), or nil. A pause resumes where it was saved, so needs none.
func (m *Manager) restoreBlocked() error {
	if err := m.d.Slots.Movable(); err != nil {
		return fmt.Errorf("%w: %w", err, ErrUnsupported)
	}
	return nil
}

// unsupported is the error for a VMM driver that cannot save or restore
// machines.
func (m *Manager) unsupported() error {
	return fmt.Errorf("the %s vmm driver cannot save or restore machines: %w", m.d.VMM.Name(), ErrUnsupported)
}
