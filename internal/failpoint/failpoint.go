// Package failpoint names the steps of ember's multi-step operations at
// which a crash is tested: each Hit is a place where the daemon may die in
// the real world (a SIGKILL, an OOM kill, a power cut), and the crash
// matrix test (test/e2e) kills it at each one in turn and checks that the
// next start loses nothing. Hits cost nothing in the shipped binary: only a
// build with the "failpoints" tag compiles them in, and there a Hit whose
// name is in $EMBER_FAILPOINT kills the process with SIGKILL at once.
package failpoint

// Env names the environment variable that arms a failpoint: its value is
// the failpoint's name.
const Env = "EMBER_FAILPOINT"

// The failpoints, by operation. A name is "<operation>/<step>", the step
// being what has just happened.
const (
	CreateRecord  = "create/record"  // the record is written, nothing acquired
	CreateDisk    = "create/disk"    // the disk is prepared
	CreateSlot    = "create/slot"    // the network slot is held
	CreateVMM     = "create/vmm"     // the VMM runs, the agent not yet asked
	CreateRunning = "create/running" // the record says running, no answer sent

	PausePausing   = "pause/pausing"   // the record says pausing
	PauseStopped   = "pause/stopped"   // the vCPUs are stopped
	PauseSaved     = "pause/saved"     // the state is written, not yet published
	PausePublished = "pause/published" // the state is published, the VMM still runs
	PauseReleased  = "pause/released"  // the VMM is gone, the record not yet paused

	ResumeResuming = "resume/resuming" // the record says resuming
	ResumeAttached = "resume/attached" // the disk is attached
	ResumeRestored = "resume/restored" // the VMM runs the restored guest
	ResumeRunning  = "resume/running"  // the record says running, saved state still there

	SnapshotStopped   = "snapshot/stopped"   // the source's vCPUs are stopped
	SnapshotSaved     = "snapshot/saved"     // its machine state is written
	SnapshotFlattened = "snapshot/flattened" // its disk is flattened
	SnapshotPublished = "snapshot/published" // the directory is published, no record yet

	ForkSnapshot = "fork/snapshot" // the hidden snapshot is made
	ForkCreated  = "fork/created"  // the first fork runs

	DestroyStopping = "destroy/stopping" // the record says stopping
	DestroyVMM      = "destroy/vmm"      // the VMM is stopped, the rest still held

	TemplateStaged = "template/staged" // the root filesystem's files are staged
	TemplateImage  = "template/image"  // the image is made, not yet published
)

// All lists every failpoint, in the order the crash matrix runs them.
var All = []string{
	CreateRecord, CreateDisk, CreateSlot, CreateVMM, CreateRunning,
	PausePausing, PauseStopped, PauseSaved, PausePublished, PauseReleased,
	ResumeResuming, ResumeAttached, ResumeRestored, ResumeRunning,
	SnapshotStopped, SnapshotSaved, SnapshotFlattened, SnapshotPublished,
	ForkSnapshot, ForkCreated,
	DestroyStopping, DestroyVMM,
	TemplateStaged, TemplateImage,
}
