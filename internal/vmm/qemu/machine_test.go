//go:build linux

package qemu

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// fakeDriver returns a driver whose "QEMU" is this test binary in the given
// fake mode, and a spec with real files for it.
func fakeDriver(t *testing.T, mode string) (*Driver, vmm.Spec) {
	t.Helper()
	t.Setenv(fakeQEMUEnv, mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Binary: exe, Accel: AccelTCG}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := vmm.Spec{ID: "fake", Dir: dir, Kernel: filepath.Join(dir, "vmlinux"), RootDisk: filepath.Join(dir, "disk")}
	for _, p := range []string{spec.Kernel, spec.RootDisk} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d, spec
}

// alive reports whether pid exists (a reaped child does not).
func alive(pid int) bool { return unix.Kill(pid, 0) == nil }

func startFakeMachine(t *testing.T, mode string) (*Driver, vmm.Spec, *Machine) {
	t.Helper()
	d, spec := fakeDriver(t, mode)
	vm, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	m := vm.(*Machine)
	t.Cleanup(func() { unix.Kill(m.PID(), unix.SIGKILL) })
	return d, spec, m
}

func TestStopEscalation(t *testing.T) {
	const wait = 200 * time.Millisecond
	for _, tc := range []struct {
		mode    string
		minTime time.Duration // escalation steps waited through
	}{
		{fakeObedient, 0},
		{fakeIgnQuit, wait},
		{fakeStubborn, 2 * wait},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			_, spec, m := startFakeMachine(t, tc.mode)
			m.quitWait, m.termWait = wait, wait
			begin := time.Now()
			if err := m.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
			took := time.Since(begin)
			if took < tc.minTime || took > tc.minTime+wait+time.Second {
				t.Errorf("stop took %s, want about %s", took, tc.minTime)
			}
			select {
			case <-m.Done():
			default:
				t.Fatal("Done not closed after Stop")
			}
			if alive(m.PID()) {
				t.Errorf("pid %d still exists", m.PID())
			}
			if err := m.Stop(t.Context()); err != nil {
				t.Errorf("second stop: %v", err)
			}
			if _, err := os.Stat(qmpPath(spec.Dir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("qmp socket left behind: %v", err)
			}
			if err := m.Pause(t.Context()); !errors.Is(err, vmm.ErrNotRunning) {
				t.Errorf("pause after stop: %v, want ErrNotRunning", err)
			}
		})
	}
}

func TestFakeLifecycle(t *testing.T) {
	d, spec, m := startFakeMachine(t, fakeObedient)
	ctx := t.Context()
	for _, step := range []struct {
		do   func() error
		want vmm.State
	}{
		{func() error { return nil }, vmm.StateRunning},
		{func() error { return m.Pause(ctx) }, vmm.StatePaused},
		{func() error { return m.Resume(ctx) }, vmm.StateRunning},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		if st, err := m.State(ctx); err != nil || st != step.want {
			t.Fatalf("state %q, %v; want %q", st, err, step.want)
		}
	}

	// A second handle, as a restarted daemon gets, controls the same process.
	vm2, err := d.Attach(ctx, spec, m.PID())
	if err != nil {
		t.Fatal(err)
	}
	if err := vm2.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(ctx); st != vmm.StatePaused {
		t.Errorf("state seen through the first handle: %q", st)
	}
	if err := vm2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, done := range []<-chan struct{}{vm2.Done(), m.Done()} {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed")
		}
	}
	if _, err := d.Attach(ctx, spec, m.PID()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("attach to exited pid: %v, want ErrNotRunning", err)
	}
}

