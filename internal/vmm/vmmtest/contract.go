//go:build linux

package vmmtest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/emberhq/ember/internal/vmm"
)

// NewSpec returns a spec in a fresh directory whose kernel and disk the
// driver under test accepts without booting a guest (stand-ins for a
// driver run against a fake VMM).
type NewSpec func(t testing.TB) vmm.Spec

// RunContract runs the contract-level cases of the suite: what the sandbox
// manager relies on that does not need a guest to boot. Drivers that
// cannot boot a real guest here (Firecracker without KVM, run against a
// fake VMM) pass these; Run covers the rest where a guest boots.
func RunContract(t *testing.T, newDriver New, newSpec NewSpec) {
	t.Run("Lifecycle", func(t *testing.T) {
		d := newDriver(t)
		ctx := t.Context()
		spec := newSpec(t)
		m, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Stop(ctx) })
		expectState(t, m, vmm.StateRunning)
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, vmm.StatePaused)
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, vmm.StateRunning)
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		expectGone(t, m, spec)
		if err := m.Stop(ctx); err != nil {
			t.Errorf("second stop: %v", err)
		}
		if err := m.Pause(ctx); err == nil {
			t.Error("pause of a stopped machine succeeded")
		}
	})

	t.Run("Attach", func(t *testing.T) {
		d := newDriver(t)
		ctx := t.Context()
		spec := newSpec(t)
		m, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Stop(ctx) })
		if _, err := d.Attach(ctx, spec, os.Getpid()); !errors.Is(err, vmm.ErrNotRunning) {
			t.Errorf("attach to a process that is not the vmm: %v, want ErrNotRunning", err)
		}
		again, err := d.Attach(ctx, spec, m.PID())
		if err != nil {
			t.Fatal(err)
		}
		if again.PID() != m.PID() {
			t.Errorf("attached pid %d, want %d", again.PID(), m.PID())
		}
		if err := again.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, vmm.StatePaused)
		if err := again.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		waitDone(t, again)
		expectGone(t, m, spec)
		if err := m.Stop(ctx); err != nil {
			t.Errorf("stop through the first handle after the process is gone: %v", err)
		}
		if _, err := d.Attach(ctx, spec, m.PID()); !errors.Is(err, vmm.ErrNotRunning) {
			t.Errorf("attach to an exited vmm: %v, want ErrNotRunning", err)
		}
	})

	t.Run("StartFailure", func(t *testing.T) {
		d := newDriver(t)
		for _, tc := range []struct {
			name string
			edit func(s *vmm.Spec)
		}{
			{"missing kernel", func(s *vmm.Spec) { s.Kernel = filepath.Join(s.Dir, "no-vmlinux") }},
			{"missing disk", func(s *vmm.Spec) { s.RootDisk = filepath.Join(s.Dir, "no-disk") }},
			{"no directory", func(s *vmm.Spec) { s.Dir = "" }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				spec := newSpec(t)
				dir := spec.Dir
				tc.edit(&spec)
				m, err := d.Start(t.Context(), spec)
				if err == nil {
					m.Stop(t.Context())
					t.Fatal("start succeeded")
				}
				t.Logf("start: %v", err)
				if pids := ProcessesNaming(t, dir); len(pids) > 0 {
					t.Errorf("processes left running: %v", pids)
				}
			})
		}
	})
}
