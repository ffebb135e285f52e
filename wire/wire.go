// Package wire holds the JSON bodies of ember's REST API (/v1): the one
// definition the daemon's HTTP server and the Go SDK in client/ both use, so
// the two cannot drift apart. It has no dependencies beyond the standard
// library.
package wire

import "time"

// CreateSandboxRequest is the body of POST /v1/sandboxes. Every field may be
// left zero to take the daemon's default. Snapshot restores the named snapshot
// instead of booting a template; VCPUs, MemoryMiB and DiskMiB are then the
// snapshot's.
type CreateSandboxRequest struct {
	Template  string            `json:"template,omitempty"`
	Snapshot  string            `json:"snapshot,omitempty"`
	VCPUs     int               `json:"vcpus,omitempty"`
	MemoryMiB int               `json:"memory_mib,omitempty"`
	DiskMiB   int               `json:"disk_mib,omitempty"`
	TimeoutS  int               `json:"timeout_s,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	// Network is the egress policy; nil allows the internet.
	Network *NetworkPolicy `json:"network,omitempty"`
	// AutoPause pauses the sandbox at its end time instead of destroying it.
	AutoPause bool `json:"auto_pause,omitempty"`
	// Limits lowers the bounds of the sandbox's cgroup below the daemon's
	// defaults; a field left out keeps the default, a higher one is an
	// invalid_argument.
	Limits *Limits `json:"limits,omitempty"`
}

// Limits bound what a running sandbox's processes (its VMM and helpers)
// may use, enforced by its cgroup. Zero is no bound.
type Limits struct {
	// CPUs is CPU time per wall-clock second, in CPUs.
	CPUs float64 `json:"cpus,omitempty"`
	// MemoryMiB bounds memory: guest RAM plus what the VMM takes.
	MemoryMiB int `json:"memory_mib,omitempty"`
	// Pids bounds processes and threads.
	Pids int `json:"pids,omitempty"`
	// IOWeight is the block I/O weight, 10 to 1000.
	IOWeight int `json:"io_weight,omitempty"`
}

// Usage is what a running sandbox's processes use, read from its cgroup.
type Usage struct {
	CPUNanos        uint64 `json:"cpu_ns"`
	MemoryBytes     uint64 `json:"memory_bytes"`
	MemoryPeakBytes uint64 `json:"memory_peak_bytes"`
	Pids            uint64 `json:"pids"`
}

// NetworkPolicy is what a sandbox may reach. A destination in Deny is
// refused; else one in Allow is reached; else the internet is reachable
// exactly when Internet is true (nil means true). The host, other sandboxes
// and 169.254.169.254 are never reachable, whatever the policy.
type NetworkPolicy struct {
	Internet *bool    `json:"internet,omitempty"`
	Allow    []string `json:"allow,omitempty"`
	Deny     []string `json:"deny,omitempty"`
}

// Sandbox describes one sandbox.
type Sandbox struct {
	ID        string             `json:"id"`
	State     string             `json:"state"`
	Template  string             `json:"template"`
	VCPUs     int                `json:"vcpus"`
	MemoryMiB int                `json:"memory_mib"`
	DiskMiB   int                `json:"disk_mib"`
	Metadata  map[string]string  `json:"metadata"`
	CreatedAt time.Time          `json:"created_at"`
	ExpiresAt time.Time          `json:"expires_at"`
	TimingsMS map[string]float64 `json:"timings_ms,omitempty"`
	Network   NetworkPolicy      `json:"network"`
	// Error says why a sandbox is in the "error" state.
	Error string `json:"error,omitempty"`
	// AutoPause: the sandbox is paused, not destroyed, at its end time.
	AutoPause bool `json:"auto_pause"`
	// Snapshot names the snapshot the sandbox was created from.
	Snapshot string `json:"snapshot,omitempty"`
	// DiskBytes and MemoryBytes are the bytes its disk and, while paused,
	// its saved memory occupy on the host (allocated blocks).
	DiskBytes   int64 `json:"disk_bytes"`
	MemoryBytes int64 `json:"memory_bytes"`
	// Limits are the bounds of its cgroup; Usage, while it runs, what its
	// processes use.
	Limits *Limits `json:"limits,omitempty"`
	Usage  *Usage  `json:"usage,omitempty"`
}

// Snapshot is a named capture of a sandbox (memory, device state and disk)
// that sandboxes can be created from.
type Snapshot struct {
	Name      string    `json:"name"`
	Sandbox   string    `json:"sandbox"`
	Template  string    `json:"template"`
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskMiB   int       `json:"disk_mib"`
	CreatedAt time.Time `json:"created_at"`
	// DiskBytes and MemoryBytes are the bytes the flattened disk and the
	// saved machine state occupy on the host (allocated blocks).
	DiskBytes   int64 `json:"disk_bytes"`
	MemoryBytes int64 `json:"memory_bytes"`
}

// CreateSnapshotRequest is the body of POST /v1/snapshots.
type CreateSnapshotRequest struct {
	Sandbox string `json:"sandbox"`
	Name    string `json:"name"`
}

// ForkRequest is the body of POST /v1/sandboxes/{id}/fork; Count 0 means 1.
type ForkRequest struct {
	Count int `json:"count,omitempty"`
}

// TimeoutRequest is the body of POST /v1/sandboxes/{id}/timeout: the
// sandbox's end time becomes now + TimeoutS.
type TimeoutRequest struct {
	TimeoutS int `json:"timeout_s"`
}

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec and its streaming
// twin.
type ExecRequest struct {
	Cmd      string            `json:"cmd"`
	Args     []string          `json:"args,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	Cwd      string            `json:"cwd,omitempty"`
	Stdin    string            `json:"stdin,omitempty"`
	TimeoutS int               `json:"timeout_s,omitempty"`
}

