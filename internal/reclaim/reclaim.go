// Package reclaim removes, at daemon start, what a previous daemon left
// behind with no owner: VMM and helper processes, guest memory files,
// network slots, disk devices and sandbox directories that no surviving
// sandbox accounts for. It runs after the sandbox manager has re-adopted what
// it still owns, as one list of named steps in a fixed order: each kind of
// resource is reclaimed before the kinds it sits on (a process holds its
// memory file, TAP and disk; a device sits over a file in a sandbox
// directory). The packages that own a resource implement its step; this
// package only orders them, and reclaims sandbox directories itself.
package reclaim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Keep is what survived and must not be reclaimed.
type Keep struct {
	// Dir is the daemon's sandboxes directory: every VMM it starts runs for
	// a directory <Dir>/<sandbox id>.
	Dir string
	// Sandboxes are the ids of every sandbox the store still has, whatever
	// its state: their directories, disks and devices stay.
	Sandboxes map[string]bool
	// PIDs are the VMM (and helper) processes of re-adopted sandboxes.
	PIDs map[int]bool
	// Slots are the network slot indexes re-adopted sandboxes hold.
	Slots map[int]bool
	// Running are the ids of the re-adopted sandboxes, whose runtime
	// resources (their cgroups) stay; every other sandbox's go.
	Running map[string]bool
}

// Result is what one step found and removed.
type Result struct {
	Found, Removed int
}

// Reclaimer removes the orphans of one kind of resource. Implementations
// find their objects by the names and identities ember gives them (never by
// a substring of a path), remove only what keep does not account for, and
// keep going past failures, returning them joined.
type Reclaimer interface {
	Reclaim(ctx context.Context, keep Keep) (Result, error)
}

// Func adapts a function to a Reclaimer.
type Func func(ctx context.Context, keep Keep) (Result, error)

// Reclaim calls f.
func (f Func) Reclaim(ctx context.Context, keep Keep) (Result, error) { return f(ctx, keep) }

// Plan names the reclaimer of each kind of resource; nil skips a kind (a
// VMM without helper processes, a disk backend without devices).
type Plan struct {
	// Processes: VMM and helper processes (page servers) of sandboxes
	// that are gone. First: they hold everything below.
	Processes Reclaimer
	// Cgroups: the groups of sandboxes that do not run; empty once the
	// processes above are gone.
	Cgroups Reclaimer
	// Memory: guest RAM files of machines that are gone.
	Memory Reclaimer
	// Slots: network namespaces, links, rules and addresses.
	Slots Reclaimer
	// Devices: disk devices (device-mapper targets, loop devices) over
	// files in sandbox directories.
	Devices Reclaimer
	// Dirs: sandbox directories. Last: the devices above sit on them.
	Dirs Reclaimer
}

// Step is one named reclaimer in the plan's order.
type Step struct {
	Name string
	Reclaimer
}

// Steps returns the plan's reclaimers in the order they run.
func (p Plan) Steps() []Step {
	all := []Step{
		{"processes", p.Processes},
		{"cgroups", p.Cgroups},
		{"memory", p.Memory},
		{"slots", p.Slots},
		{"devices", p.Devices},
		{"dirs", p.Dirs},
	}
	out := all[:0]
	for _, s := range all {
		if s.Reclaimer != nil {
			out = append(out, s)
		}
	}
	return out
}

// Summary is what a run found and removed, by step.
type Summary struct {
	Steps   []Step
	Results []Result
	Errs    []error
}

// String is the summary's one log line: "processes 1/1, memory 0/0, ...".
func (s Summary) String() string {
	parts := make([]string, len(s.Steps))
	for i, st := range s.Steps {
		parts[i] = fmt.Sprintf("%s %d/%d", st.Name, s.Results[i].Removed, s.Results[i].Found)
		if s.Errs[i] != nil {
			parts[i] += " (failed)"
		}
	}
	return strings.Join(parts, ", ")
}

// Run runs every step of the plan in order, even past a failing one (each
// step's objects are found by name, so a failure above leaves nothing below
// looking orphaned that is not), and logs one summary line. The error joins
// the steps' failures.
func Run(ctx context.Context, plan Plan, keep Keep, log *slog.Logger) (Summary, error) {
	begin := time.Now()
	s := Summary{Steps: plan.Steps()}
	for _, st := range s.Steps {
		res, err := st.Reclaim(ctx, keep)
		if err != nil {
			err = fmt.Errorf("reclaim %s: %w", st.Name, err)
		}
		s.Results, s.Errs = append(s.Results, res), append(s.Errs, err)
	}
	err := errors.Join(s.Errs...)
	attrs := []any{"removed/found", s.String(), "duration_ms", time.Since(begin).Milliseconds()}
	if err != nil {
		log.Error("reclaimed orphans", append(attrs, "err", err)...)
	} else {
		log.Info("reclaimed orphans", attrs...)
	}
	return s, err
}

// Dirs reclaims sandbox directories: every entry of keep.Dir whose name is
// not a kept sandbox's id.
var Dirs Reclaimer = Func(reclaimDirs)

func reclaimDirs(_ context.Context, keep Keep) (Result, error) {
	var res Result
	entries, err := os.ReadDir(keep.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	} else if err != nil {
		return res, fmt.Errorf("read %s: %w", keep.Dir, err)
	}
	var errs []error
	for _, e := range entries {
		if keep.Sandboxes[e.Name()] {
			continue
		}
		res.Found++
		p := filepath.Join(keep.Dir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			continue
		}
		res.Removed++
	}
	return res, errors.Join(errs...)
}
