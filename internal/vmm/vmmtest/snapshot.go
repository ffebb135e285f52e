//go:build linux

package vmmtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
)

// counterInit is the guest's first process in the snapshot cases: it starts
// a counter that prints a numbered tick with the guest's wall clock and,
// once sysfs is up, eth0's MAC address on the console and appends the
// number to a file on the root disk (synced), then hands over to the
// template's init. A restored guest must go on counting from where it was.
const counterInit = `#!/bin/sh
(
	n=0
	while :; do
		n=$((n+1))
		echo "vmmtest-tick $n $(date +%s) $(cat /sys/class/net/eth0/address 2>/dev/null)" >/dev/console
		echo $n >>/vmmtest-ticks
		sync
		sleep 0.2
	done
) </dev/null >/dev/null 2>&1 &
exec /sbin/init
`

// Paths inside the guest's root filesystem.
const (
	counterInitPath = "/vmmtest-init"
	counterFilePath = "/vmmtest-ticks"
)

// tickLine matches one complete counter line on the console.
var tickLine = regexp.MustCompile(`^vmmtest-tick (\d+) (\d+) ?(\S*)$`)

// Tick is one line of the guest counter CounterSpec starts.
type Tick struct {
	// N counts from 1.
	N int
	// Clock is the guest's wall clock, Unix seconds.
	Clock int64
	// MAC is the guest's eth0 address; empty without a network device or
	// before sysfs is mounted.
	MAC string
}

// ticks parses the complete counter lines of a console log. A last line
// without its newline is still being written by the guest and is left for
// the next read (it once cut a MAC address in half).
func ticks(b []byte) []Tick {
	var out []Tick
	b = b[:bytes.LastIndexByte(b, '\n')+1]
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		m := tickLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		c, _ := strconv.ParseInt(m[2], 10, 64)
		out = append(out, Tick{n, c, m[3]})
	}
	return out
}

