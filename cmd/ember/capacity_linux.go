//go:build linux

package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/metrics"
	"github.com/emberhq/ember/internal/sandbox"
)

// capacityFor turns the admission settings (validated by config.Load)
// into the manager's capacity. memDir is where the VMM keeps guest RAM
// files ("" when it keeps none).
func capacityFor(f config.Serve, memDir string) (sandbox.Capacity, error) {
	cp := sandbox.Capacity{
		MemoryMiB: f.CapacityMemoryMiB, OverheadMiB: f.VMMOverheadMiB,
		VCPUs:       int(float64(runtime.NumCPU()) * f.VCPUOvercommit),
		MaxParallel: f.MaxParallelCreates, MaxQueue: f.CreateQueue, QueueWait: f.QueueWait(),
	}
	if cp.MemoryMiB == 0 {
		total, err := hostMemoryMiB()
		if err != nil {
			return sandbox.Capacity{}, err
		}
		cp.MemoryMiB = total * 9 / 10
	}
	if memDir != "" {
		cp.ShmMiB = f.CapacityShmMiB
		if cp.ShmMiB == 0 {
			total, _, err := fsMiB(memDir)
			if err != nil {
				return sandbox.Capacity{}, err
			}
			cp.ShmMiB = total * 9 / 10
		}
		cp.ShmFree = func() (int, error) {
			_, free, err := fsMiB(memDir)
			return free, err
		}
	}
	return cp, nil
}

// hostMemoryMiB reads MemTotal from /proc/meminfo.
func hostMemoryMiB() (int, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("read host memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal %q: %w", v, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("read host memory: no MemTotal in /proc/meminfo")
}

// fsMiB returns the size of the file system holding path and what is free
// on it.
func fsMiB(path string) (total, free int, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int(st.Blocks * uint64(st.Bsize) >> 20), int(st.Bavail * uint64(st.Bsize) >> 20), nil
}

// capacityInfo is the manager's capacity as `ember info` shows it.
func capacityInfo(u sandbox.Usage) *client.CapacityInfo {
	c := u.Capacity
	return &client.CapacityInfo{
		MemoryMiB: u.MemoryMiB, MemoryLimitMiB: c.MemoryMiB, VCPUs: u.VCPUs, VCPULimit: c.VCPUs,
		ShmMiB: u.ShmMiB, ShmLimitMiB: c.ShmMiB, OverheadMiB: c.OverheadMiB, Machines: u.Machines,
		MaxParallel: c.MaxParallel, Running: u.Running, Waiting: u.Waiting, MaxQueue: c.MaxQueue,
		QueueWaitMillis: int(c.QueueWait / time.Millisecond),
	}
}

// capacityMetrics is the manager's capacity as the metrics export it
// (ember_capacity_<resource>{state="used"|"free"}): what running machines
// commit against what admission control lets them, and the create queue.
func capacityMetrics(u sandbox.Usage) []metrics.Capacity {
	c := u.Capacity
	free := func(limit, used int) float64 { return float64(max(0, limit-used)) }
	out := []metrics.Capacity{
		{Resource: "memory_bytes", Used: float64(u.MemoryMiB) * (1 << 20), Free: free(c.MemoryMiB, u.MemoryMiB) * (1 << 20)},
		{Resource: "vcpus", Used: float64(u.VCPUs), Free: free(c.VCPUs, u.VCPUs)},
	}
	if c.ShmMiB > 0 {
		out = append(out, metrics.Capacity{Resource: "shm_bytes", Used: float64(u.ShmMiB) * (1 << 20), Free: free(c.ShmMiB, u.ShmMiB) * (1 << 20)})
	}
	if c.MaxParallel > 0 {
		out = append(out, metrics.Capacity{Resource: "create_turns", Used: float64(u.Running), Free: free(c.MaxParallel, u.Running)},
			metrics.Capacity{Resource: "create_queue", Used: float64(u.Waiting), Free: free(c.MaxQueue, u.Waiting)})
	}
	return out
}
