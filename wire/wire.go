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
	// AutoResume resumes the sandbox, once paused, when a request for one
	// of its ports reaches the port proxy; it needs AutoPause.
	AutoResume bool `json:"auto_resume,omitempty"`
	// PrivateTraffic gives the sandbox a traffic token the port proxy
	// requires of requests to its ports (Sandbox.TrafficToken).
	PrivateTraffic bool `json:"private_traffic,omitempty"`
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
	// AutoResume: traffic for the paused sandbox resumes it.
	AutoResume bool `json:"auto_resume"`
	// TrafficToken, when set, is what requests to the sandbox's ports must
	// carry in E2b-Traffic-Access-Token.
	TrafficToken string `json:"traffic_token,omitempty"`
	// Snapshot names the snapshot the sandbox was created from.
	Snapshot string `json:"snapshot,omitempty"`
	// DiskBytes and MemoryBytes are the bytes its disk and, while paused,
	// its saved memory occupy on the host (allocated blocks; a file shared
	// by hard links, as the template memory a paused sandbox's state
	// links, counts its share).
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
// twin. Stdin is bytes (base64 in JSON).
type ExecRequest struct {
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args,omitempty"`
	Env  map[string]string `json:"env,omitempty"`
	Cwd  string            `json:"cwd,omitempty"`
	// User is the guest user the command runs as; "" is root.
	User  string `json:"user,omitempty"`
	Stdin []byte `json:"stdin,omitempty"`
	// StdinOpen (streaming only) keeps stdin open after Stdin: the start
	// event's pid takes more at /v1/sandboxes/{id}/processes/{pid}/stdin.
	StdinOpen bool `json:"stdin_open,omitempty"`
	TimeoutS  int  `json:"timeout_s,omitempty"`
}

// ExecResult is how a command ended, with its output (bytes, base64 in
// JSON): at most the daemon's per-stream limit of each, the rest dropped
// and Truncated (and the stream's own flag) set.
type ExecResult struct {
	Stdout          []byte  `json:"stdout,omitempty"`
	Stderr          []byte  `json:"stderr,omitempty"`
	ExitCode        int     `json:"exit_code"`
	DurationMS      float64 `json:"duration_ms"`
	Truncated       bool    `json:"truncated"`
	StdoutTruncated bool    `json:"stdout_truncated,omitempty"`
	StderrTruncated bool    `json:"stderr_truncated,omitempty"`
}

