// Package cleanup keeps the releases of what a sandbox holds, so each
// resource is released in exactly one place: the acquire registers its
// release right after it succeeds, and whoever ends the resource (a failed
// create, a pause, a failure, a destroy) runs the registered releases
// instead of writing them again. gVisor's pkg/cleanup is the model; a Stack
// adds scopes, because a sandbox ends in steps: a pause gives up what the
// running machine holds and keeps the rest.
package cleanup

import (
	"context"
	"fmt"
)

// Scope says which step of a sandbox's end releases an entry. Each step
// releases its own scope and every scope below it.
type Scope int

const (
	// Runtime is what a running machine holds: its VMM process, its
	// network slot's devices, its disk's attachment, its agent. Pause
	// releases these.
	Runtime Scope = iota
	// Storage is what a sandbox keeps while paused: its disk, its
	// directory, an address held for it. A sandbox that fails gives these
	// up too, and keeps only its anchor.
	Storage
	// Anchor is the sandbox's record and registration: created first and
	// released last, by destroy only, so a crash anywhere leaves something
	// start-up recovery finds.
	Anchor
)

func (s Scope) String() string {
	switch s {
	case Runtime:
		return "runtime"
	case Storage:
		return "storage"
	case Anchor:
		return "anchor"
	}
	return fmt.Sprintf("scope(%d)", int(s))
}

// Stack is a list of releases, run newest first. The zero value is empty
// and ready. A Stack is not safe for concurrent use: its owner's lock
// guards it.
type Stack struct {
	entries []entry
}

type entry struct {
	scope   Scope
	name    string
	release func(context.Context) error
}

// Push registers the release of something just acquired.
func (s *Stack) Push(scope Scope, name string, release func(context.Context) error) {
	s.entries = append(s.entries, entry{scope: scope, name: name, release: release})
}

// Release runs, newest first, every entry whose scope is at most through,
// each at most once: an entry whose release succeeds is dropped. The first
// failure stops the run and is returned; that entry and every older one stay
// registered for a later Release to retry, because what is older may sit
// under it (a disk the VMM still holds open, a directory a device lives
// in). Entries of higher scopes are left alone. Releases run under a
// context that is never cancelled: cancellation stops acquiring, never
// releasing.
func (s *Stack) Release(ctx context.Context, through Scope) error {
	ctx = context.WithoutCancel(ctx)
	for i := len(s.entries) - 1; i >= 0; i-- {
		e := s.entries[i]
		if e.scope > through {
			continue
		}
		if err := e.release(ctx); err != nil {
			return fmt.Errorf("release %s: %w", e.name, err)
		}
		s.entries = append(s.entries[:i], s.entries[i+1:]...)
	}
	return nil
}

// Names lists the registered entries of one scope, oldest first.
func (s *Stack) Names(scope Scope) []string {
	var out []string
	for _, e := range s.entries {
		if e.scope == scope {
			out = append(out, e.name)
		}
	}
	return out
}

// Len is the number of registered entries.
func (s *Stack) Len() int { return len(s.entries) }
