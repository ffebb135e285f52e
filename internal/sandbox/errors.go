package sandbox

import (
	"errors"
	"fmt"
)

// Sentinels callers branch on; internal/api maps each to a status and a code.
var (
	// ErrNotFound: no sandbox with that id.
	ErrNotFound = errors.New("sandbox not found")
	// ErrTemplateNotFound: no template with that name.
	ErrTemplateNotFound = errors.New("template not found")
	// ErrInvalid: a request field is malformed or out of range (see InvalidError).
	ErrInvalid = errors.New("invalid argument")
	// ErrConflict: the sandbox is not in a state that allows the operation.
	ErrConflict = errors.New("conflict")
	// ErrExecTimeout: a command outlived its timeout and was killed.
	ErrExecTimeout = errors.New("command timed out")
	// ErrClosed: the manager is shutting down.
	ErrClosed = errors.New("manager closed")
	// ErrNotPaused: resume of a sandbox that is not paused.
	ErrNotPaused = errors.New("sandbox not paused")
	// ErrUnsupported: the VMM driver cannot snapshot or restore machines.
	ErrUnsupported = errors.New("not supported by this vmm driver")
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
