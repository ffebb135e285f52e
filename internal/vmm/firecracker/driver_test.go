//go:build linux

package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// requireSpec returns the validator for Firecracker's swagger document.
func requireSpec(t testing.TB) *validator {
	t.Helper()
	p := specPath()
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("EMBER_REQUIRE_ALL") == "1" {
			t.Fatalf("firecracker api spec: %v (set %s)", err, specEnv)
		}
		t.Skipf("firecracker api spec: %v (set %s)", err, specEnv)
	}
	v, err := loadValidator(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// fakeDriver returns a driver whose "firecracker" is this test binary
// serving the fake API, and the journal file its processes append to.
func fakeDriver(t *testing.T, cfg Config) (*Driver, string) {
	t.Helper()
	requireSpec(t)
	journal := filepath.Join(t.TempDir(), "journal")
	t.Setenv(fakeEnv, "1")
	t.Setenv(journalEnv, journal)
	t.Setenv(specEnv, specPath())
	cfg.Binary = os.Args[0]
	cfg.StopWait = time.Second
	d, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return d, journal
}

// testSpec returns a spec with a stand-in kernel (an ELF header) and disk.
func testSpec(t testing.TB, tap string) vmm.Spec {
	t.Helper()
	dir, err := os.MkdirTemp("", "fc-") // short: the api socket path is bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kernel, disk := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(kernel, append([]byte("\x7fELF"), make([]byte, 60)...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 1<<20); err != nil {
		t.Fatal(err)
	}
	return vmm.Spec{
		ID: "fc-" + filepath.Base(dir), Dir: dir, Kernel: kernel, RootDisk: disk, DiskFormat: "raw",
		Netns: "", TAP: tap, MAC: "02:fc:00:00:00:01", BootArgs: "ip=10.11.0.2::10.11.0.1:255.255.255.252::eth0:off",
		VCPUs: 2, MemoryMiB: 256,
	}
}

func readJournal(t testing.TB, path string) []entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var es []entry
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	return es
}

// checkJournal validates every request the driver sent against the spec
// (again, in this process), checks none was refused, and returns the
// requests as "METHOD path" in order.
func checkJournal(t testing.TB, v *validator, es []entry) []string {
	t.Helper()
	var calls []string
	for _, e := range es {
		var body []byte
		if len(e.Body) > 0 {
			body = e.Body
		}
		if _, err := v.check(e.Method, e.Path, body); err != nil {
			t.Errorf("driver sent a request the spec rejects: %v", err)
		}
		if e.Status/100 != 2 {
			t.Errorf("%s %s %s: refused with %d: %s", e.Method, e.Path, e.Body, e.Status, e.Fault)
		}
		calls = append(calls, e.Method+" "+e.Path)
	}
	return calls
}

func expectState(t testing.TB, m vmm.Machine, want vmm.State) {
	t.Helper()
	got, err := m.(vmm.Stater).State(t.Context())
	if err != nil {
		t.Fatal(err)
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
		t.Fatal("process still running after stop")
	}
}

