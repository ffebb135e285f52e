//go:build linux

package qemu

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"plain", "/var/lib/ember/snap/vmstate"},
		{"spaces", "/tmp/a dir/vmstate"},
		{"quotes", `/tmp/it's "here"/vmstate`},
		{"shell syntax", "/tmp/$(touch x);`y` > z/*"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command("/bin/sh", "-c", "printf %s "+shellQuote(tc.in)).Output()
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tc.in {
				t.Errorf("sh read %q, want %q", out, tc.in)
			}
		})
	}
}

// writeManifest puts a manifest for a machine d would start from spec into
// a fresh snapshot directory, with an empty state file.
func writeManifest(t *testing.T, d *Driver, spec vmm.Spec) string {
	t.Helper()
	dir := t.TempDir()
	b, err := json.Marshal(d.manifestFor(spec, "7.2.0"))
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
