package sandbox

import (
	"context"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/usage"
	"github.com/emberhq/ember/wire"
)

// DefaultSampleHistory bounds the usage samples kept per sandbox: at the
// daemon's 5 s interval, the latest 45 minutes at full resolution, and the
// time before at a resolution that halves each time the history fills, so
// a sandbox's whole life stays in a bounded space.
const DefaultSampleHistory = 1080

// Sample is one reading of a running sandbox's resource use, from its guest
// and from the host (see wire.Sample).
type Sample = wire.Sample

// GuestMeter is an Agent that reports its guest's resource use (envd's GET
// /metrics); the sampler reads guests through it.
type GuestMeter interface {
	Metrics(ctx context.Context) (proto.Metrics, error)
}

// HostMeter reads a VMM process's use of the host (usage.ReadProcess).
type HostMeter func(pid int) (usage.Process, error)

// maxSampling bounds the sandboxes read at once.
const maxSampling = 16

// samples is a sandbox's usage history. Its mutex is its own: the sampler
// must never wait for a lifecycle operation holding the sandbox's.
type samples struct {
	mu   sync.Mutex
	list []Sample
	// prev is the host reading the next CPU share is measured from, taken
	// at prevAt.
	prev   *usage.Process
	prevAt time.Time
	// primed is the running machine whose agent was asked once already:
	// the agent measures the CPU share since its previous answer, so its
	// first is an average since boot, which the sampler does not keep.
	primed *live
}

// add appends s, first thinning the older half of the history (every
// other sample dropped) when it holds limit samples.
func (h *samples) add(s Sample, limit int) {
	if len(h.list) >= max(limit, 4) {
		half := len(h.list) / 2
		kept := h.list[:0]
		for i := 0; i < half; i += 2 {
			kept = append(kept, h.list[i])
		}
		h.list = append(kept, h.list[half:]...)
	}
	h.list = append(h.list, s)
}

// RunSampler reads every running sandbox's resource use every interval,
// from its guest (the agent's /metrics) and from the host (its VMM process
// through Deps.Meter, its disk's allocated blocks), until ctx ends or the
// manager closes. Manager.Metrics returns the samples.
func (m *Manager) RunSampler(ctx context.Context, every time.Duration) {
	m.background(ctx, every, func(time.Time) { m.sampleAll(ctx, every) })
}

// sampleAll reads every running sandbox, a few at a time, each round
// bounded by the interval so a guest that does not answer never makes
// rounds pile up.
func (m *Manager) sampleAll(ctx context.Context, every time.Duration) {
	m.mu.RLock()
	sbs := make([]*Sandbox, 0, len(m.sandboxes))
	for _, sb := range m.sandboxes {
		if sb.live.Load() != nil {
			sbs = append(sbs, sb)
		}
	}
	m.mu.RUnlock()
	ctx, cancel := context.WithTimeout(ctx, every)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxSampling)
	for _, sb := range sbs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			m.sample(ctx, sb)
		})
	}
	wg.Wait()
}

// sample takes one reading of a running sandbox and keeps it.
func (m *Manager) sample(ctx context.Context, sb *Sandbox) {
	l, r := sb.live.Load(), sb.Record()
	if l == nil || r.State != StateRunning {
		return
	}
	now := time.Now()
	s := Sample{Time: now.UTC()}
	h := &sb.samples
	h.mu.Lock()
	first := h.primed != l
	h.mu.Unlock()
	if gm, ok := l.agent.(GuestMeter); ok {
		if g, err := gm.Metrics(ctx); err != nil {
			m.log.Debug("sample guest", "sandbox", r.ID, "err", err)
		} else if first {
			h.mu.Lock()
			h.primed = l
			h.mu.Unlock()
		} else {
			s.Guest = &wire.GuestUsage{CPUCount: g.CPUCount, CPUUsedPct: g.CPUUsedPct, MemUsed: g.MemUsed,
				MemTotal: g.MemTotal, MemCache: g.MemCache, DiskUsed: g.DiskUsed, DiskTotal: g.DiskTotal}
		}
	}
	var proc *usage.Process
	if m.d.Meter != nil && r.VMMPID > 0 {
		if p, err := m.d.Meter(r.VMMPID); err != nil {
			m.log.Debug("sample vmm process", "sandbox", r.ID, "pid", r.VMMPID, "err", err)
		} else {
			proc = &p
		}
	}
	disk, diskErr := m.d.Disks.Usage(ctx, r.ID, r.Dir)
	// A sandbox that stopped running meanwhile keeps nothing of this round.
	if sb.live.Load() != l {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if proc != nil || diskErr == nil {
		s.Host = &wire.HostUsage{DiskBytes: disk}
	}
	if proc != nil {
		s.Host.CPUSeconds, s.Host.MemBytes, s.Host.Source = proc.CPUSeconds, proc.MemBytes, proc.Source
		s.Host.CPUUsedPct = proc.CPUPercent(h.prev, now, h.prevAt)
		h.prev, h.prevAt = proc, now
	}
	if s.Guest == nil && s.Host == nil {
		return
	}
	h.add(s, m.cfg.SampleHistory)
}

// Metrics returns a sandbox's usage samples taken from start to end, oldest
// first; a zero time leaves its side open. A paused or failed sandbox keeps
// the samples it had; they go with the sandbox (and with the daemon: a
// restarted daemon starts each history afresh).
func (m *Manager) Metrics(id string, start, end time.Time) ([]Sample, error) {
	if !start.IsZero() && !end.IsZero() && end.Before(start) {
		return nil, invalid("end", "must not be before start")
	}
	sb, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	h := &sb.samples
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []Sample{}
	for _, s := range h.list {
		if (start.IsZero() || !s.Time.Before(start)) && (end.IsZero() || !s.Time.After(end)) {
			out = append(out, s)
		}
	}
	return out, nil
}
