//go:build linux

package main

import (
	"testing"

	"github.com/emberhq/ember/internal/metrics"
	"github.com/emberhq/ember/internal/sandbox"
)

// The capacity metrics are what admission control committed and what it
// has left; a resource committed beyond its bound shows none free.
func TestCapacityMetrics(t *testing.T) {
	u := sandbox.Usage{
		Capacity:  sandbox.Capacity{MemoryMiB: 1000, VCPUs: 8, ShmMiB: 500, MaxParallel: 2, MaxQueue: 10},
		MemoryMiB: 300, VCPUs: 9, ShmMiB: 128, Running: 1, Waiting: 3,
	}
	got := map[string]metrics.Capacity{}
	for _, c := range capacityMetrics(u) {
		got[c.Resource] = c
	}
	want := map[string][2]float64{
		"memory_bytes": {300 << 20, 700 << 20}, "vcpus": {9, 0}, "shm_bytes": {128 << 20, 372 << 20},
		"create_turns": {1, 1}, "create_queue": {3, 7},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for name, w := range want {
		if c := got[name]; c.Used != w[0] || c.Free != w[1] {
			t.Errorf("%s = used %g free %g, want %g %g", name, c.Used, c.Free, w[0], w[1])
		}
	}
	// No memory directory, no bound on parallel creates: those are absent.
	for _, c := range capacityMetrics(sandbox.Usage{Capacity: sandbox.Capacity{MemoryMiB: 10, VCPUs: 1}}) {
		if c.Resource != "memory_bytes" && c.Resource != "vcpus" {
			t.Errorf("unexpected %s", c.Resource)
		}
	}
}
