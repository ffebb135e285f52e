// Package resource describes the bounds on one sandbox's host resources
// and what it uses of them, as plain data: the sandbox manager, the store
// and the API carry these; package cgroup applies and reads them.
package resource

// Limits bound the processes of one sandbox (its VMM and helpers). A
// zero field leaves that resource unbounded.
type Limits struct {
	// CPUs is the CPU time the sandbox may use per wall-clock second, in
	// CPUs (cgroup cpu quota over period): 2 is two CPUs' worth.
	CPUs float64 `json:"cpus,omitempty"`
	// MemoryMiB bounds memory: guest RAM plus the VMM's own.
	MemoryMiB int `json:"memory_mib,omitempty"`
	// Pids bounds processes and threads.
	Pids int `json:"pids,omitempty"`
	// IOWeight is the sandbox's block I/O weight, 10 to 1000 (the
	// default group has 100).
	IOWeight int `json:"io_weight,omitempty"`
}

// Usage is what a sandbox's processes use, read from its cgroup.
type Usage struct {
	// CPUNanos is CPU time used since the cgroup was made.
	CPUNanos uint64 `json:"cpu_ns"`
	// MemoryBytes is memory charged now, MemoryPeakBytes the most so far.
	MemoryBytes     uint64 `json:"memory_bytes"`
	MemoryPeakBytes uint64 `json:"memory_peak_bytes"`
	// Pids counts processes and threads.
	Pids uint64 `json:"pids"`
}

// Within reports whether every bound of l is at most the same bound of
// max (a zero bound in max is no bound), naming the first that is not.
func (l Limits) Within(max Limits) (field string, ok bool) {
	switch {
	case max.CPUs > 0 && (l.CPUs <= 0 || l.CPUs > max.CPUs):
		return "cpus", false
	case max.MemoryMiB > 0 && (l.MemoryMiB <= 0 || l.MemoryMiB > max.MemoryMiB):
		return "memory_mib", false
	case max.Pids > 0 && (l.Pids <= 0 || l.Pids > max.Pids):
		return "pids", false
	case max.IOWeight > 0 && (l.IOWeight <= 0 || l.IOWeight > max.IOWeight):
		return "io_weight", false
	}
	return "", true
}

// Lower returns l with every bound req sets taken from req: what a
// create request asks for in place of the defaults.
func (l Limits) Lower(req Limits) Limits {
	if req.CPUs > 0 {
		l.CPUs = req.CPUs
	}
	if req.MemoryMiB > 0 {
		l.MemoryMiB = req.MemoryMiB
	}
	if req.Pids > 0 {
		l.Pids = req.Pids
	}
	if req.IOWeight > 0 {
		l.IOWeight = req.IOWeight
	}
	return l
}
