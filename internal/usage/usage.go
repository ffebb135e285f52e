// Package usage reads resource use from Linux's /proc and cgroup files: a
// whole system's, which the guest agent reports of its guest (E2B's envd
// /metrics), and one process's, which the daemon reads of each sandbox's
// VMM (from the process's own cgroup when it has one, since that also
// counts the threads and helpers charged to it, else from /proc/<pid>).
package usage

import (
	"strconv"
	"strings"
	"time"
)

// System is a machine's resource use at one moment, measured as E2B's envd
// measures it (gopsutil's definitions), so the figures mean the same.
type System struct {
	CPUCount int
	// CPUBusy and CPUTotal are the seconds all CPUs spent busy (neither
	// idle nor waiting for I/O) and in all, since boot; CPUPercent turns two
	// readings into a share.
	CPUBusy, CPUTotal float64
	// MemUsed is MemTotal less free memory, buffers and the page cache;
	// MemCache is the page cache with reclaimable slab.
	MemTotal, MemUsed, MemCache int64
	// DiskUsed and DiskTotal are the file system's at the root given.
	DiskUsed, DiskTotal int64
}

// CPUPercent is the share of all CPUs busy between an earlier reading and
// this one, 0-100; 0 when no time passed between them.
func (cur System) CPUPercent(prev System) float64 {
	total := cur.CPUTotal - prev.CPUTotal
	if total <= 0 {
		return 0
	}
	return min(max(100*(cur.CPUBusy-prev.CPUBusy)/total, 0), 100)
}

// Where a process's figures come from.
const (
	SourceCgroup  = "cgroup"
	SourceProcess = "process"
)

// Process is one process's resource use at one moment.
type Process struct {
	// CPUSeconds is the CPU time used (user and system), since Started.
	CPUSeconds float64
	// MemBytes is resident memory: the process's RSS, or the cgroup's
	// charge.
	MemBytes int64
	Started  time.Time
	// Source is SourceCgroup when the figures are the process's own
	// cgroup's, SourceProcess when they are its /proc entry's.
	Source string
}

// CPUPercent is the process's CPU use between an earlier reading (taken at
// prevAt) and this one (taken at at), in percent of one CPU; with no
// earlier reading of the same process, since it started.
func (cur Process) CPUPercent(prev *Process, at, prevAt time.Time) float64 {
	var cpu, wall float64
	switch {
	case prev != nil && prev.Started.Equal(cur.Started) && prev.Source == cur.Source:
		cpu, wall = cur.CPUSeconds-prev.CPUSeconds, at.Sub(prevAt).Seconds()
	case !cur.Started.IsZero():
		cpu, wall = cur.CPUSeconds, at.Sub(cur.Started).Seconds()
	}
	if wall <= 0 {
		return 0
	}
	return max(100*cpu/wall, 0)
}

// KSM is the host's kernel samepage merging: whether it runs and what it
// has merged. Guests' memory is marked mergeable; nothing depends on it.
type KSM struct {
	// State is "on", "off" or "unavailable" (the kernel has no KSM).
	State string
	// PagesShared are the merged pages kept, PagesSharing the pages
	// merged into them.
	PagesShared, PagesSharing int64
}

// KSMDir is where the kernel describes KSM.
const KSMDir = "/sys/kernel/mm/ksm"

// ReadKSM reads KSM's state from KSMDir through read (os.ReadFile, or a
// host checker's own reader).
func ReadKSM(read func(string) ([]byte, error)) KSM {
	b, err := read(KSMDir + "/run")
	if err != nil {
		return KSM{State: "unavailable"}
	}
	k := KSM{State: "off"}
	if strings.TrimSpace(string(b)) == "1" {
		k.State = "on"
	}
	count := func(name string) int64 {
		b, err := read(KSMDir + "/" + name)
		if err != nil {
			return 0
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	k.PagesShared, k.PagesSharing = count("pages_shared"), count("pages_sharing")
	return k
}
