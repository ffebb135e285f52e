//go:build linux

// Package vmmtest is the conformance suite every vmm.Driver passes, run
// through its one entry point, Run. Where the driver boots a guest here,
// the suite boots the default template's guest (testutil.Guest) without a
// network, on a private sparse copy of the root filesystem, and checks what
// the sandbox manager relies on: the guest reaches init, pause and resume
// take effect, stop ends the process and is idempotent, a machine can be
// re-adopted by pid, a failed start leaves nothing running, the disk
// formats the driver states are the ones it starts, and, for drivers that
// implement vmm.Snapshotter and vmm.Restorer, a restored guest carries on
// where it was saved. Where it cannot (Firecracker without KVM, run
// against a fake VMM), the contract cases run on stand-in specs: the same
// cases less what only a guest shows.
package vmmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/rootfs/qcow2"
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

// NewSpec returns a spec in a fresh directory whose kernel and disk the
// driver under test accepts without booting a guest (stand-ins for a
// driver run against a fake VMM).
type NewSpec func(t testing.TB) vmm.Spec

// Suite is a driver under test and what it can do on this host.
type Suite struct {
	// New makes the driver under test; every case makes its own.
	New New
	// Boot says whether the driver boots the default template's guest
	// (testutil.Guest) here. When it does, every case runs on that
	// guest. When it does not (a driver run against a fake VMM), the
	// contract cases run on NewSpec's specs and the boot and snapshot
	// cases skip.
	Boot bool
	// NewSpec makes the contract cases' specs when Boot is false.
	NewSpec NewSpec
}

// Run runs the conformance suite against s. The contract cases always
// run: Lifecycle (start, pause, resume, stop), Attach, StartFailure and
// DiskFormats. Where the driver boots a guest they also check what only a
// guest shows (it reached init, it stood still while paused, its writes
// are on its disk), and the boot and snapshot cases run too: Restore,
// SnapshotFailure and SnapshotTimes (which skip unless the driver
// implements vmm.Restorer and its machines vmm.Snapshotter), and BootTime.
func Run(t *testing.T, s Suite) {
	r := suite{Suite: s}
	if s.Boot {
		r.guest = testutil.Guest(t)
	} else if s.NewSpec == nil {
		t.Fatal("vmmtest: a suite that boots no guest needs NewSpec")
	}
	t.Run("Lifecycle", r.lifecycle)
	t.Run("Attach", r.attach)
	t.Run("StartFailure", r.startFailure)
	t.Run("DiskFormats", r.diskFormats)
	t.Run("Restore", func(t *testing.T) {
		r.needBoot(t)
		runRestore(t, r.New(t), r.guest)
	})
	t.Run("SnapshotFailure", func(t *testing.T) {
		r.needBoot(t)
		runSnapshotFailure(t, r.New(t), r.guest)
	})
	t.Run("SnapshotTimes", func(t *testing.T) {
		r.needBoot(t)
		if testing.Short() {
			t.Skip("three saves and restores; not in -short")
		}
		runSnapshotTimes(t, r.New(t), r.guest)
	})
	t.Run("BootTime", func(t *testing.T) {
		r.needBoot(t)
		if testing.Short() {
			t.Skip("five boots; not in -short")
		}
		d := r.New(t)
		var times []time.Duration
		for range 5 {
			m, _, took := r.start(t, d)
			times = append(times, took)
			if err := m.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(times)
		t.Logf("%s: start to %q: median %s of %v", d.Name(), Marker, times[len(times)/2], times)
	})
}

// suite runs the cases of one Suite.
type suite struct {
	Suite
	// guest is the image the suite boots, when it boots one.
	guest testutil.GuestImage
}

// needBoot skips a case that needs a booted guest when the suite has none.
func (r suite) needBoot(t *testing.T) {
	t.Helper()
	if !r.Boot {
		t.Skip("the driver boots no guest here (Suite.Boot is false): contract cases only")
	}
}

// spec returns a spec in a fresh directory: the guest's, on a private copy
// of its disk, when the suite boots; NewSpec's otherwise.
func (r suite) spec(t testing.TB) vmm.Spec {
	t.Helper()
	if r.Boot {
		return newSpec(t, r.guest)
	}
	return r.NewSpec(t)
}

// start starts a machine on a fresh spec; see startSpec.
func (r suite) start(t testing.TB, d vmm.Driver) (vmm.Machine, vmm.Spec, time.Duration) {
	t.Helper()
	return r.startSpec(t, d, r.spec(t))
}

// startSpec starts a machine for spec and, when the suite boots, waits for
// the guest's Marker; it returns how long that took. The machine is
// stopped when the test ends.
func (r suite) startSpec(t testing.TB, d vmm.Driver, spec vmm.Spec) (vmm.Machine, vmm.Spec, time.Duration) {
	t.Helper()
	begin := time.Now()
	m, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, m)
	if r.Boot {
		waitConsole(t, m, spec, fmt.Sprintf("%q", Marker), func(b []byte) bool { return bytes.Contains(b, []byte(Marker)) })
	}
	return m, spec, time.Since(begin)
}

