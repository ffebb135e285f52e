//go:build linux

// Package vmmtest is the conformance suite every vmm.Driver passes. It boots
// the default template's guest (testutil.Guest) without a network, on a
// private sparse copy of the root filesystem, and checks what the sandbox
// manager relies on: the guest reaches init, pause and resume take effect,
// stop ends the process and is idempotent, a machine can be re-adopted by
// pid, a failed start leaves nothing running, and, for drivers that
// implement vmm.Snapshotter and vmm.Restorer, a restored guest carries on
// where it was saved.
package vmmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
)

// Marker is the line the default template's init writes to the serial
// console once the guest is up.
const Marker = "ember-guest: ready"

// bootTimeout bounds the wait for Marker; software emulation on a busy
// host is slow.
const bootTimeout = 90 * time.Second

// New is how the suite gets the driver under test.
type New func(t testing.TB) vmm.Driver

// Run runs the conformance suite against the driver newDriver returns.
func Run(t *testing.T, newDriver New) {
	guest := testutil.Guest(t)

	t.Run("Lifecycle", func(t *testing.T) {
		d := newDriver(t)
		m, spec, took := boot(t, d, guest)
		t.Logf("%s: start to %q in %s", d.Name(), Marker, took)
		ctx := t.Context()
		expectState(t, m, vmm.StateRunning)

		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, vmm.StatePaused)
		before := consoleSize(t, spec)
		time.Sleep(300 * time.Millisecond)
		if after := consoleSize(t, spec); after != before {
			t.Errorf("console grew from %d to %d bytes while paused", before, after)
		}
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
		// Mounting the root filesystem read-write bumps its mount count:
		// the guest's writes are on the disk after the stop.
		if before, after := ext4MountCount(t, guest.Rootfs), ext4MountCount(t, spec.RootDisk); after <= before {
			t.Errorf("root disk mount count %d after boot, base has %d: guest writes lost", after, before)
		}
		if err := m.Pause(ctx); err == nil {
			t.Error("pause of a stopped machine succeeded")
		}
	})

	t.Run("Attach", func(t *testing.T) {
		d := newDriver(t)
		m, spec, _ := boot(t, d, guest)
		ctx := t.Context()
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
		if err := again.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, again, vmm.StateRunning)
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
			{"kernel is not a kernel", func(s *vmm.Spec) {
				s.Kernel = filepath.Join(s.Dir, "junk")
				if err := os.WriteFile(s.Kernel, []byte("not a kernel\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				spec := newSpec(t, guest)
				tc.edit(&spec)
				m, err := d.Start(t.Context(), spec)
				expectFailed(t, "start", m, err, spec)
			})
		}
	})

	RunSnapshot(t, newDriver)

	t.Run("BootTime", func(t *testing.T) {
		if testing.Short() {
			t.Skip("five boots; not in -short")
		}
		d := newDriver(t)
		var times []time.Duration
		for range 5 {
			m, _, took := boot(t, d, guest)
			times = append(times, took)
			if err := m.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(times)
		t.Logf("%s: start to %q: median %s of %v", d.Name(), Marker, times[len(times)/2], times)
	})
}

// newSpec returns a spec for guest in a fresh directory, with a private
// copy of the root filesystem.
func newSpec(t testing.TB, guest testutil.GuestImage) vmm.Spec {
	t.Helper()
	return copyDisk(t, vmm.Spec{Kernel: guest.Kernel, RootDisk: guest.Rootfs, VCPUs: 1, MemoryMiB: 256})
}

// boot starts a machine and waits for the guest's Marker. The machine is
// stopped when the test ends.
func boot(t testing.TB, d vmm.Driver, guest testutil.GuestImage) (vmm.Machine, vmm.Spec, time.Duration) {
	t.Helper()
	spec := newSpec(t, guest)
	begin := time.Now()
	m, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, m)
	waitConsole(t, m, spec, fmt.Sprintf("%q", Marker), func(b []byte) bool { return bytes.Contains(b, []byte(Marker)) })
	return m, spec, time.Since(begin)
}

// waitConsole waits until ok accepts the machine's console log and returns
// the log; what names what it waits for.
func waitConsole(t testing.TB, m vmm.Machine, spec vmm.Spec, what string, ok func([]byte) bool) []byte {
	t.Helper()
	deadline := time.After(bootTimeout)
	for {
		b, _ := os.ReadFile(vmm.ConsoleLog(spec.Dir))
		if ok(b) {
			return b
		}
		select {
		case <-m.Done():
			t.Fatalf("vmm exited before %s; console:\n%s", what, tail(b))
		case <-deadline:
			t.Fatalf("no %s after %s; console:\n%s", what, bootTimeout, tail(b))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func tail(b []byte) string {
	const max = 4096
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func consoleSize(t testing.TB, spec vmm.Spec) int64 {
	t.Helper()
	st, err := os.Stat(vmm.ConsoleLog(spec.Dir))
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// ext4MountCount reads s_mnt_count from the ext4 superblock of a raw
// image; it skips the test for an image that is not ext4.
func ext4MountCount(t testing.TB, path string) uint16 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xef53 {
		t.Skipf("%s is not ext4: cannot see the guest's writes", path)
	}
	return binary.LittleEndian.Uint16(sb[0x34:])
}

// expectState checks the machine's run state where the driver reports one.
func expectState(t testing.TB, m vmm.Machine, want vmm.State) {
	t.Helper()
	s, ok := m.(vmm.Stater)
	if !ok {
		return
	}
	got, err := s.State(t.Context())
	if err != nil {
		t.Fatalf("state: %v", err)
	}
	if got != want {
		t.Fatalf("state %q, want %q", got, want)
	}
}

func waitDone(t testing.TB, m vmm.Machine) {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed 10s after the process was stopped")
	}
}

// expectFailed checks that a start or restore failed and left nothing
// running for spec.
func expectFailed(t testing.TB, op string, m vmm.Machine, err error, spec vmm.Spec) {
	t.Helper()
	if err == nil {
		m.Stop(context.Background())
		t.Fatalf("%s succeeded", op)
	}
	t.Logf("%s: %v", op, err)
	if pids := ProcessesNaming(t, spec.Dir); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}

// expectGone checks that the machine's process has exited and been reaped
// and that nothing else runs for its directory.
func expectGone(t testing.TB, m vmm.Machine, spec vmm.Spec) {
	t.Helper()
	waitDone(t, m)
	// Done may close just before the reaper's wait returns.
	deadline := time.Now().Add(2 * time.Second)
	for unix.Kill(m.PID(), 0) == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := unix.Kill(m.PID(), 0); err == nil {
		t.Errorf("pid %d still exists after Done", m.PID())
	}
	if pids := ProcessesNaming(t, spec.Dir); len(pids) > 0 {
		t.Errorf("processes still running for %s: %v", spec.Dir, pids)
	}
}

// ProcessesNaming lists the processes, other than the test's own, whose
// command line mentions s (a machine's directory, say): what a leak check
// looks for.
func ProcessesNaming(t testing.TB, s string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}
