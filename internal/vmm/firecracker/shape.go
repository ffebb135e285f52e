//go:build linux

package firecracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/vmm"
)

// ErrSnapshotMismatch is returned by Restore for a spec whose vCPU count or
// memory size differs from the snapshot's: Firecracker would load the
// snapshot's own and say nothing.
var ErrSnapshotMismatch = errors.New("snapshot does not match the machine")

// shapeFile, in a snapshot directory, records the shape of the machine
// the snapshot was taken of.
const shapeFile = "machine.json"

// shape is what of a machine a snapshot fixes.
type shape struct {
	VCPUs     int `json:"vcpus"`
	MemoryMiB int `json:"memory_mib"`
}

// Defaults for a spec that leaves sizes at zero.
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 256
)

// shapeOf is the shape Firecracker gives spec's machine.
func shapeOf(spec vmm.Spec) shape {
	s := shape{VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB}
	if s.VCPUs <= 0 {
		s.VCPUs = defaultVCPUs
	}
	if s.MemoryMiB <= 0 {
		s.MemoryMiB = defaultMemoryMiB
	}
	return s
}

// writeShape records spec's shape in the snapshot directory dir.
func writeShape(dir string, spec vmm.Spec) error {
	b, err := json.Marshal(shapeOf(spec))
	if err != nil {
		return fmt.Errorf("encode machine shape: %w", err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, shapeFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write machine shape: %w", err)
	}
	return nil
}

// checkShape refuses a restore of spec from the snapshot in dir when their
// shapes differ. A snapshot without a record (written before there was
// one) is taken as it is.
func checkShape(dir string, spec vmm.Spec) error {
	b, err := os.ReadFile(filepath.Join(dir, shapeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read machine shape: %w", err)
	}
	var saved shape
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("parse machine shape %s: %w", filepath.Join(dir, shapeFile), err)
	}
	if want := shapeOf(spec); want != saved {
		return fmt.Errorf("%d vcpus and %d MiB, snapshot has %d and %d MiB: %w",
			want.VCPUs, want.MemoryMiB, saved.VCPUs, saved.MemoryMiB, ErrSnapshotMismatch)
	}
	return nil
}
