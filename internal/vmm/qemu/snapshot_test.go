//go:build linux

package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// writeManifest puts a manifest for a machine d would start from spec into
// a fresh snapshot directory, with an empty state file.
func writeManifest(t *testing.T, d *Driver, spec vmm.Spec) string {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(d.manifestFor(spec, "7.2.0", AccelTCG))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{manifestFile: b, vmstateFile: nil} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestRestoreRefusesMismatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(s *vmm.Spec)
		wantErr string
	}{
		{"vcpus", func(s *vmm.Spec) { s.VCPUs = 2 }, "vcpus 2, snapshot has 1"},
		{"memory", func(s *vmm.Spec) { s.MemoryMiB = 512 }, "memory_mib 512, snapshot has 256"},
		{"disk format", func(s *vmm.Spec) { s.DiskFormat = "qcow2" }, "disk format qcow2, snapshot has raw"},
		{"network device", func(s *vmm.Spec) { s.TAP = "tap0" }, "network device true, snapshot has false"},
		{"kernel", func(s *vmm.Spec) { s.Kernel += ".other" }, "kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, spec := fakeDriver(t, fakeObedient)
			dir := writeManifest(t, d, spec)
			tc.edit(&spec)
			if tc.name == "kernel" {
				if err := os.WriteFile(spec.Kernel, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			vm, err := d.Restore(t.Context(), spec, dir)
			if err == nil {
				vm.Stop(t.Context())
				t.Fatal("restore succeeded")
			}
			if !errors.Is(err, ErrSnapshotMismatch) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q: want ErrSnapshotMismatch mentioning %q", err, tc.wantErr)
			}
			if pids := vmmtest.ProcessesNaming(t, spec.Dir); len(pids) > 0 {
				t.Errorf("processes left running: %v", pids)
			}
		})
	}
}

func TestRestoreBadSnapshotDir(t *testing.T) {
	d, spec := fakeDriver(t, fakeObedient)
	for _, tc := range []struct {
		name string
		dir  func() string
	}{
		{"empty", func() string { return t.TempDir() }},
		{"no state", func() string {
			dir := writeManifest(t, d, spec)
			os.Remove(filepath.Join(dir, vmstateFile))
			return dir
		}},
		{"garbled manifest", func() string {
			dir := writeManifest(t, d, spec)
			os.WriteFile(filepath.Join(dir, manifestFile), []byte("{"), 0o644)
			return dir
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := d.Restore(t.Context(), spec, tc.dir())
			if err == nil {
				vm.Stop(t.Context())
				t.Fatal("restore succeeded")
			}
			t.Log(err)
			if pids := vmmtest.ProcessesNaming(t, spec.Dir); len(pids) > 0 {
				t.Errorf("processes left running: %v", pids)
			}
		})
	}
}

func TestSnapshotRefusesRunning(t *testing.T) {
	_, _, m := startFakeMachine(t, fakeObedient)
	err := m.Snapshot(t.Context(), t.TempDir(), vmm.SnapshotOptions{})
	if err == nil || !strings.Contains(err.Error(), "not paused") {
		t.Errorf("snapshot of a running machine: %v, want a refusal", err)
	}
}

// startCounterGuest boots vmmtest's counter guest under real QEMU; it is
// stopped when the test ends.
func startCounterGuest(t *testing.T) (*Driver, vmm.Spec, *Machine) {
	t.Helper()
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	d, err := New(Config{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	spec := vmmtest.CounterSpec(t, guest)
	vm, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop(context.Background()) })
	return d, spec, vm.(*Machine)
}

// TestSnapshotStreamFails makes QEMU's writes of the stream fail (a full
// disk) and checks that the error carries QEMU's words, nothing of the
// save is left and the machine still runs on.
func TestSnapshotStreamFails(t *testing.T) {
	_, spec, m := startCounterGuest(t)
	ctx := t.Context()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	orig := createState
	t.Cleanup(func() { createState = orig })
	createState = func(string) (*os.File, error) { return os.OpenFile("/dev/full", os.O_WRONLY, 0) }
	err := m.Snapshot(ctx, dir, vmm.SnapshotOptions{})
	if err == nil || !strings.Contains(err.Error(), "migration failed") || !strings.Contains(err.Error(), "No space left on device") {
		t.Fatalf("snapshot: %v, want QEMU's migration failure and its reason", err)
	}
	t.Log(err)
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		t.Errorf("failed snapshot left %v", ents)
	}
	if st, err := m.State(ctx); err != nil || st != vmm.StatePaused {
		t.Fatalf("state after a failed snapshot: %q, %v", st, err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	vmmtest.WaitTick(t, m, spec, 2)
}

// TestRestoreBadState restores from snapshots whose QEMU build or stream
// is wrong: each fails with a clear error and leaves nothing running.
func TestRestoreBadState(t *testing.T) {
	d, spec, m := startCounterGuest(t)
	m.mu.Lock()
	version, err := m.qemuVersionLocked(t.Context())
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, version string
		state         []byte
		wantErr       string
		mismatch      bool
	}{
		{"other qemu build", "6.2.0 (elsewhere)", nil, "snapshot written by 6.2.0", true},
		{"truncated stream", version, []byte("QEVM\x00\x00\x00\x03"), "load snapshot: qemu exited", false},
		{"not a stream", version, []byte("not a migration stream\n"), "Not a migration stream", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			man := d.manifestFor(spec, tc.version, m.accel)
			b, _ := json.Marshal(man)
			for name, data := range map[string][]byte{manifestFile: b, vmstateFile: tc.state, memoryFile: nil} {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Truncate(filepath.Join(dir, memoryFile), int64(man.MemoryMiB)<<20); err != nil {
				t.Fatal(err)
			}
			s := spec
			s.Dir = t.TempDir()
			r, err := d.Restore(t.Context(), s, dir)
			if err == nil {
				r.Stop(context.Background())
				t.Fatal("restore succeeded")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.wantErr) || errors.Is(err, ErrSnapshotMismatch) != tc.mismatch {
				t.Errorf("error %q: want %q, ErrSnapshotMismatch %v", err, tc.wantErr, tc.mismatch)
			}
			if pids := vmmtest.ProcessesNaming(t, s.Dir); len(pids) > 0 {
				t.Errorf("processes left running: %v", pids)
			}
			if _, err := os.Stat(d.memPath(s)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("guest memory file left behind: %v", err)
			}
		})
	}
}
