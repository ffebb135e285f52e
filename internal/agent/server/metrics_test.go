package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/usage"
)

// getMetrics asks for /metrics with token and decodes a 200's body.
func getMetrics(t *testing.T, url, token string) (int, proto.Metrics) {
	t.Helper()
	status, body := request(t, http.MethodGet, url+"/metrics", token, "")
	var m proto.Metrics
	if status == http.StatusOK {
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
	}
	return status, m
}

func TestMetricsReportsTheGuestAsEnvdDoes(t *testing.T) {
	readings := []usage.System{
		{CPUCount: 2, CPUBusy: 10, CPUTotal: 100, MemTotal: 256 << 20, MemUsed: 64 << 20, MemCache: 8 << 20, DiskUsed: 1 << 30, DiskTotal: 4 << 30},
		{CPUCount: 2, CPUBusy: 40, CPUTotal: 140, MemTotal: 256 << 20, MemUsed: 128 << 20, MemCache: 8 << 20, DiskUsed: 1 << 30, DiskTotal: 4 << 30},
	}
	n := 0
	_, url := serve(t, Config{Usage: func() (usage.System, error) { r := readings[min(n, len(readings)-1)]; n++; return r, nil }})
	cases := []struct {
		name    string
		wantPct float64
		wantMiB int64
	}{
		// The first share is since boot; the second since the first request.
		{"first: since boot", 10, 64},
		{"second: since the first", 75, 128},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, m := getMetrics(t, url, "")
			if status != http.StatusOK {
				t.Fatalf("status %d", status)
			}
			if m.CPUUsedPct != tc.wantPct || m.CPUCount != 2 || m.MemUsedMiB != tc.wantMiB || m.MemTotalMiB != 256 ||
				m.MemTotal != 256<<20 || m.MemCache != 8<<20 || m.DiskTotal != 4<<30 || m.DiskUsed != 1<<30 || m.Timestamp == 0 {
				t.Fatalf("got %+v", m)
			}
		})
	}
}

func TestMetricsNeedsTheTokenAndReportsFailures(t *testing.T) {
	var fail atomic.Bool
	s, url := serve(t, Config{Usage: func() (usage.System, error) {
		if fail.Load() {
			return usage.System{}, errors.New("no /proc")
		}
		return usage.System{CPUCount: 1}, nil
	}})
	s.mu.Lock()
	s.token = "tok"
	s.mu.Unlock()
	for _, tc := range []struct {
		name, token string
		fail        bool
		want        int
	}{
		{"no token", "", false, http.StatusUnauthorized},
		{"token", "tok", false, http.StatusOK},
		{"unreadable", "tok", true, http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fail.Store(tc.fail)
			if status, _ := getMetrics(t, url, tc.token); status != tc.want {
				t.Fatalf("status %d, want %d", status, tc.want)
			}
		})
	}
}

// TestMetricsOfThisMachine reads the real /proc, as the agent does in a
// guest.
func TestMetricsOfThisMachine(t *testing.T) {
	_, url := serve(t, Config{})
	status, m := getMetrics(t, url, "")
	if status != http.StatusOK || m.CPUCount < 1 || m.MemTotal <= 0 || m.DiskTotal <= 0 {
		t.Fatalf("%d %+v", status, m)
	}
}
