package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/cleanup"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// Warm pools: per template, sandboxes restored ahead of demand, so that a
// burst of creates costs each one a claim (its record, its network
// policy, the agent's init) instead of a restore. A warm sandbox is a
// sandbox like any other (a record, holds, a watched machine, re-adopted
// after a restart) in a state of its own, hidden from List and Get until a
// create claims it. Each is restored fresh from the template's snapshot and
// claimed once: a claimed sandbox never goes back to a pool.

// The states of a pool's sandboxes.
const (
	// StateWarming: being restored for a pool.
	StateWarming = "warming"
	// StateWarm: restored, its agent answering and not yet initialised:
	// waiting to be claimed.
	StateWarm = "warm"
)

// OpWarm restores a sandbox for a pool (a create no client asked for: it
// publishes no event).
const OpWarm = "warm"

// warmKeyMeta is the metadata key under which a warm sandbox's record
// keeps the template build it was restored from, for a restart to know
// whether it is still current; a claim replaces the metadata with the
// client's.
const warmKeyMeta = "ember.template-key"

// MaxWarm bounds one template's pool.
const MaxWarm = 1024

// Pool refill backoff after failed fills: from warmBackoffMin, doubling,
// up to warmBackoffMax.
const (
	warmBackoffMin = time.Second
	warmBackoffMax = time.Minute
)

// WarmPool is one template's pool as the API shows it.
type WarmPool struct {
	Template string
	// Target is how many sandboxes the pool keeps; Ready how many wait to
	// be claimed, Starting how many are being restored.
	Target, Ready, Starting int
	// LastError is why the last fill failed ("" once one succeeds), and
	// RetryAt when the next is due.
	LastError string
	RetryAt   time.Time
}

// warmPools holds every template's pool.
type warmPools struct {
	// mu guards byTemplate and the pools in it; never held across a
	// kernel call or a VMM request, and never while taking a sandbox's
	// lock (a claim takes a sandbox out first, then locks it).
	mu         sync.Mutex
	byTemplate map[string]*warmPool
	// kick wakes the filler.
	kick chan struct{}
}

// warmPool is one template's pool.
type warmPool struct {
	target   int
	ready    []warmEntry
	starting int
	// dropping counts sandboxes taken out to be dropped, not yet gone.
	dropping int
	failures int
	next     time.Time
	lastErr  string
}

// warmEntry is a ready warm sandbox and what its claim needs.
type warmEntry struct {
	sb    *Sandbox
	agent Agent
	// key is the template build it was restored from: a rebuilt template
	// makes it stale.
	key string
}

func newWarmPools() warmPools {
	return warmPools{byTemplate: map[string]*warmPool{}, kick: make(chan struct{}, 1)}
}

// poolLocked returns the pool of template, made when missing. Called with
// mu held.
func (p *warmPools) poolLocked(template string) *warmPool {
	wp := p.byTemplate[template]
	if wp == nil {
		wp = &warmPool{}
		p.byTemplate[template] = wp
	}
	return wp
}

