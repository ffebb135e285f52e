// Package vmm defines the interface ember uses to run a microVM, independent of
// the virtual machine monitor behind it. Implementations live in subpackages
// (qemu, firecracker); vmmtest holds the conformance suite every one passes.
package vmm

import (
	"context"
	"errors"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/vmm/accel"
)

// ErrNotRunning is returned when an operation needs a live VMM process and the
// process is gone.
var ErrNotRunning = errors.New("vmm process not running")

// ErrUnresponsive is returned by Attach when the process is the VMM it was
// but does not answer its control socket: it may still hold its disk and
// network device, so it is not gone.
var ErrUnresponsive = errors.New("vmm process does not answer")

// Spec describes one machine. Paths are absolute.
type Spec struct {
	// ID names the machine in logs and kernel objects (the sandbox id).
	ID string
	// Dir is the machine's private directory: control sockets, pid file and
	// console log are created inside it. It must exist.
	Dir string
	// Kernel is an uncompressed vmlinux (ELF, PVH entry point).
	Kernel string
	// Initrd is optional.
	Initrd string
	// RootDisk is the sandbox's own writable disk; DiskFormat is "raw" or "qcow2".
	RootDisk   string
	DiskFormat string
	// Netns is the path of the network namespace the VMM process runs in
	// (for example /run/netns/ember-ns-3); TAP is the name of the TAP device
	// inside it and MAC the guest's address on it.
	Netns string
	TAP   string
	MAC   string
	// BootArgs are appended to the driver's own kernel command line.
	BootArgs  string
	VCPUs     int
	MemoryMiB int
	// Place, when set, puts each process the driver starts for the
	// machine (the VMM, a helper such as a page server) into the
	// sandbox's cgroup, right after it starts; a driver whose Place fails
	// ends the process and fails.
	Place func(pid int) error `json:"-"`
}

// ConsoleLog returns the path of the serial console log inside dir.
func ConsoleLog(dir string) string { return dir + "/console.log" }

// Driver starts machines.
type Driver interface {
	// Name is the driver's short name ("qemu", "firecracker").
	Name() string
	// Start cold-boots a machine. On error nothing is left running.
	Start(ctx context.Context, spec Spec) (Machine, error)
	// Attach re-adopts a machine started earlier (by this or a previous daemon
	// process) from its spec and recorded pid. It returns ErrNotRunning when the
	// process is gone or is not the VMM it was, and ErrUnresponsive when it
	// is but does not answer.
	Attach(ctx context.Context, spec Spec, pid int) (Machine, error)
}

// Machine is a running (or paused) microVM.
type Machine interface {
	// PID is the VMM process id.
	PID() int
	// Pause stops the vCPUs; Resume starts them again.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Stop ends the VMM process: a clean quit first, then SIGTERM, then SIGKILL.
	// It is idempotent: stopping a stopped machine returns nil.
	Stop(ctx context.Context) error
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
}

// State is a machine's run state as its VMM reports it. VMMs may report
// states beyond the two below under their own names.
type State string

// The run states every driver reports.
const (
	// StateRunning means the vCPUs run.
	StateRunning State = "running"
	// StatePaused means the vCPUs are stopped (Machine.Pause).
	StatePaused State = "paused"
)

// Stater is implemented by machines that can report their run state. It is
// optional; the conformance suite checks Pause and Resume with it when a
// machine has it.
type Stater interface {
	State(ctx context.Context) (State, error)
}

// SnapshotOptions tune Snapshotter.Snapshot.
type SnapshotOptions struct {
	// Diff asks for only the memory dirtied since the last snapshot, where the
	// VMM tracks dirty pages (Firecracker with track_dirty_pages); a driver
	// that cannot takes a full snapshot.
	Diff bool
}

// Snapshotter is implemented by machines that can save their whole state
// (devices, vCPUs, memory) so that Restorer.Restore brings them back.
type Snapshotter interface {
	// Snapshot writes the state of the paused machine into dir (which exists
	// and is empty), in the VMM's own format; the machine stays paused. The
	// guest's disk is not part of it: the caller keeps the disk as it was at
	// the snapshot.
	Snapshot(ctx context.Context, dir string, opts SnapshotOptions) error
}

// Restorer is implemented by drivers that can start a machine from a
// directory written by Snapshot. spec describes the new machine: its disk
// (with the content it had at the snapshot), network slot, directory; its
// vCPUs and memory must equal the snapshot's. The restored machine is
// running when Restore returns.
type Restorer interface {
	Restore(ctx context.Context, spec Spec, snapshotDir string) (Machine, error)
}

// Accelerator is implemented by drivers that can tell which accelerator a
// guest kernel runs under and why (package accel). It fails for a kernel
// the driver cannot run at all.
type Accelerator interface {
	AccelFor(ctx context.Context, kernel string) (accel.Verdict, error)
}

// ProcessReclaimer is implemented by drivers that can find the VMM (and
// helper) processes an earlier daemon started, by the same identity check
// Attach makes, and end those keep does not account for: SIGTERM, then
// SIGKILL to the process group after a deadline.
type ProcessReclaimer interface {
	ReclaimProcesses(ctx context.Context, keep reclaim.Keep) (reclaim.Result, error)
}

// MemoryReclaimer is implemented by drivers that keep guest memory in files
// of their own, which a VMM killed while no daemon watched leaves behind.
type MemoryReclaimer interface {
	ReclaimMemory(ctx context.Context, keep reclaim.Keep) (reclaim.Result, error)
}

// Measure is one measure confining a driver's VMMs (a seccomp filter, an
// unprivileged user, a chroot, a jail): whether it is in force, and how or
// why not, for `ember info`.
type Measure struct {
	Name   string
	On     bool
	Detail string
}

// Confiner is implemented by drivers that say how their VMMs are
// confined.
type Confiner interface {
	Measures() []Measure
}

// HelperProcs is implemented by machines that run helper processes of
// their own beside the VMM (Firecracker's page server of a restored
// machine): a restarted daemon keeps them as it keeps the VMM.
type HelperProcs interface {
	Helpers() []int
}

// DiskFormats is implemented by drivers that say which root disk formats
// (Spec.DiskFormat values: "raw", "qcow2") their VMM opens, so that the
// daemon picks a disk backend the driver can use without knowing drivers
// by name. A driver without it is taken to open raw disks only.
type DiskFormats interface {
	DiskFormats() []string
}
