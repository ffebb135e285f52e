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

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/sandbox"
)

// capacityFlags are the admission control knobs of `ember serve`.
type capacityFlags struct {
	memoryMiB   int
	overheadMiB int
	overcommit  float64
	shmMiB      int
	parallel    int
	queue       int
	queueWait   time.Duration
}

func (c *capacityFlags) register(fl *pflag.FlagSet) {
	fl.IntVar(&c.memoryMiB, "capacity-memory-mib", 0, "memory running machines may commit, guest RAM plus --vmm-overhead-mib each (0: 90% of the host's)")
	fl.IntVar(&c.overheadMiB, "vmm-overhead-mib", sandbox.DefaultOverheadMiB, "memory one VMM takes beyond its guest's RAM, counted against the capacity and its cgroup limit")
	fl.Float64Var(&c.overcommit, "vcpu-overcommit", sandbox.DefaultVCPUOvercommit, "vCPUs that may run per host CPU")
	fl.IntVar(&c.shmMiB, "capacity-shm-mib", 0, "room for guest RAM files in the VMM's memory directory (0: 90% of its file system)")
	fl.IntVar(&c.parallel, "max-parallel-creates", runtime.NumCPU(), "creates and resumes that run at once; more wait in a queue")
	fl.IntVar(&c.queue, "create-queue", sandbox.DefaultMaxQueue, "creates and resumes that may wait for a turn; more are refused with 429")
	fl.DurationVar(&c.queueWait, "create-queue-wait", sandbox.DefaultQueueWait, "longest a create waits for a turn before it is refused with 429")
}

// capacity turns the flags into the manager's capacity. memDir is where
// the VMM keeps guest RAM files ("" when it keeps none).
func (c *capacityFlags) capacity(memDir string) (sandbox.Capacity, error) {
	switch {
	case c.memoryMiB < 0 || c.overheadMiB < 0 || c.shmMiB < 0:
		return sandbox.Capacity{}, fmt.Errorf("--capacity-memory-mib, --vmm-overhead-mib and --capacity-shm-mib must not be negative")
	case c.overcommit <= 0:
		return sandbox.Capacity{}, fmt.Errorf("--vcpu-overcommit %g: must be above 0", c.overcommit)
	case c.parallel < 1 || c.queue < 0 || c.queueWait <= 0:
		return sandbox.Capacity{}, fmt.Errorf("--max-parallel-creates must be at least 1, --create-queue not negative and --create-queue-wait above 0")
	}
	cp := sandbox.Capacity{
		MemoryMiB: c.memoryMiB, OverheadMiB: c.overheadMiB,
		VCPUs:       int(float64(runtime.NumCPU()) * c.overcommit),
		MaxParallel: c.parallel, MaxQueue: c.queue, QueueWait: c.queueWait,
	}
	if cp.MemoryMiB == 0 {
		total, err := hostMemoryMiB()
		if err != nil {
			return sandbox.Capacity{}, err
		}
		cp.MemoryMiB = total * 9 / 10
	}
	if memDir != "" {
		cp.ShmMiB = c.shmMiB
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