func (p *warmPools) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// SetWarm sets how many sandboxes of template (its default shape) are kept
// restored ahead of demand. Lowering it drops the surplus and returns once
// it is gone (or ctx ends); raising it returns at once, the pool filling
// in the background (RunWarm).
func (m *Manager) SetWarm(ctx context.Context, name string, count int) (WarmPool, error) {
	if count < 0 || count > MaxWarm {
		return WarmPool{}, invalid("count", "must be between 0 and %d, got %d", MaxWarm, count)
	}
	switch _, err := m.d.Templates.Get(name); {
	case errors.Is(err, template.ErrNotFound):
		// Emptying the pool of a template gone since is allowed: what it
		// still holds is dropped below.
		if count > 0 {
			return WarmPool{}, fmt.Errorf("template %q: %w", name, ErrTemplateNotFound)
		}
	case err != nil:
		return WarmPool{}, fmt.Errorf("look up template %q: %w", name, err)
	}
	m.pools.mu.Lock()
	wp := m.pools.poolLocked(name)
	wp.target, wp.failures, wp.next = count, 0, time.Time{}
	m.pools.mu.Unlock()
	m.pools.wake()
	m.log.Info("warm pool set", "template", name, "target", count)
	for {
		m.dropSurplus(ctx)
		st, dropping := m.warmPoolDropping(name)
		if st.Ready+st.Starting <= st.Target && dropping == 0 {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WarmPools returns every pool with a target or sandboxes, by template.
func (m *Manager) WarmPools() []WarmPool {
	m.pools.mu.Lock()
	names := make([]string, 0, len(m.pools.byTemplate))
	for name := range m.pools.byTemplate {
		names = append(names, name)
	}
	m.pools.mu.Unlock()
	sort.Strings(names)
	out := make([]WarmPool, 0, len(names))
	for _, name := range names {
		// A pool exists for every template a create looked in; only
		// the configured ones, or those still holding sandboxes, are
		// pools to speak of.
		if st, dropping := m.warmPoolDropping(name); st.Target > 0 || st.Ready+st.Starting+dropping > 0 {
			out = append(out, st)
		}
	}
	return out
}

func (m *Manager) warmPool(name string) WarmPool {
	st, _ := m.warmPoolDropping(name)
	return st
}

// warmPoolDropping is warmPool and how many of the pool's sandboxes are
// being dropped.
func (m *Manager) warmPoolDropping(name string) (WarmPool, int) {
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	wp := m.pools.poolLocked(name)
	out := WarmPool{Template: name, Target: wp.target, Ready: len(wp.ready), Starting: wp.starting, LastError: wp.lastErr}
	if wp.failures > 0 {
		out.RetryAt = wp.next
	}
	return out, wp.dropping
}

// RunWarm keeps every pool at its target until ctx ends or the manager
// closes: one fill at a time (a restore competes with clients' creates
// for the host's CPUs), the next after a failure only once its backoff is
// over. Surplus sandboxes (a lowered target, a rebuilt template) are
// dropped.
func (m *Manager) RunWarm(ctx context.Context) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			m.dropSurplus(ctx)
			name, wait := m.nextFill()
			if name != "" {
				m.fill(ctx, name)
				continue
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-m.stop:
				t.Stop()
				return
			case <-m.pools.kick:
			case <-t.C:
			}
			t.Stop()
		}
	}()
}

// nextFill picks a pool below its target whose backoff is over and counts
// its fill as starting; else it says how long until one is due.
func (m *Manager) nextFill() (string, time.Duration) {
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	now, wait := time.Now(), time.Hour
	names := make([]string, 0, len(m.pools.byTemplate))
	for name := range m.pools.byTemplate {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		wp := m.pools.byTemplate[name]
		if len(wp.ready)+wp.starting >= wp.target {
			continue
		}
		if d := wp.next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		wp.starting++
		return name, 0
	}
	return "", wait
}

// fill restores one sandbox for the pool of name and puts it in.
func (m *Manager) fill(ctx context.Context, name string) {
	err := m.createWarm(ctx, name)
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	wp := m.pools.poolLocked(name)
	wp.starting--
	if err == nil {
		wp.failures, wp.next, wp.lastErr = 0, time.Time{}, ""
		return
	}
	wp.failures++
	backoff := min(warmBackoffMin<<min(wp.failures-1, 10), warmBackoffMax)
	wp.next, wp.lastErr = time.Now().Add(backoff), err.Error()
	if !errors.Is(err, ErrClosed) && ctx.Err() == nil {
		m.log.Warn("fill warm pool", "template", name, "err", err, "retry_in", backoff)
	}
}

