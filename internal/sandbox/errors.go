package sandbox

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmm"
)

// Sentinels of file operations, terminals and stdin inside a sandbox, as
// the guest agent reports them.
var (
	// ErrFileNotFound: nothing at that path in the sandbox.
	ErrFileNotFound = agent.ErrFileNotFound
	// ErrIsDirectory: a directory where a file is expected.
	ErrIsDirectory = agent.ErrIsDirectory
	// ErrNotDirectory: a file where a directory is expected.
	ErrNotDirectory = agent.ErrNotDirectory
	// ErrPermission: the guest user may not do that.
	ErrPermission = agent.ErrPermission
	// ErrNoSpace: the sandbox's disk is full; nothing was written.
	ErrNoSpace = agent.ErrNoSpace
	// ErrFileExists: something is at that path already.
	ErrFileExists = agent.ErrExists
	// ErrUnknownUser: the sandbox has no such user.
	ErrUnknownUser = agent.ErrUnknownUser
	// ErrInvalidGuest: the guest refused the request as malformed (the
	// message says what).
	ErrInvalidGuest = agent.ErrInvalid
	// ErrNoProcess: no running process with that pid takes stdin.
	ErrNoProcess = agent.ErrNoProcess
)

// Sentinels callers branch on; internal/api maps each to a status and a code.
var (
	// ErrNotFound: no sandbox with that id.
	ErrNotFound = errors.New("sandbox not found")
	// ErrTemplateNotFound: no template with that name.
	ErrTemplateNotFound = errors.New("template not found")
	// ErrInvalid: a request field is malformed or out of range (see InvalidError).
	ErrInvalid = errors.New("invalid argument")
	// ErrConflict: the sandbox is not in a state that allows the operation
	// (a *StateConflict says which state it is in).
	ErrConflict = errors.New("conflict")
	// ErrExecTimeout: a command outlived its timeout and was killed.
	ErrExecTimeout = errors.New("command timed out")
	// ErrClosed: the manager is shutting down.
	ErrClosed = errors.New("manager closed")
	// ErrNotPaused: resume of a sandbox that is not paused (a StateConflict
	// wanting "paused" is one).
	ErrNotPaused = errors.New("sandbox not paused")
	// ErrUnsupported: this daemon cannot do that: its VMM driver cannot
	// snapshot or restore machines, or its network mode cannot move a
	// restored machine to another slot. The message says which.
	ErrUnsupported = errors.New("not supported")
	// ErrSnapshotNotFound: no snapshot with that name.
	ErrSnapshotNotFound = errors.New("snapshot not found")
	// ErrSnapshotExists: a snapshot with that name exists already.
	ErrSnapshotExists = errors.New("snapshot exists")
	// ErrSnapshotInUse: a sandbox created from the snapshot still exists.
	ErrSnapshotInUse = errors.New("snapshot in use")
)

// InvalidError names the request field that was rejected and why.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Reason) }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// StateConflict is a sandbox not in the state an operation needs. It wraps
// ErrConflict, and ErrNotPaused when the operation needed a paused sandbox.
type StateConflict struct {
	ID string
	// State is the sandbox's state; Want what the operation needs ("running",
	// "paused", "running or paused").
	State, Want string
}

func (e *StateConflict) Error() string {
	return fmt.Sprintf("sandbox %s is %s, not %s", e.ID, e.State, e.Want)
}

// Is makes errors.Is(err, ErrConflict) true, and ErrNotPaused for a resume.
func (e *StateConflict) Is(target error) bool {
	return target == ErrConflict || target == ErrNotPaused && e.Want == "paused"
}

func stateError(r store.Sandbox, want string) error {
	return &StateConflict{ID: r.ID, State: r.State, Want: want}
}

// What a lifecycle operation failed in: the parts of the host the daemon
// drives. An *OpError wraps one of them; internal/api maps each to a status
// and a stable code, and tells the client the first useful line of the
// cause.
var (
	// ErrDisk: the sandbox's disk (or its directory) could not be made,
	// attached or flattened.
	ErrDisk = errors.New("disk failed")
	// ErrNetwork: the sandbox's network slot or its policy could not be set
	// up.
	ErrNetwork = errors.New("network failed")
	// ErrNoSlots: every network slot of this daemon is taken. An
	// *OpError of kind ErrNetwork wraps it.
	ErrNoSlots = slot.ErrNoCapacity
	// ErrVMMStart: the VMM did not start the machine, or did not restore
	// it from its saved state.
	ErrVMMStart = errors.New("vmm did not start the machine")
	// ErrVMMSave: the VMM could not pause or save the machine.
	ErrVMMSave = errors.New("vmm could not save the machine")
	// ErrBoot: the machine started, but the guest's agent never answered.
	ErrBoot = errors.New("guest did not come up")
	// ErrAgent: the guest's agent answered, but refused to set the guest up.
	ErrAgent = errors.New("guest agent failed")
	// ErrStore: the daemon's database could not record the sandbox.
	ErrStore = errors.New("store failed")
)

// OpError is a lifecycle operation on a sandbox that failed in one part of
// the host. errors.Is finds its Kind and everything its cause wraps.
type OpError struct {
	// Op is the operation ("create", "resume", "pause", "snapshot"), ID the
	// sandbox and Step what the operation was doing ("prepare disk").
	Op, ID, Step string
	// Kind is one of ErrDisk, ErrNetwork, ErrVMMStart, ErrVMMSave, ErrBoot,
	// ErrAgent and ErrStore.
	Kind error
	// Hint, when set, is the first useful line of what went wrong, found
	// where the cause alone does not say it (a guest's console).
	Hint string
	Err  error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("%s sandbox %s: %s: %v", e.Op, e.ID, e.Step, e.Err)
}

// Unwrap returns the kind and the cause.
func (e *OpError) Unwrap() []error { return []error{e.Kind, e.Err} }

// Cause returns the first useful line of what went wrong, for the client
// (the full chain is for the log): the Hint, else the VMM's own error line
// where it exited with one, else the first line of the cause.
func (e *OpError) Cause() string {
	if e.Hint != "" {
		return e.Hint
	}
	var exit *vmm.ExitError
	if errors.As(e.Err, &exit) {
		return exit.Reason()
	}
	line, _, _ := strings.Cut(e.Err.Error(), "\n")
	return line
}

// Summary is what the client is told: the operation, the sandbox, the step
// and the cause's first useful line.
func (e *OpError) Summary() string {
	return fmt.Sprintf("%s sandbox %s: %s: %s", e.Op, e.ID, e.Step, truncate(e.Cause(), maxCause))
}

// maxCause bounds the cause a client is told; the log keeps all of it.
const maxCause = 500

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// opError wraps err, when there is one, as a failure of op on sandbox id
// in step.
func opError(op, id, step string, kind, err error) error {
	if err == nil {
		return nil
	}
	return &OpError{Op: op, ID: id, Step: step, Kind: kind, Err: err}
}

// bootError is a guest whose agent never answered. Its console's last line
// is the useful one: a kernel panic, or the last thing a stuck boot did.
func bootError(op, id, dir string, err error) error {
	console := vmm.ConsoleLog(dir)
	e := &OpError{Op: op, ID: id, Step: "wait for the guest's agent (console log " + console + ")", Kind: ErrBoot, Err: err}
	if line := vmm.LastLine(console); line != "" {
		e.Hint = fmt.Sprintf("%v; the guest console's last line: %s", err, line)
	}
	return e
}
