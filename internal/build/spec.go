// Package build turns a template definition (a base image and a list of
// steps: RUN, COPY, ENV, WORKDIR, USER, a start and a ready command) into a
// published template. RUN steps run in a real sandbox booted from the image
// so far; every step's result is cached by a key chained from its parent's,
// so a rebuild reuses each unchanged prefix. A Dockerfile is one way to write
// a definition (ParseDockerfile); E2B's template SDK is another, and both
// come down to a Spec.
package build

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is what a step does.
type Kind string

// The kinds of step a Spec holds.
const (
	// Run runs a shell command in the build sandbox as the step's user.
	Run Kind = "run"
	// Copy copies files from the build context into the image.
	Copy Kind = "copy"
	// Env sets environment variables for later steps and the template.
	Env Kind = "env"
	// Workdir sets (and creates) the working directory of later steps and
	// of the start command.
	Workdir Kind = "workdir"
	// User sets the user later steps and the start command run as.
	User Kind = "user"
	// Start names the process a sandbox of the template starts with.
	Start Kind = "start"
	// Ready names the command whose success says the start command's
	// process is ready (polled until it exits 0).
	Ready Kind = "ready"
)

// BaseKind is where a build's first image comes from.
type BaseKind string

// Where a base can come from.
const (
	// BaseImage is an OCI image: a reference pulled from a registry, or a
	// path on the daemon's host (an OCI layout directory, an OCI or
	// docker-archive tarball).
	BaseImage BaseKind = "image"
	// BaseDebian is ember's built-in Debian bookworm, made with mmdebstrap
	// from the host's Debian mirror.
	BaseDebian BaseKind = "debian"
	// BaseTemplate is an existing ember template.
	BaseTemplate BaseKind = "template"
)

// Base is the image a build starts from.
type Base struct {
	Kind BaseKind
	// Ref is the image reference or path, or the template's name (empty
	// for BaseDebian).
	Ref string
	// Line is the Dockerfile line of the FROM, 0 when there is none.
	Line int
}

// String is the base as a user wrote it.
func (b Base) String() string {
	if b.Kind == BaseDebian && b.Ref == "" {
		return DebianRef
	}
	return b.Ref
}

// Step is one instruction of a build.
type Step struct {
	Kind Kind
	// Command is the shell command of a Run, Start or Ready step.
	Command string
	// Env holds an Env step's variables, in order.
	Env []KeyValue
	// Path is a Workdir step's directory, a User step's user, a Copy
	// step's destination.
	Path string
	// Sources are a Copy step's paths, relative to the context.
	Sources []string
	// Chown is a Copy step's owner ("user", "user:group", "1000:1000");
	// empty is root.
	Chown string
	// Mode, when set, is the permission bits a Copy step gives every
	// file and directory it copies (--chmod).
	Mode uint32
	// User, when set, is who a Run step runs as, for that step alone
	// (E2B's runCmd(cmd, {user})); empty is USER's user.
	User string
	// Force runs the step, and so every step after it, even when the
	// cache holds its result (E2B's skipCache and per-step force).
	Force bool
	// Line is where the step came from in a Dockerfile (0: elsewhere),
	// and Text how it was written there, for messages and progress.
	Line int
	Text string
}

// KeyValue is one environment variable.
type KeyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// String is how the step shows in progress and errors: its Dockerfile text
// when it has one.
func (s Step) String() string {
	if s.Text != "" {
		return s.Text
	}
	switch s.Kind {
	case Run, Start, Ready:
		return strings.ToUpper(string(s.Kind)) + " " + s.Command
	case Copy:
		return "COPY " + strings.Join(append(append([]string{}, s.Sources...), s.Path), " ")
	case Env:
		parts := make([]string, len(s.Env))
		for i, kv := range s.Env {
			parts[i] = kv.Key + "=" + kv.Value
		}
		return "ENV " + strings.Join(parts, " ")
	}
	return strings.ToUpper(string(s.Kind)) + " " + s.Path
}

// Spec is a whole template definition.
type Spec struct {
	// Name is the template to publish.
	Name string
	Base Base
	// Steps run in order.
	Steps []Step
	// Warnings are what the definition held that a build ignores
	// (EXPOSE, VOLUME, …), each naming its line.
	Warnings []string
}

// Sentinels for what a caller (internal/api) branches on. A *InputError
// wraps one of them with the line or the reference at fault.
var (
	// ErrDockerfile: the Dockerfile does not parse, or uses something a
	// build cannot do (several stages, COPY --from, a heredoc).
	ErrDockerfile = errors.New("invalid dockerfile")
	// ErrUnknownInstruction: a Dockerfile instruction nobody knows.
	ErrUnknownInstruction = errors.New("unknown instruction")
	// ErrCopySource: a COPY source is not in the build context.
	ErrCopySource = errors.New("copy source not found")
	// ErrRegistry: the registry holding the base image cannot be reached,
	// or has no such image.
	ErrRegistry = errors.New("registry unreachable")
	// ErrPlatform: the base image is for another architecture than the
	// guests' (linux/amd64).
	ErrPlatform = errors.New("image for another platform")
	// ErrInvalidImage: the base is not a valid image (not an OCI layout or
	// archive, a broken layer, a bad reference).
	ErrInvalidImage = errors.New("invalid base image")
	// ErrBaseTemplate: FROM names a template that does not exist.
	ErrBaseTemplate = errors.New("base template not found")
	// ErrInvalidSpec: a build request that is malformed (a bad name, no
	// steps where some are needed, a bad user or path).
	ErrInvalidSpec = errors.New("invalid build")
	// ErrStepFailed: a step ran and failed (a *StepError says which).
	ErrStepFailed = errors.New("build step failed")
	// ErrBusy: a build of the same template is running.
	ErrBusy = errors.New("template build in progress")
)

// InputError is bad input to a build: the kind (one of the sentinels
// above), the Dockerfile line or the reference at fault, and what is wrong.
type InputError struct {
	Kind error
	// Line is the Dockerfile line (0: none); Ref the image, path or
	// template named.
	Line   int
	Ref    string
	Reason string
}

func (e *InputError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Ref != "" {
		fmt.Fprintf(&b, "%s: ", e.Ref)
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Unwrap makes errors.Is find the kind.
func (e *InputError) Unwrap() error { return e.Kind }

func inputError(kind error, line int, ref, format string, args ...any) error {
	return &InputError{Kind: kind, Line: line, Ref: ref, Reason: fmt.Sprintf(format, args...)}
}

// StepError is a step that ran and failed: which (1-based, of how many),
// how it ended and the last lines it printed.
type StepError struct {
	Step, Total int
	Text        string
	Line        int
	// ExitCode is the command's exit code (-1: it did not exit: killed,
	// timed out, or the step failed before running).
	ExitCode int
	// Output is the step's last lines of output.
	Output []string
	Err    error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("step %d/%d (%s)", e.Step, e.Total, e.Text)
	if e.Line > 0 {
		msg += fmt.Sprintf(" at line %d", e.Line)
	}
	if e.ExitCode >= 0 {
		msg += fmt.Sprintf(": exit code %d", e.ExitCode)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns ErrStepFailed and the cause.
func (e *StepError) Unwrap() []error { return []error{ErrStepFailed, e.Err} }