// createWarm restores a sandbox of template name in its default shape,
// as a create would, and leaves it warm (create puts it in the pool).
func (m *Manager) createWarm(ctx context.Context, name string) error {
	done, err := m.begin()
	if err != nil {
		return err
	}
	defer done()
	req := CreateRequest{Template: name}
	src, release, err := m.resolve(ctx, &req)
	if err != nil {
		return err
	}
	defer release()
	src.warm = true
	// A warm sandbox commits what any machine does; the filler backs off
	// when the daemon has no capacity for it.
	reservation, turnDone, err := m.admit(ctx, req.VCPUs, req.MemoryMiB)
	if err != nil {
		return err
	}
	defer turnDone()
	_, err = m.create(ctx, req, src, reservation)
	return err
}

// putWarm adds a sandbox create has just made warm to its pool. Called
// with sb.mu held.
func (m *Manager) putWarm(sb *Sandbox, ag Agent, key string) {
	r := sb.Record()
	m.pools.mu.Lock()
	wp := m.pools.poolLocked(r.Template)
	wp.ready = append(wp.ready, warmEntry{sb: sb, agent: ag, key: key})
	m.pools.mu.Unlock()
	m.pools.wake()
}

// takeWarm takes a ready sandbox of template name restored from build key
// out of its pool, oldest first; nil when there is none.
func (m *Manager) takeWarm(name, key string) *warmEntry {
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	wp := m.pools.byTemplate[name]
	if wp == nil {
		return nil
	}
	for i, e := range wp.ready {
		if e.key == key {
			wp.ready = slices.Delete(wp.ready, i, i+1)
			m.pools.wake()
			return &e
		}
	}
	return nil
}

// forgetWarm takes sb out of its pool, wherever it is.
func (m *Manager) forgetWarm(sb *Sandbox) {
	m.pools.mu.Lock()
	defer m.pools.mu.Unlock()
	for _, wp := range m.pools.byTemplate {
		wp.ready = slices.DeleteFunc(wp.ready, func(e warmEntry) bool { return e.sb == sb })
	}
	m.pools.wake()
}

// dropSurplus drops the ready sandboxes above each pool's target, newest
// first, and those of a template build no longer current.
func (m *Manager) dropSurplus(ctx context.Context) {
	keys := map[string]string{}
	m.pools.mu.Lock()
	names := make([]string, 0, len(m.pools.byTemplate))
	for name := range m.pools.byTemplate {
		names = append(names, name)
	}
	m.pools.mu.Unlock()
	for _, name := range names {
		if tpl, err := m.d.Templates.Get(name); err == nil {
			keys[name] = tpl.Key
		}
	}
	type dropped struct {
		pool string
		e    warmEntry
		why  string
	}
	var drop []dropped
	m.pools.mu.Lock()
	for name, wp := range m.pools.byTemplate {
		kept := wp.ready[:0]
		for _, e := range wp.ready {
			if e.key != keys[name] {
				drop = append(drop, dropped{name, e, "its template was rebuilt"})
			} else {
				kept = append(kept, e)
			}
		}
		wp.ready = kept
		for len(wp.ready) > 0 && len(wp.ready)+wp.starting > wp.target {
			drop = append(drop, dropped{name, wp.ready[len(wp.ready)-1], "surplus"})
			wp.ready = wp.ready[:len(wp.ready)-1]
		}
	}
	for _, d := range drop {
		m.pools.byTemplate[d.pool].dropping++
	}
	m.pools.mu.Unlock()
	for _, d := range drop {
		d.e.sb.mu.Lock()
		m.dropWarmLocked(ctx, d.e.sb, d.why)
		d.e.sb.mu.Unlock()
		m.pools.mu.Lock()
		m.pools.byTemplate[d.pool].dropping--
		m.pools.mu.Unlock()
	}
}

// evictWarm drops one ready warm sandbox of any template, to free what it
// holds for a client's create; it reports whether there was one.
func (m *Manager) evictWarm(ctx context.Context) bool {
	m.pools.mu.Lock()
	var victim *warmEntry
	for _, wp := range m.pools.byTemplate {
		if len(wp.ready) > 0 {
			e := wp.ready[0]
			wp.ready = wp.ready[1:]
			victim = &e
			break
		}
	}
	m.pools.mu.Unlock()
	if victim == nil {
		return false
	}
	victim.sb.mu.Lock()
	defer victim.sb.mu.Unlock()
	m.dropWarmLocked(ctx, victim.sb, "no capacity left for a client's create")
	return true
}

