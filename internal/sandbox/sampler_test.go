package sandbox

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/usage"
	"github.com/emberhq/ember/wire"
)

// meteredAgent is a fake agent that reports guest metrics.
type meteredAgent struct {
	fakeAgent
	fail *atomic.Bool
}

func (a meteredAgent) Metrics(ctx context.Context) (proto.Metrics, error) {
	if a.fail.Load() {
		return proto.Metrics{}, errors.New("agent gone quiet")
	}
	return proto.Metrics{CPUCount: 1, CPUUsedPct: 42, MemUsed: 100 << 20, MemTotal: 256 << 20, MemCache: 1 << 20,
		DiskUsed: 300 << 20, DiskTotal: 1 << 30}, nil
}

// sampled returns a manager whose agents report metrics (until guestFails
// is set) and whose VMM processes have used half a CPU since they started.
func sampled(t *testing.T, history int) (*Manager, *atomic.Bool) {
	t.Helper()
	guestFails := &atomic.Bool{}
	started := time.Now().Add(-10 * time.Second)
	_, _, _, m := setupWith(t, func(c *Config, d *Deps) {
		c.SampleHistory = history
		plain := d.Agent
		d.Agent = func(addr netip.Addr, token string) Agent {
			return meteredAgent{plain(addr, token).(fakeAgent), guestFails}
		}
		d.Meter = func(pid int) (usage.Process, error) {
			return usage.Process{CPUSeconds: time.Since(started).Seconds() / 2, MemBytes: 200 << 20, Started: started,
				Source: usage.SourceProcess}, nil
		}
	})
	return m, guestFails
}

func TestSamplerReadsGuestAndHost(t *testing.T) {
	m, guestFails := sampled(t, 0)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for range 4 {
		m.sampleAll(ctx, time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	got, err := m.Metrics(r.ID, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	// The agent's first answer, an average since boot, only primes it.
	if len(got) != 4 || got[0].Guest != nil || got[0].Host == nil {
		t.Fatalf("%d samples, the first %+v: want 4, the first the host's alone", len(got), got[0])
	}
	got = got[1:]
	for i, s := range got {
		g, h := s.Guest, s.Host
		if g == nil || h == nil {
			t.Fatalf("sample %d: %+v", i, s)
		}
		if g.CPUUsedPct != 42 || g.MemUsed != 100<<20 || g.MemTotal != 256<<20 || g.DiskTotal != 1<<30 || g.CPUCount != 1 {
			t.Errorf("sample %d guest %+v", i, g)
		}
		// Half a CPU, since the start for the first and between samples after.
		if h.CPUUsedPct < 40 || h.CPUUsedPct > 60 || h.MemBytes != 200<<20 || h.DiskBytes != 4096 || h.Source != "process" || h.CPUSeconds < 5 {
			t.Errorf("sample %d host %+v", i, h)
		}
		if i > 0 && !s.Time.After(got[i-1].Time) {
			t.Errorf("sample %d not after the one before", i)
		}
	}

	t.Run("a window", func(t *testing.T) {
		win, err := m.Metrics(r.ID, got[1].Time, got[1].Time)
		if err != nil || len(win) != 1 || !win[0].Time.Equal(got[1].Time) {
			t.Fatalf("window of the second sample: %+v %v", win, err)
		}
		win, err = m.Metrics(r.ID, got[1].Time, time.Time{})
		if err != nil || len(win) != 2 {
			t.Fatalf("from the second sample on: %d samples, %v", len(win), err)
		}
	})
	t.Run("a guest that does not answer", func(t *testing.T) {
		guestFails.Store(true)
		defer guestFails.Store(false)
		m.sampleAll(ctx, time.Second)
		all, _ := m.Metrics(r.ID, time.Time{}, time.Time{})
		if last := all[len(all)-1]; len(all) != 5 || last.Guest != nil || last.Host == nil {
			t.Fatalf("%d samples, last %+v: want the host's alone", len(all), last)
		}
	})
	t.Run("a paused sandbox is not read, and keeps its samples", func(t *testing.T) {
		if _, err := m.Pause(ctx, r.ID); err != nil {
			t.Fatal(err)
		}
		m.sampleAll(ctx, time.Second)
		all, err := m.Metrics(r.ID, time.Time{}, time.Time{})
		if err != nil || len(all) != 5 {
			t.Fatalf("%d samples, %v: want the 5 taken while it ran", len(all), err)
		}
	})
	t.Run("bad requests", func(t *testing.T) {
		if _, err := m.Metrics("nope", time.Time{}, time.Time{}); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown sandbox: %v", err)
		}
		now := time.Now()
		if _, err := m.Metrics(r.ID, now, now.Add(-time.Second)); !errors.Is(err, ErrInvalid) {
			t.Errorf("end before start: %v", err)
		}
	})
}

func TestRunSamplerSamplesOnItsOwn(t *testing.T) {
	m, _ := sampled(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	m.RunSampler(ctx, 10*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := m.Metrics(r.ID, time.Time{}, time.Time{})
		if len(got) >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d samples after 5 s of sampling every 10 ms", len(got))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHistoryStaysBoundedAndKeepsTheWholeLife(t *testing.T) {
	cases := []struct {
		name  string
		limit int
		add   int
	}{
		{"below the limit", 8, 5},
		{"at the limit", 8, 8},
		{"many times the limit", 8, 100},
		{"a tiny limit", 1, 50},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h samples
			t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			for i := range tc.add {
				h.add(wire.Sample{Time: t0.Add(time.Duration(i) * time.Second)}, tc.limit)
			}
			n := len(h.list)
			if n > max(tc.limit, 4) || n == 0 {
				t.Fatalf("%d samples kept of %d, limit %d", n, tc.add, tc.limit)
			}
			if tc.add <= tc.limit && n != tc.add {
				t.Fatalf("%d samples kept of %d under the limit", n, tc.add)
			}
			if !h.list[0].Time.Equal(t0) || !h.list[n-1].Time.Equal(t0.Add(time.Duration(tc.add-1)*time.Second)) {
				t.Fatalf("kept %s to %s: want the first and the latest", h.list[0].Time, h.list[n-1].Time)
			}
			for i := 1; i < n; i++ {
				if !h.list[i].Time.After(h.list[i-1].Time) {
					t.Fatalf("out of order at %d", i)
				}
			}
		})
	}
}