// ExecResult is how a command ended, with its whole output.
type ExecResult struct {
	Stdout     string  `json:"stdout"`
	Stderr     string  `json:"stderr"`
	ExitCode   int     `json:"exit_code"`
	DurationMS float64 `json:"duration_ms"`
}

// ExecEvent is one line of the NDJSON stream of
// POST /v1/sandboxes/{id}/exec/stream. Type is "stdout" or "stderr" (Data set),
// "exit" (ExitCode and DurationMS set) or "error" (Code and Message set).
type ExecEvent struct {
	Type       string  `json:"type"`
	Data       string  `json:"data,omitempty"`
	ExitCode   int     `json:"exit_code"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	Code       string  `json:"code,omitempty"`
	Message    string  `json:"message,omitempty"`
}

// Template describes a template a sandbox can be created from.
type Template struct {
	Name string `json:"name"`
	// KernelBytes and RootfsBytes are the space the files really occupy;
	// DiskMiB is the root disk's size as the guest sees it.
	KernelBytes int64     `json:"kernel_bytes"`
	RootfsBytes int64     `json:"rootfs_bytes"`
	DiskMiB     int       `json:"disk_mib"`
	BuiltAt     time.Time `json:"built_at"`
}

// Info describes the daemon.
type Info struct {
	Version      string `json:"version"`
	VMM          string `json:"vmm"`
	VMMReason    string `json:"vmm_reason"`
	Rootfs       string `json:"rootfs"`
	RootfsReason string `json:"rootfs_reason"`
	Sandboxes    int    `json:"sandboxes"`
	// Accelerators says which accelerator each template's kernel runs
	// under, and why.
	Accelerators []AccelInfo `json:"accelerators"`

	// Hardening: what the daemon may commit to machines and what it has,
	// and how each VMM is confined.
	Capacity    *CapacityInfo `json:"capacity,omitempty"`
	Confinement []Confinement `json:"confinement,omitempty"`
	// Goroutines is how many goroutines the daemon runs: a figure that
	// must not grow with the sandboxes it has made (the soak test reads it).
	Goroutines int `json:"goroutines,omitempty"`
}

// CapacityInfo is what the daemon may commit to running machines and
// what it has committed; a create beyond it is answered 429
// capacity_exhausted. A zero limit is none.
type CapacityInfo struct {
	MemoryMiB       int `json:"memory_mib"`
	MemoryLimitMiB  int `json:"memory_limit_mib"`
	VCPUs           int `json:"vcpus"`
	VCPULimit       int `json:"vcpu_limit"`
	ShmMiB          int `json:"shm_mib"`
	ShmLimitMiB     int `json:"shm_limit_mib"`
	OverheadMiB     int `json:"overhead_mib"`
	Machines        int `json:"machines"`
	MaxParallel     int `json:"max_parallel"`
	Running         int `json:"running"`
	Waiting         int `json:"waiting"`
	MaxQueue        int `json:"max_queue"`
	QueueWaitMillis int `json:"queue_wait_ms"`
}

// Confinement says whether one measure confining the VMM is in force, and
// why not where it is not.
type Confinement struct {
	// Name is "seccomp", "user", "chroot", "cgroup cpu", "cgroup memory",
	// "cgroup pids" or "cgroup blkio".
	Name   string `json:"name"`
	On     bool   `json:"on"`
	Detail string `json:"detail"`
}

// AccelInfo is the accelerator one template's kernel gets.
type AccelInfo struct {
	Template string `json:"template"`
	// Kernel is the first 8 hex digits of the kernel's SHA-256.
	Kernel string `json:"kernel"`
	// Accel is "kvm" or "tcg"; empty when the driver cannot run the
	// kernel at all (Reason says why).
	Accel  string `json:"accel"`
	Reason string `json:"reason"`
}

// Error is the body of every error response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}