// dropWarmLocked releases everything a warm sandbox holds, its record
// last, without an event: no client ever knew it. What cannot be released
// stays held and the record goes to the error state, where it shows (and
// a destroy finishes the job). Called with sb.mu held.
func (m *Manager) dropWarmLocked(ctx context.Context, sb *Sandbox, why string) {
	r := sb.Record()
	if r.State != StateWarm && r.State != StateWarming {
		return // claimed meanwhile, or dropped already
	}
	ctx = context.WithoutCancel(ctx)
	if err := sb.held.Release(ctx, cleanup.Anchor); err != nil {
		r.State, r.Error = StateError, "drop warm sandbox: "+err.Error()
		if perr := m.put(ctx, sb, r); perr != nil {
			m.log.Error("record warm sandbox", "sandbox", r.ID, "err", perr)
		}
		m.log.Error("drop warm sandbox", "sandbox", r.ID, "template", r.Template, "why", why, "err", err)
		return
	}
	m.log.Info("warm sandbox dropped", "sandbox", r.ID, "template", r.Template, "why", why)
}

// claimWarm hands a create a warm sandbox when its template's pool has one
// and the create changes nothing of its shape (vCPUs, memory, disk size):
// ok reports whether it did. A warm sandbox that fails its claim is
// dropped, and the create goes on as if the pool had been empty.
func (m *Manager) claimWarm(ctx context.Context, req CreateRequest) (_ store.Sandbox, ok bool, _ error) {
	if req.Snapshot != "" {
		return store.Sandbox{}, false, nil
	}
	if req.Template == "" {
		req.Template = m.cfg.DefaultTemplate
	}
	if st := m.warmPool(req.Template); st.Ready == 0 {
		return store.Sandbox{}, false, nil
	}
	if err := m.validate(&req); err != nil {
		return store.Sandbox{}, false, nil // the create reports it
	}
	tpl, err := m.d.Templates.Get(req.Template)
	if err != nil {
		return store.Sandbox{}, false, nil
	}
	baseMiB := int((tpl.RootfsSizeBytes + 1<<20 - 1) >> 20)
	if req.VCPUs != m.cfg.DefaultVCPUs || req.MemoryMiB != m.cfg.DefaultMemoryMiB ||
		(req.DiskMiB != 0 && req.DiskMiB != baseMiB) {
		return store.Sandbox{}, false, nil
	}
	req.DiskMiB = baseMiB
	for {
		e := m.takeWarm(req.Template, tpl.Key)
		if e == nil {
			return store.Sandbox{}, false, nil
		}
		r, err := m.claim(ctx, e, req)
		if err == nil {
			return r, true, nil
		}
		if ctx.Err() != nil {
			return store.Sandbox{}, true, err
		}
		m.log.Warn("claim warm sandbox", "sandbox", e.sb.Record().ID, "template", req.Template, "err", err)
	}
}