func TestStartRefusesBusyDir(t *testing.T) {
	d, spec, m := startFakeMachine(t, fakeObedient)
	// The fake writes no pid file; QEMU does.
	if err := os.WriteFile(pidPath(spec.Dir), []byte(strconv.Itoa(m.PID())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if vm, err := d.Start(t.Context(), spec); err == nil {
		vm.Stop(t.Context())
		t.Fatal("second start in the same directory succeeded")
	}
	if st, err := m.State(t.Context()); err != nil || st != vmm.StateRunning {
		t.Errorf("first machine after the refused start: %q, %v", st, err)
	}
}

func TestAttachRejects(t *testing.T) {
	d, spec, m := startFakeMachine(t, fakeObedient)
	other := spec
	other.Dir = t.TempDir()
	for _, tc := range []struct {
		name string
		spec vmm.Spec
		pid  int
	}{
		{"not a qemu", spec, os.Getpid()},
		{"another machine's qemu", other, m.PID()},
		{"no such pid", spec, 1 << 30},
		{"zero pid", spec, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := d.Attach(t.Context(), tc.spec, tc.pid); !errors.Is(err, vmm.ErrNotRunning) {
				t.Errorf("got %v, want ErrNotRunning", err)
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string
		spec    func(s *vmm.Spec)
		wantErr string
		// reason is QEMU's own error line, for a QEMU that exited.
		reason string
	}{
		{"qemu exits", fakeFailStart, nil, "could not load kernel", "qemu-system-x86_64: fake: could not load kernel"},
		{"missing kernel", fakeObedient, func(s *vmm.Spec) { s.Kernel += ".missing" }, "kernel", ""},
		{"missing disk", fakeObedient, func(s *vmm.Spec) { s.RootDisk += ".missing" }, "root disk", ""},
		{"bad format", fakeObedient, func(s *vmm.Spec) { s.DiskFormat = "vmdk" }, "vmdk", ""},
		{"socket path too long", fakeObedient, func(s *vmm.Spec) { s.Dir += "/" + strings.Repeat("x", 110) }, "unix socket", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, spec := fakeDriver(t, tc.mode)
			if tc.spec != nil {
				tc.spec(&spec)
			}
			vm, err := d.Start(t.Context(), spec)
			if err == nil {
				vm.Stop(t.Context())
				t.Fatal("start succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
			var exit *vmm.ExitError
			if tc.reason != "" && (!errors.As(err, &exit) || exit.Reason() != tc.reason) {
				t.Errorf("error %q: want a vmm.ExitError with QEMU's line %q", err, tc.reason)
			}
			if pids := vmmtest.ProcessesNaming(t, spec.Dir); len(pids) > 0 {
				t.Errorf("processes left running: %v", pids)
			}
		})
	}
}

// TestAttachUnresponsive: a QEMU that is there but no longer answers QMP is
// not taken for gone: it may still hold the disk and the TAP.
func TestAttachUnresponsive(t *testing.T) {
	d, spec, m := startFakeMachine(t, fakeHangs)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err := d.Attach(ctx, spec, m.PID())
	if !errors.Is(err, vmm.ErrUnresponsive) || errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("attach to a hung qemu: %v, want ErrUnresponsive", err)
	}
	if !alive(m.PID()) {
		t.Fatal("attach killed the hung qemu")
	}
}

// TestAttachLegacyQEMU: a QEMU an ember before QMP sockets were handed
// over started (its socket named by path on its command line) is
// re-adopted by an upgraded daemon, and stopped by it.
func TestAttachLegacyQEMU(t *testing.T) {
	d, spec := fakeDriver(t, fakeObedient)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-name", "x", "-chardev", legacyIdentity(spec).Value, "-mon", "chardev=qmp,mode=control")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() { unix.Kill(-cmd.Process.Pid, unix.SIGKILL) })
	waitQMP(t, qmpPath(spec.Dir))
	m, err := d.Attach(t.Context(), spec, cmd.Process.Pid)
	if err != nil {
		t.Fatalf("attach a legacy qemu: %v", err)
	}
	if st, err := m.(vmm.Stater).State(t.Context()); err != nil || st != vmm.StateRunning {
		t.Fatalf("state %s %v", st, err)
	}
	if err := m.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !m.(*Machine).proc.Wait(5 * time.Second) {
		t.Fatal("legacy qemu runs on after stop")
	}
}
