package sandbox

import (
	"errors"
	"fmt"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/store"
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