// claim makes a warm sandbox the client's: its network policy, then the
// agent's init (environment, access token, the guest's clock), then its
// record (settings, end time) with it running. On error the sandbox is
// dropped.
func (m *Manager) claim(ctx context.Context, e *warmEntry, req CreateRequest) (rec store.Sandbox, err error) {
	sb := e.sb
	sb.mu.Lock()
	defer sb.mu.Unlock()
	r := sb.Record()
	if r.State != StateWarm || sb.machine == nil || sb.slot == nil {
		return store.Sandbox{}, fmt.Errorf("warm sandbox %s is %s", r.ID, r.State)
	}
	defer func() {
		if err != nil {
			m.dropWarmLocked(ctx, sb, "claim failed")
		}
	}()
	start := time.Now()
	o := m.track(OpCreate, wire.EventCreated, r.ID, r.Template)
	pol := storedPolicy(*req.Network)
	if !samePolicy(pol, r.Network) {
		if err := m.d.Slots.SetPolicy(ctx, sb.slot, *req.Network); err != nil {
			return store.Sandbox{}, opError("create", r.ID, "apply its network policy", ErrNetwork, err)
		}
	}
	claimMS := o.phase("claim")
	readyCtx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	if err := e.agent.Init(readyCtx, req.Env); err != nil {
		return store.Sandbox{}, opError("create", r.ID, "set the guest up", ErrAgent, err)
	}
	initMS := o.phase("init")
	r.State, r.Env, r.Metadata, r.Network = StateRunning, req.Env, req.Metadata, pol
	r.TimeoutS, r.AutoPause, r.AutoResume = req.TimeoutS, req.AutoPause, req.AutoResume
	if req.PrivateTraffic {
		r.TrafficToken = newToken()
	}
	r.CreatedAt, r.ExpiresAt = start.UTC(), start.Add(time.Duration(req.TimeoutS)*time.Second).UTC()
	r.TimingsMS = map[string]float64{"claim": claimMS, "init": initMS, "total": ms(time.Since(start))}
	m.holdLive(sb, e.agent, sb.slot)
	if err := m.put(ctx, sb, r); err != nil {
		return store.Sandbox{}, err
	}
	o.with("slot", r.SlotIndex, "pid", r.VMMPID, "warm", true)
	o.end(nil, r.State)
	return r, nil
}

// prewarmRuns is how many times prewarm runs its command.
const prewarmRuns = 3

// prewarm has a warm sandbox's agent run an init (its token, the clock)
// and a first command before any claim: under software emulation a fresh
// guest's every code path is translated the first time it runs (a
// restored QEMU starts with an empty translation cache), which made a
// claim's init and its client's first exec take hundreds of
// milliseconds. Nothing of either stays in the guest: the command is true.
func prewarm(ctx context.Context, ag Agent) error {
	if err := ag.Init(ctx, nil); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for range prewarmRuns {
		st, err := ag.Exec(ctx, agent.ExecRequest{Cmd: "true"}, io.Discard, io.Discard)
		if err != nil {
			return fmt.Errorf("first commands: %w", err)
		}
		if st.Code != 0 {
			return fmt.Errorf("first commands: %s", st.Status)
		}
	}
	return nil
}

// samePolicy reports whether two stored policies are the same.
func samePolicy(a, b store.NetworkPolicy) bool {
	return a.Internet == b.Internet && slices.Equal(a.Allow, b.Allow) && slices.Equal(a.Deny, b.Deny)
}

// hidden reports whether a record is a pool's, which clients do not see.
func hidden(r store.Sandbox) bool { return r.State == StateWarm || r.State == StateWarming }

// recoverWarm takes over a warm sandbox a previous daemon left: re-adopted
// into its pool when its machine survived and its agent answers (the pool
// drops it if it is surplus), dropped otherwise, as is one whose restore a
// stop interrupted. One whose machine may still run but does not answer
// keeps everything until reclaim has ended it and a destroy follows.
// Called with sb.mu held.
func (m *Manager) recoverWarm(ctx context.Context, sb *Sandbox, r store.Sandbox, keep reclaim.Keep) {
	if r.State == StateWarm {
		ag, err := m.adoptMachine(ctx, sb, r)
		if err == nil {
			keep.Slots[r.SlotIndex], keep.PIDs[r.VMMPID] = true, true
			m.watch(sb, sb.machine)
			m.putWarm(sb, ag, r.Metadata[warmKeyMeta])
			return
		}
		m.log.Info("warm sandbox not re-adopted", "sandbox", r.ID, "template", r.Template, "err", err)
	}
	if err := m.stopOrphan(ctx, r); err != nil {
		m.failKeeping(sb, "warm sandbox not re-adopted after daemon restart: "+err.Error())
		return
	}
	m.dropWarmLocked(ctx, sb, "not re-adopted after a daemon restart")
}