// ExecEvent is one line of the NDJSON stream of
// POST /v1/sandboxes/{id}/exec/stream. Type is "start" (Pid set), "stdout"
// or "stderr" (Data set: bytes, base64 in JSON), "exit" (ExitCode and
// DurationMS set) or "error" (Code and Message set).
type ExecEvent struct {
	Type       string  `json:"type"`
	Pid        uint32  `json:"pid,omitempty"`
	Data       []byte  `json:"data,omitempty"`
	ExitCode   int     `json:"exit_code"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	Code       string  `json:"code,omitempty"`
	Message    string  `json:"message,omitempty"`
}

// FileEntry describes a file, directory or link in a sandbox.
type FileEntry struct {
	Name string `json:"name"`
	// Type is "file", "dir" or "symlink" ("" for anything else).
	Type        string    `json:"type"`
	Path        string    `json:"path"`
	Size        int64     `json:"size"`
	Mode        uint32    `json:"mode"`
	Permissions string    `json:"permissions,omitempty"`
	Owner       string    `json:"owner,omitempty"`
	Group       string    `json:"group,omitempty"`
	ModifiedAt  time.Time `json:"modified_at,omitzero"`
	// SymlinkTarget is set for symbolic links.
	SymlinkTarget string `json:"symlink_target,omitempty"`
}

// MoveRequest is the body of POST /v1/sandboxes/{id}/files/move.
type MoveRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
	// User is the guest user the move runs as; "" is root.
	User string `json:"user,omitempty"`
}

// TerminalMessage is a text message on the terminal WebSocket
// (/v1/sandboxes/{id}/pty); binary messages carry the terminal's bytes.
// Type "resize" (client to daemon: Cols, Rows) or "exit" (daemon to
// client, the last message: ExitCode).
type TerminalMessage struct {
	Type     string `json:"type"`
	Cols     uint32 `json:"cols,omitempty"`
	Rows     uint32 `json:"rows,omitempty"`
	ExitCode int    `json:"exit_code"`
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
	// Source is what a built template came from ("debian:bookworm");
	// Steps how many steps made it; StartCmd and ReadyCmd what its
	// sandboxes start with.
	Source   string `json:"source,omitempty"`
	Steps    int    `json:"steps,omitempty"`
	StartCmd string `json:"start_cmd,omitempty"`
	ReadyCmd string `json:"ready_cmd,omitempty"`
	// SharedWith names the other templates whose builds share cache
	// entries with this one's (a common base and first steps), with how
	// many steps they share.
	SharedWith map[string]int `json:"shared_with,omitempty"`
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
	// Warm lists the warm pools; KSM says whether the host merges
	// identical pages.
	Warm []WarmPool `json:"warm,omitempty"`
	KSM  KSM        `json:"ksm"`

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

// Event is one lifecycle event of GET /v1/events, sent as a server-sent
// event whose id is Seq, whose event name is Type and whose data is this,
// as JSON.
type Event struct {
	// Seq numbers the daemon's events from 1, in the order they happened;
	// a client that reconnects asks for those after the last it saw.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Type is one of the Event* constants.
	Type     string `json:"type"`
	Sandbox  string `json:"sandbox,omitempty"`
	Template string `json:"template,omitempty"`
	// Op is the operation the event ends or comes from (create, restore,
	// pause, resume, snapshot, fork, destroy; run for a machine that died
	// while running, reap for an end time reached, recover for a daemon
	// restart).
	Op string `json:"op,omitempty"`
	// State is the sandbox's state after the event ("" once destroyed).
	State string `json:"state,omitempty"`
	// DurationMS is how long the operation took.
	DurationMS float64 `json:"duration_ms,omitempty"`
	// Snapshot names the snapshot taken, or the one a sandbox was created
	// from.
	Snapshot string `json:"snapshot,omitempty"`
	// Error says why, for a failed event.
	Error string `json:"error,omitempty"`
}

// Event types.
const (
	// EventCreated: a sandbox is running, booted from a template or
	// restored from a snapshot (Snapshot names it).
	EventCreated = "created"
	EventPaused  = "paused"
	EventResumed = "resumed"
	// EventSnapshot: a named snapshot of the sandbox was taken.
	EventSnapshot = "snapshot"
	// EventTimeout: the sandbox reached its end time; a destroyed or
	// paused event follows.
	EventTimeout = "timeout"
	// EventFailed: an operation on the sandbox failed, or its machine
	// died (Error says why; State where that left it).
	EventFailed    = "failed"
	EventDestroyed = "destroyed"
)

// Sample is one reading of a sandbox's resource use, from the guest
// (through its agent) and from the host (its VMM process), as
// GET /v1/sandboxes/{id}/metrics returns them. Either side is missing when
// it could not be read.
type Sample struct {
	Time  time.Time   `json:"timestamp"`
	Guest *GuestUsage `json:"guest,omitempty"`
	Host  *HostUsage  `json:"host,omitempty"`
}

// GuestUsage is what the guest reports of itself, as E2B's envd does.
type GuestUsage struct {
	CPUCount int `json:"cpu_count"`
	// CPUUsedPct is the share of all the guest's vCPUs busy since the
	// previous sample, in percent (0-100).
	CPUUsedPct float64 `json:"cpu_used_pct"`
	// MemUsed is memory in use by processes and the kernel, excluding the
	// page cache (MemCache); MemTotal what the guest kernel manages.
	MemUsed  int64 `json:"mem_used"`
	MemTotal int64 `json:"mem_total"`
	MemCache int64 `json:"mem_cache"`
	// DiskUsed and DiskTotal are the root filesystem's.
	DiskUsed  int64 `json:"disk_used"`
	DiskTotal int64 `json:"disk_total"`
}

// HostUsage is what the sandbox costs the host.
type HostUsage struct {
	// CPUSeconds is the CPU time the sandbox's VMM has used since it
	// started; CPUUsedPct its use since the previous sample, in percent of
	// one host CPU (200 is two CPUs busy).
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUUsedPct float64 `json:"cpu_used_pct"`
	// MemBytes is the VMM's resident memory, guest RAM it touched included.
	MemBytes int64 `json:"mem_bytes"`
	// DiskBytes is what the sandbox's disk occupies on the host
	// (allocated blocks).
	DiskBytes int64 `json:"disk_bytes"`
	// Source says where CPU and memory were read: "cgroup" (the VMM's own
	// cgroup) or "process" (its /proc entry).
	Source string `json:"source"`
}

// WarmPool is one template's warm pool: sandboxes restored ahead of
// demand, which creates of the template's default shape claim (GET
// /v1/warm, PUT /v1/templates/{name}/warm).
type WarmPool struct {
	Template string `json:"template"`
	// Target is how many the pool keeps; Ready how many wait to be
	// claimed; Starting how many are being restored.
	Target   int `json:"target"`
	Ready    int `json:"ready"`
	Starting int `json:"starting"`
	// LastError says why the last fill failed, and RetryAt when the next
	// is due; both are absent once a fill succeeds.
	LastError string     `json:"last_error,omitempty"`
	RetryAt   *time.Time `json:"retry_at,omitempty"`
}

// WarmRequest sets how many sandboxes a template's warm pool keeps.
type WarmRequest struct {
	Count int `json:"count"`
}

// KSM says whether the host merges identical memory pages (kernel
// samepage merging), which guests' memory is marked for.
type KSM struct {
	// State is "on", "off" or "unavailable" (the kernel has no KSM).
	State string `json:"state"`
	// PagesShared are the merged pages kept, PagesSharing the pages
	// merged into them (the memory saved, in pages).
	PagesShared  int64 `json:"pages_shared"`
	PagesSharing int64 `json:"pages_sharing"`
}