// TestLifecycle runs boot, pause, snapshot, stop, restore, resume against
// the fake and checks every request against the spec and the order.
func TestLifecycle(t *testing.T) {
	v := requireSpec(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		diff bool
		want []string // boot requests in order
		snap string   // snapshot_type sent
	}{
		{
			name: "plain", want: []string{"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source",
				"PUT /drives/rootfs", "PUT /network-interfaces/eth0", "PUT /entropy", "PUT /actions"},
			snap: "Full",
		},
		{
			name: "balloon, vsock, dirty pages", cfg: Config{BalloonMiB: 64, VsockCID: 3, TrackDirtyPages: true}, diff: true,
			want: []string{"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source",
				"PUT /drives/rootfs", "PUT /network-interfaces/eth0", "PUT /entropy", "PUT /balloon", "PUT /vsock", "PUT /actions"},
			snap: "Diff",
		},
		{
			name: "diff asked without dirty tracking", diff: true, want: []string{"PUT /logger", "PUT /metrics", "PUT /machine-config",
				"PUT /boot-source", "PUT /drives/rootfs", "PUT /network-interfaces/eth0", "PUT /entropy", "PUT /actions"},
			snap: "Full",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, journal := fakeDriver(t, tc.cfg)
			ctx := t.Context()
			spec := testSpec(t, "ember-tap-1")
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
			snap := t.TempDir()
			if err := m.(vmm.Snapshotter).Snapshot(ctx, snap, vmm.SnapshotOptions{Diff: tc.diff}); err != nil {
				t.Fatal(err)
			}
			if err := m.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			waitDone(t, m)
			if err := m.Stop(ctx); err != nil {
				t.Errorf("second stop: %v", err)
			}
			if err := m.Pause(ctx); !errors.Is(err, vmm.ErrNotRunning) {
				t.Errorf("pause after stop: %v, want ErrNotRunning", err)
			}

			calls := checkJournal(t, v, readJournal(t, journal))
			// GET / (readiness polls, state) is left out of the order; a
			// paused machine is killed without ctrl-alt-del.
			boot := slices.DeleteFunc(calls, func(c string) bool { return c == "GET /" })
			wantAll := append(slices.Clone(tc.want), "PATCH /vm", "PUT /snapshot/create")
			if !slices.Equal(boot, wantAll) {
				t.Errorf("requests:\n %v\nwant\n %v", boot, wantAll)
			}
			for _, e := range readJournal(t, journal) {
				if e.Path == "/snapshot/create" && !strings.Contains(string(e.Body), `"snapshot_type":"`+tc.snap+`"`) {
					t.Errorf("snapshot request %s, want type %s", e.Body, tc.snap)
				}
				if e.Path == "/boot-source" && !strings.Contains(string(e.Body), BaseBootArgs+" "+spec.BootArgs) {
					t.Errorf("boot source %s lacks the boot arguments", e.Body)
				}
			}

			// Restore in a fresh process onto another TAP.
			os.Remove(journal)
			spec2 := testSpec(t, "ember-tap-2")
			r, err := d.Restore(ctx, spec2, snap)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { r.Stop(ctx) })
			expectState(t, r, vmm.StateRunning)
			if err := r.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.Resume(ctx); err != nil {
				t.Fatal(err)
			}
			expectState(t, r, vmm.StateRunning)
			if err := r.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			waitDone(t, r)
			es := readJournal(t, journal)
			calls = slices.DeleteFunc(checkJournal(t, v, es), func(c string) bool { return c == "GET /" })
			want := []string{"PUT /logger", "PUT /metrics", "PUT /snapshot/load", "PATCH /vm", "PATCH /vm", "PATCH /vm", "PUT /actions"}
			if !slices.Equal(calls, want) {
				t.Errorf("restore requests:\n %v\nwant\n %v", calls, want)
			}
			for _, e := range es {
				if e.Path != "/snapshot/load" {
					continue
				}
				// The restored machine runs on its own disk, not the one
				// the snapshot was taken with (a fork must never write
				// to its source's disk).
				if own, _ := filepath.EvalSymlinks(spec2.RootDisk); e.Drive != own {
					t.Errorf("restored root drive is %q, want the new machine's own disk %q", e.Drive, own)
				}
				var load snapshotLoad
				json.Unmarshal(e.Body, &load)
				if load.MemBackend == nil || load.MemBackend.BackendType != "Uffd" {
					t.Errorf("snapshot load %s: want a Uffd memory backend", e.Body)
				}
				if (tc.cfg.VsockCID >= 3) != (load.VsockOverride != nil) {
					t.Errorf("snapshot load %s: vsock override iff the machine has vsock", e.Body)
				}
				if len(load.NetworkOverrides) != 1 || load.NetworkOverrides[0].HostDevName != "ember-tap-2" {
					t.Errorf("snapshot load %s: want the new TAP as a network override", e.Body)
				}
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	d, _ := fakeDriver(t, Config{})
	for _, tc := range []struct {
		name string
		edit func(s *vmm.Spec)
		is   error
		api  bool // refused by firecracker rather than by the driver
	}{
		{"missing kernel", func(s *vmm.Spec) { s.Kernel = filepath.Join(s.Dir, "no-vmlinux") }, os.ErrNotExist, false},
		{"missing disk", func(s *vmm.Spec) { s.RootDisk = filepath.Join(s.Dir, "no-disk") }, os.ErrNotExist, false},
		{"qcow2 disk", func(s *vmm.Spec) { s.DiskFormat = "qcow2" }, ErrDiskFormat, false},
		{"odd vcpus", func(s *vmm.Spec) { s.VCPUs = 3 }, nil, false},
		{"kernel is not a kernel", func(s *vmm.Spec) { os.WriteFile(s.Kernel, []byte("not a kernel\n"), 0o644) }, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := testSpec(t, "")
			tc.edit(&spec)
			m, err := d.Start(t.Context(), spec)
			if err == nil {
				m.Stop(t.Context())
				t.Fatal("start succeeded")
			}
			t.Logf("start: %v", err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want %v", err, tc.is)
			}
			if tc.api {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Status != 400 || ae.Fault == "" {
					t.Errorf("error %v, want firecracker's 400 with its fault message", err)
				}
			}
			if pids := vmmtest.ProcessesNaming(t, spec.Dir); len(pids) > 0 {
				t.Errorf("processes left running: %v", pids)
			}
		})
	}
}

func TestRestoreMissingSnapshot(t *testing.T) {
	d, _ := fakeDriver(t, Config{})
	spec := testSpec(t, "")
	if m, err := d.Restore(t.Context(), spec, t.TempDir()); err == nil {
		m.Stop(t.Context())
		t.Fatal("restore from an empty directory succeeded")
	}
	if pids := vmmtest.ProcessesNaming(t, spec.Dir); len(pids) > 0 {
		t.Errorf("processes left running: %v", pids)
	}
}

func TestAvailable(t *testing.T) {
	ok, reason := Available(Config{Binary: "/nonexistent/firecracker"})
	if ok {
		t.Fatal("available without a binary")
	}
	if reason == "" {
		t.Error("no reason given")
	}
	t.Log(reason)
}

// TestJailer runs boot, snapshot, stop and restore through a fake jailer
// that chroots into the jail and drops to an unprivileged user before it
// serves the API, as the real jailer does before it execs Firecracker.
func TestJailer(t *testing.T) {
	testutil.RequireRoot(t)
	requireSpec(t)
	t.Setenv(fakeEnv, "jailer")
	t.Setenv(specEnv, specPath())
	base, err := os.MkdirTemp("", "fc-jails-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	const nobody = 65534
	d, err := New(Config{
		Binary: os.Args[0], StopWait: time.Second,
		Jailer: &JailerConfig{Binary: os.Args[0], ChrootBase: base, UID: nobody, GID: nobody, CPUMax: "100000 100000", MemoryMax: "536870912"},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	spec := testSpec(t, "ember-tap-1")
	jailDir := filepath.Join(base, filepath.Base(os.Args[0]), jailID(spec))
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(ctx) })
	for _, name := range []string{"vmlinux", rootDriveName, apiSocketName} {
		if _, err := os.Stat(filepath.Join(jailDir, "root", name)); err != nil {
			t.Errorf("jail lacks %s: %v", name, err)
		}
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := t.TempDir()
	if err := m.(vmm.Snapshotter).Snapshot(ctx, snap, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stateFile, memoryFile} {
		if _, err := os.Stat(filepath.Join(snap, name)); err != nil {
			t.Errorf("snapshot lacks %s: %v", name, err)
		}
	}
	again, err := d.Attach(ctx, spec, m.PID())
	if err != nil {
		t.Fatal(err)
	}
	expectState(t, again, vmm.StatePaused)
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitDone(t, m)
	if _, err := os.Stat(jailDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left after stop: %v", err)
	}
	if _, err := os.Stat(spec.RootDisk); err != nil {
		t.Errorf("root disk gone with the jail: %v", err)
	}

	r, err := d.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop(ctx) })
	expectState(t, r, vmm.StateRunning)
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitDone(t, r)
	if _, err := os.Stat(jailDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail left after stop of the restored machine: %v", err)
	}
}

func TestJailerCommand(t *testing.T) {
	d := &Driver{binary: "/usr/bin/firecracker", jailer: "/usr/bin/jailer", cfg: Config{Jailer: &JailerConfig{
		ChrootBase: "/srv/jail", UID: 123, GID: 456, CPUMax: "50000 100000", MemoryMax: "1073741824",
	}}}
	spec := vmm.Spec{ID: "sb_1/x", Dir: "/run/ember/sb", Netns: "/run/netns/ember-ns-3"}
	cmd := d.command(spec, d.existingJail(spec))
	want := "/usr/bin/jailer --id sb-1-x --exec-file /usr/bin/firecracker --uid 123 --gid 456 --chroot-base-dir /srv/jail " +
		"--cgroup-version 2 --netns /run/netns/ember-ns-3 --cgroup cpu.max=50000 100000 --cgroup memory.max=1073741824 " +
		"-- --api-sock /firecracker.sock"
	if got := strings.Join(cmd.Args, " "); got != want {
		t.Errorf("jailer command:\n %s\nwant\n %s", got, want)
	}
}

// TestRestoreRefusesMismatch: Firecracker loads a snapshot's own vCPU
// count and memory size whatever the spec says, so the driver refuses a
// spec that differs from the snapshot's, before it starts anything. A
// snapshot written before the driver recorded shapes is taken as it is.
func TestRestoreRefusesMismatch(t *testing.T) {
	d, _ := fakeDriver(t, Config{})
	ctx := t.Context()
	_, snap := snapshotOf(t, d)
	for _, tc := range []struct {
		name     string
		edit     func(s *vmm.Spec)
		unshaped bool // the snapshot has no shape record
		refused  bool
	}{
		{"same shape", nil, false, false},
		{"other memory size", func(s *vmm.Spec) { s.MemoryMiB *= 2 }, false, true},
		{"other vcpu count", func(s *vmm.Spec) { s.VCPUs += 2 }, false, true},
		{"sizes left to the default", func(s *vmm.Spec) { s.VCPUs, s.MemoryMiB = 0, 0 }, false, true},
		{"older snapshot, other memory size", func(s *vmm.Spec) { s.MemoryMiB *= 2 }, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := snap
			if tc.unshaped {
				dir = t.TempDir()
				for _, name := range []string{stateFile, memoryFile} {
					b, err := os.ReadFile(filepath.Join(snap, name))
					if err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			s := testSpec(t, "")
			if tc.edit != nil {
				tc.edit(&s)
			}
			r, err := d.Restore(ctx, s, dir)
			if err == nil {
				t.Cleanup(func() { r.Stop(ctx) })
			}
			if tc.refused != errors.Is(err, ErrSnapshotMismatch) {
				t.Fatalf("restore: %v; want refused %v", err, tc.refused)
			}
			if !tc.refused && err != nil {
				t.Fatal(err)
			}
			if pids := vmmtest.ProcessesNaming(t, s.Dir); tc.refused && len(pids) > 0 {
				t.Errorf("processes left running: %v", pids)
			}
		})
	}
}

// TestIdentity checks that the identity Attach and ReclaimProcesses go by
// is on the command line the driver starts the machine with, directly or
// through the jailer, and on no other machine's.
func TestIdentity(t *testing.T) {
	plain := &Driver{binary: "/usr/bin/firecracker"}
	jailed := &Driver{binary: "/usr/bin/firecracker", jailer: "/usr/bin/jailer", cfg: Config{Jailer: &JailerConfig{ChrootBase: "/srv/jail"}}}
	spec := vmm.Spec{ID: "sb-1", Dir: "/run/ember/sandboxes/sb-1"}
	other := vmm.Spec{ID: "sb-2", Dir: "/run/ember/sandboxes/sb-2"}
	for _, tc := range []struct {
		name string
		d    *Driver
		want vmmproc.Identity
	}{
		{"plain", plain, vmmproc.Identity{Flag: "--api-sock", Value: "/run/ember/sandboxes/sb-1/firecracker.sock"}},
		{"jailed", jailed, vmmproc.Identity{Flag: "--id", Value: "sb-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := tc.d.identity(spec)
			if id != tc.want {
				t.Errorf("identity %s, want %s", id, tc.want)
			}
			if args := tc.d.command(spec, tc.d.existingJail(spec)).Args; !id.In(args) {
				t.Errorf("identity %s not on the machine's command line %q", id, args)
			}
			if args := tc.d.command(other, tc.d.existingJail(other)).Args; id.In(args) {
				t.Errorf("identity %s on another machine's command line %q", id, args)
			}
		})
	}
}

// TestReclaimProcesses plays what a crashed daemon leaves: Firecrackers
// (fake ones) for machines under keep.Dir, one of which keep holds, and an
// admin's tail of a console log there. Only the orphan ends.
func TestReclaimProcesses(t *testing.T) {
	d, _ := fakeDriver(t, Config{})
	d.reclaimWait = 300 * time.Millisecond
	ctx := t.Context()
	// A sandboxes directory of the test's own, short: the api socket
	// path is bounded.
	sandboxes, err := os.MkdirTemp("", "fc-keep-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sandboxes) })
	keep := reclaim.Keep{Dir: sandboxes, PIDs: map[int]bool{}}
	var specs []vmm.Spec
	var machines []vmm.Machine
	for _, name := range []string{"orphan", "kept"} {
		spec := testSpec(t, "")
		spec.ID, spec.Dir = name, filepath.Join(sandboxes, name)
		if err := os.Mkdir(spec.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		specs = append(specs, spec)
		m, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Stop(context.Background()) })
		machines = append(machines, m)
	}
	keep.PIDs[machines[1].PID()] = true
	tail := exec.Command("tail", "-f", vmm.ConsoleLog(specs[0].Dir))
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	tailEnded := make(chan error, 1)
	go func() { tailEnded <- tail.Wait() }()
	t.Cleanup(func() { tail.Process.Kill() })

	res, err := d.ReclaimProcesses(ctx, keep)
	if err != nil {
		t.Fatal(err)
	}
	if res != (reclaim.Result{Found: 1, Removed: 1}) {
		t.Errorf("result %+v, want 1 found, 1 removed", res)
	}
	waitDone(t, machines[0])
	expectState(t, machines[1], vmm.StateRunning)
	select {
	case err := <-tailEnded:
		t.Errorf("tail -f of a console log ended (%v); it is no vmm", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// snapshotOf starts a machine, snapshots it and stops it, and returns its
// spec and the snapshot's directory.
func snapshotOf(t *testing.T, d *Driver) (vmm.Spec, string) {
	t.Helper()
	ctx := t.Context()
	spec := testSpec(t, "")
	m, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	snap := t.TempDir()
	if err := m.(vmm.Snapshotter).Snapshot(ctx, snap, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return spec, snap
}

func TestMeasures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		jailer *JailerConfig
		on     bool
	}{
		{"unjailed", nil, false},
		{"jailed", &JailerConfig{ChrootBase: "/srv/jailer", UID: 999, GID: 999, MemoryMax: "1073741824"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Driver{cfg: Config{Jailer: tc.jailer}, jailer: "/usr/bin/jailer"}
			ms := d.Measures()
			if len(ms) != 1 || ms[0].Name != "jailer" || ms[0].On != tc.on || ms[0].Detail == "" {
				t.Fatalf("measures %+v", ms)
			}
		})
	}
}
