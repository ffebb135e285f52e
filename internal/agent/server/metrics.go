package server

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/usage"
)

// meter answers GET /metrics. The CPU share is envd's: the time since the
// previous request (since boot for the first), so the daemon's sampler,
// which asks at a steady interval, gets the share over its interval.
type meter struct {
	read func() (usage.System, error)

	// mu guards prev, the reading the next CPU share is measured from.
	mu   sync.Mutex
	prev usage.System
}

func newMeter(read func() (usage.System, error)) *meter {
	if read == nil {
		read = func() (usage.System, error) { return usage.ReadSystem("/proc", "/") }
	}
	return &meter{read: read}
}

// metrics serves the guest's resource use in envd's Metrics shape.
func (s *Server) metrics(w http.ResponseWriter, _ *http.Request) {
	m := s.meter
	m.mu.Lock()
	cur, err := m.read()
	var pct float64
	if err == nil {
		pct = cur.CPUPercent(m.prev)
		m.prev = cur
	}
	m.mu.Unlock()
	if err != nil {
		s.log.Warn("read resource use", "err", err)
		writeError(w, http.StatusInternalServerError, "read resource use: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(proto.Metrics{
		Timestamp: time.Now().UTC().Unix(), CPUCount: cur.CPUCount, CPUUsedPct: pct,
		MemTotal: cur.MemTotal, MemUsed: cur.MemUsed, MemCache: cur.MemCache,
		MemTotalMiB: cur.MemTotal >> 20, MemUsedMiB: cur.MemUsed >> 20,
		DiskUsed: cur.DiskUsed, DiskTotal: cur.DiskTotal,
	})
}