// CounterSpec returns a spec for guest in a fresh directory, on a private
// copy of the root filesystem, whose guest runs a counter on the console
// (see WaitTick) and on disk.
func CounterSpec(t testing.TB, guest testutil.GuestImage) vmm.Spec {
	t.Helper()
	testutil.RequireTool(t, "debugfs")
	spec := newSpec(t, guest)
	script := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(script, []byte(counterInit), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.Run(t.Context(), "debugfs", "-w", "-R", "write "+script+" "+strings.TrimPrefix(counterInitPath, "/"), spec.RootDisk); err != nil {
		t.Fatal(err)
	}
	spec.BootArgs = "init=" + counterInitPath
	return spec
}

// copyDisk returns spec moved to a fresh directory with a private copy of
// its disk as the disk is now.
func copyDisk(t testing.TB, spec vmm.Spec) vmm.Spec {
	t.Helper()
	dir := t.TempDir()
	disk, err := rootfscopy.New(slog.New(slog.DiscardHandler)).Prepare(t.Context(), "vmmtest", dir, spec.RootDisk, 0)
	if err != nil {
		t.Fatal(err)
	}
	spec.Dir, spec.RootDisk, spec.DiskFormat = dir, disk.Path, disk.Format
	spec.ID = "vmmtest-" + filepath.Base(filepath.Dir(dir))
	return spec
}

// stopAtEnd registers a Stop of m at the end of the test.
func stopAtEnd(t testing.TB, m vmm.Machine) {
	t.Cleanup(func() {
		if err := m.Stop(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// WaitTick waits until the machine's console shows a counter tick numbered
// at least n and returns the complete ticks on it.
func WaitTick(t testing.TB, m vmm.Machine, spec vmm.Spec, n int) []Tick {
	t.Helper()
	b := waitConsole(t, m, spec, fmt.Sprintf("tick %d", n), func(b []byte) bool {
		ts := ticks(b)
		return len(ts) > 0 && ts[len(ts)-1].N >= n
	})
	return ticks(b)
}

// expectDiskCount checks that the counter file on a stopped machine's disk
// runs from 1 without a gap to past tick n.
func expectDiskCount(t testing.TB, disk string, n int) {
	t.Helper()
	onDisk := diskTicks(t, disk)
	if len(onDisk) == 0 || onDisk[len(onDisk)-1] <= n {
		t.Errorf("counter file ends at %v, want past tick %d", onDisk[max(0, len(onDisk)-3):], n)
	}
	for i, got := range onDisk {
		if got != i+1 {
			t.Fatalf("counter file line %d holds %d: %v", i+1, got, onDisk)
		}
	}
}

// diskTicks reads the counter file from a stopped machine's ext4 disk.
func diskTicks(t testing.TB, disk string) []int {
	t.Helper()
	out, err := runner.Run(t.Context(), "debugfs", "-R", "cat "+counterFilePath, disk)
	if err != nil {
		t.Fatal(err)
	}
	var ns []int
	for _, f := range strings.Fields(string(out)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("counter file on %s holds %q: %q", disk, f, out)
		}
		ns = append(ns, n)
	}
	return ns
}

// startCounter boots a guest running counterInit and waits for its third
// tick. It skips when the driver cannot snapshot and restore; the machine
// is stopped when the test ends.
func startCounter(t testing.TB, d vmm.Driver, guest testutil.GuestImage) (vmm.Machine, vmm.Spec, vmm.Snapshotter, vmm.Restorer) {
	t.Helper()
	r, ok := d.(vmm.Restorer)
	if !ok {
		t.Skipf("%s does not implement vmm.Restorer", d.Name())
	}
	spec := CounterSpec(t, guest)
	m, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, m)
	s, ok := m.(vmm.Snapshotter)
	if !ok {
		t.Skipf("%s machines do not implement vmm.Snapshotter", d.Name())
	}
	WaitTick(t, m, spec, 3)
	return m, spec, s, r
}

// runRestore checks snapshot and restore: a guest process keeps counting
// across a pause, save, stop and restore on the same disk, and two restores
// of one snapshot onto two copies of the disk both run on from it.
func runRestore(t *testing.T, d vmm.Driver, guest testutil.GuestImage) {
	ctx := t.Context()
	m, spec, snap, restorer := startCounter(t, d, guest)

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	saved := lastTick(t, spec)
	dir := t.TempDir()
	begin := time.Now()
	if err := snap.Snapshot(ctx, dir, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %s; guest at tick %d", time.Since(begin), saved.N)
	expectState(t, m, vmm.StatePaused)
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	expectGone(t, m, spec)
	// Copies of the disk as it was at the snapshot, for the forks.
	forks := []vmm.Spec{copyDisk(t, spec), copyDisk(t, spec)}
	// Keep the guest asleep for about 5 s, to see what its clock does.
	time.Sleep(time.Until(pausedAt.Add(5 * time.Second)))

	begin = time.Now()
	r, err := restorer.Restore(ctx, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, r)
	t.Logf("restore: %s", time.Since(begin))
	expectState(t, r, vmm.StateRunning)
	asleep := time.Since(pausedAt)
	ts := WaitTick(t, r, spec, saved.N+4)
	expectContinues(t, ts, saved)
	t.Logf("guest clock: %d at the save, %d at the first tick after %s asleep",
		saved.Clock, ts[0].Clock, asleep.Round(time.Millisecond))

	// A restored machine saves and restores again (pause and resume, twice),
	// here into another directory on the same disk.
	if err := r.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	saved2 := lastTick(t, spec)
	dir2 := t.TempDir()
	if err := r.(vmm.Snapshotter).Snapshot(ctx, dir2, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	expectGone(t, r, spec)
	again := spec
	again.Dir = t.TempDir()
	r, err = restorer.Restore(ctx, again, dir2)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, r)
	expectContinues(t, WaitTick(t, r, again, saved2.N+3), saved2)
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	expectGone(t, r, again)
	// Memory and disk were saved consistent with each other, twice.
	expectDiskCount(t, spec.RootDisk, saved2.N)

	t.Run("Fork", func(t *testing.T) {
		var ms []vmm.Machine
		for _, fs := range forks {
			f, err := restorer.Restore(t.Context(), fs, dir)
			if err != nil {
				t.Fatal(err)
			}
			stopAtEnd(t, f)
			ms = append(ms, f)
		}
		for i, f := range ms {
			expectContinues(t, WaitTick(t, f, forks[i], saved.N+4), saved)
		}
	})

	t.Run("Refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			dir  string
			edit func(s *vmm.Spec)
		}{
			{"not a snapshot", t.TempDir(), nil},
			{"other memory size", dir, func(s *vmm.Spec) { s.MemoryMiB *= 2 }},
			{"other vcpu count", dir, func(s *vmm.Spec) { s.VCPUs++ }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s := copyDisk(t, spec)
				if tc.edit != nil {
					tc.edit(&s)
				}
				r, err := restorer.Restore(t.Context(), s, tc.dir)
				expectFailed(t, "restore", r, err, s.Dir)
			})
		}
	})
}

// runSnapshotFailure checks that a save that fails leaves the machine
// paused and able to run on.
func runSnapshotFailure(t *testing.T, d vmm.Driver, guest testutil.GuestImage) {
	ctx := t.Context()
	m, spec, snap, _ := startCounter(t, d, guest)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	saved := lastTick(t, spec)
	err := snap.Snapshot(ctx, filepath.Join(t.TempDir(), "missing"), vmm.SnapshotOptions{})
	if err == nil {
		t.Fatal("snapshot into a missing directory succeeded")
	}
	t.Logf("snapshot: %v", err)
	expectState(t, m, vmm.StatePaused)
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	WaitTick(t, m, spec, saved.N+2)
}

// expectContinues checks that the ticks a restored guest printed continue
// the count from the snapshot's last tick. The first line after the
// restore may be the unfinished line of the tick the save caught.
func expectContinues(t testing.TB, ts []Tick, saved Tick) {
	t.Helper()
	if first := ts[0].N; first != saved.N+1 && first != saved.N+2 {
		t.Errorf("restored guest counts from %d, the snapshot's last tick was %d", first, saved.N)
	}
	for i := 1; i < len(ts); i++ {
		if ts[i].N != ts[i-1].N+1 {
			t.Errorf("restored guest skipped from tick %d to %d", ts[i-1].N, ts[i].N)
		}
	}
}

// runSnapshotTimes snapshots a running guest three times (pause, save,
// resume: a snapshot of a running sandbox) and restores the last snapshot
// three times, and logs the medians.
func runSnapshotTimes(t *testing.T, d vmm.Driver, guest testutil.GuestImage) {
	ctx := t.Context()
	m, spec, snap, restorer := startCounter(t, d, guest)
	at := WaitTick(t, m, spec, 3)
	var saves, restores, firstTicks []time.Duration
	var dir string
	var saved vmm.Spec
	for i := range 3 {
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		dir = t.TempDir()
		begin := time.Now()
		if err := snap.Snapshot(ctx, dir, vmm.SnapshotOptions{}); err != nil {
			t.Fatal(err)
		}
		saves = append(saves, time.Since(begin))
		if i == 2 {
			saved = copyDisk(t, spec)
		}
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, vmm.StateRunning)
		at = WaitTick(t, m, spec, at[len(at)-1].N+2)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// The guest wrote its disk on after each save: a saved machine's disk
	// works when it resumes.
	expectDiskCount(t, spec.RootDisk, at[len(at)-1].N-3)
	for range 3 {
		spec := copyDisk(t, saved)
		begin := time.Now()
		r, err := restorer.Restore(ctx, spec, dir)
		if err != nil {
			t.Fatal(err)
		}
		restores = append(restores, time.Since(begin))
		WaitTick(t, r, spec, 0)
		firstTicks = append(firstTicks, time.Since(begin))
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%s, %d MiB guest: snapshot median %s of %v; restore to running median %s of %v; to the first console line %s of %v; state size %s",
		d.Name(), spec.MemoryMiB, median(saves), saves, median(restores), restores, median(firstTicks), firstTicks, dirSize(t, dir))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// dirSize describes the apparent and allocated size of a snapshot directory.
func dirSize(t testing.TB, dir string) string {
	t.Helper()
	var apparent, allocated int64
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		apparent += info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			allocated += st.Blocks * 512
		}
	}
	return fmt.Sprintf("%.1f MiB (%.1f MiB allocated)", float64(apparent)/(1<<20), float64(allocated)/(1<<20))
}

// lastTick returns the last complete tick on the console.
func lastTick(t testing.TB, spec vmm.Spec) Tick {
	t.Helper()
	b, err := os.ReadFile(vmm.ConsoleLog(spec.Dir))
	if err != nil {
		t.Fatal(err)
	}
	ts := ticks(b)
	if len(ts) == 0 {
		t.Fatalf("no tick on the console:\n%s", tail(b))
	}
	return ts[len(ts)-1]
}