// lifecycle checks start, pause, resume and stop, and that a stop is
// idempotent and final; with a guest, that the guest came up, stood still
// while paused and wrote its disk.
func (r suite) lifecycle(t *testing.T) {
	d := r.New(t)
	m, spec, took := r.start(t, d)
	if r.Boot {
		t.Logf("%s: start to %q in %s", d.Name(), Marker, took)
	}
	ctx := t.Context()
	expectState(t, m, vmm.StateRunning)

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, vmm.StatePaused)
	if r.Boot {
		before := consoleSize(t, spec)
		time.Sleep(300 * time.Millisecond)
		if after := consoleSize(t, spec); after != before {
			t.Errorf("console grew from %d to %d bytes while paused", before, after)
		}
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
	if r.Boot {
		// Mounting the root filesystem read-write bumps its mount count:
		// the guest's writes are on the disk after the stop.
		if before, after := ext4MountCount(t, r.guest.Rootfs), ext4MountCount(t, spec.RootDisk); after <= before {
			t.Errorf("root disk mount count %d after boot, base has %d: guest writes lost", after, before)
		}
	}
	if err := m.Pause(ctx); err == nil {
		t.Error("pause of a stopped machine succeeded")
	}
}

// attach checks that a second handle, such as a restarted daemon gets by
// pid, controls the machine, and that nothing but the machine's VMM is
// adopted.
func (r suite) attach(t *testing.T) {
	d := r.New(t)
	m, spec, _ := r.start(t, d)
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
}

// startFailure checks that a start that fails leaves nothing running.
func (r suite) startFailure(t *testing.T) {
	d := r.New(t)
	for _, tc := range []struct {
		name string
		edit func(s *vmm.Spec)
	}{
		{"missing kernel", func(s *vmm.Spec) { s.Kernel = filepath.Join(s.Dir, "no-vmlinux") }},
		{"missing disk", func(s *vmm.Spec) { s.RootDisk = filepath.Join(s.Dir, "no-disk") }},
		{"no directory", func(s *vmm.Spec) { s.Dir = "" }},
		{"kernel is not a kernel", func(s *vmm.Spec) {
			s.Kernel = filepath.Join(s.Dir, "junk")
			if err := os.WriteFile(s.Kernel, []byte("not a kernel\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := r.spec(t)
			dir := spec.Dir
			tc.edit(&spec)
			m, err := d.Start(t.Context(), spec)
			expectFailed(t, "start", m, err, dir)
		})
	}
}

// diskFormats checks that the driver starts a machine on every disk
// format it states (vmm.DiskFormats; raw, which every driver opens and the
// other cases run on, where it states none) and refuses the others.
func (r suite) diskFormats(t *testing.T) {
	d := r.New(t)
	stated := []string{"raw"}
	if df, ok := d.(vmm.DiskFormats); ok {
		stated = df.DiskFormats()
	}
	if !slices.Contains(stated, "raw") {
		t.Errorf("%s states disk formats %q, without raw", d.Name(), stated)
	}
	for _, format := range []string{"qcow2", "vmdk"} {
		t.Run(format, func(t *testing.T) {
			spec := r.spec(t)
			if !slices.Contains(stated, format) {
				dir := spec.Dir
				spec.DiskFormat = format
				m, err := d.Start(t.Context(), spec)
				expectFailed(t, "start on a disk format the driver does not state", m, err, dir)
				return
			}
			if format != "qcow2" {
				t.Skipf("%s states %s disks, which the suite cannot make", d.Name(), format)
			}
			// A qcow2 overlay over the spec's raw disk.
			disk, err := qcow2.New(slog.New(slog.DiscardHandler)).Prepare(t.Context(), spec.ID, t.TempDir(), spec.RootDisk, 0)
			if err != nil {
				t.Fatal(err)
			}
			spec.RootDisk, spec.DiskFormat = disk.Path, disk.Format
			m, spec, _ := r.startSpec(t, d, spec)
			expectState(t, m, vmm.StateRunning)
			if err := m.Stop(t.Context()); err != nil {
				t.Fatal(err)
			}
			expectGone(t, m, spec)
		})
	}
}

// newSpec returns a spec for guest in a fresh directory, with a private
// copy of the root filesystem.
func newSpec(t testing.TB, guest testutil.GuestImage) vmm.Spec {
	t.Helper()
	return copyDisk(t, vmm.Spec{Kernel: guest.Kernel, RootDisk: guest.Rootfs, VCPUs: 1, MemoryMiB: 256})
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
// running for the machine directory dir.
func expectFailed(t testing.TB, op string, m vmm.Machine, err error, dir string) {
	t.Helper()
	if err == nil {
		m.Stop(context.Background())
		t.Fatalf("%s succeeded", op)
	}
	t.Logf("%s: %v", op, err)
	if pids := ProcessesNaming(t, dir); len(pids) > 0 {
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
