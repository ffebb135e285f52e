package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/failpoint"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// crash is one failpoint of the matrix: what is made before the daemon is
// armed, the operation that hits the point, and what must hold after the
// restart.
type crash struct {
	point string
	// setup runs on an unarmed daemon and returns the sandbox the
	// operation works on ("" for a create).
	setup func(c *crashRun, t *testing.T) string
	op    func(ctx context.Context, c *crashRun, id string) error
	check func(t *testing.T, c *crashRun, id string)
}

// crashRun is the state one matrix run shares between its cases.
type crashRun struct {
	d   *harness.Daemon
	ctx context.Context
	// baseHash is the hash of snapshot "base", taken before any crash.
	baseHash string
}

// marker is written into guest RAM (a tmpfs) before a crash and read after:
// it is there only if the guest's memory came through.
const marker = "crash-marker-7f3a"

func (c *crashRun) create(t *testing.T) string {
	t.Helper()
	sb, err := c.d.Client.CreateSandbox(c.ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.d.Client.Exec(c.ctx, sb.ID, client.ExecRequest{User: "root", Cmd: "/bin/sh", Args: []string{"-c",
		"mkdir -p /run/m && mount -t tmpfs none /run/m && echo " + marker + " > /run/m/marker"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("write marker: %+v %v", res, err)
	}
	return sb.ID
}

// expectIntact checks that the sandbox runs, or is paused and resumes,
// with the marker in its memory.
func (c *crashRun) expectIntact(t *testing.T, id string, want ...string) {
	t.Helper()
	sb, err := c.d.Client.GetSandbox(c.ctx, id)
	if err != nil {
		t.Fatalf("sandbox %s after the crash: %v", id, err)
	}
	if len(want) > 0 && !contains(want, sb.State) {
		t.Errorf("sandbox %s is %s (%s), want %s", id, sb.State, sb.Error, strings.Join(want, " or "))
	}
	switch sb.State {
	case "paused":
		if _, err := c.d.Client.ResumeSandbox(c.ctx, id); err != nil {
			t.Fatalf("resume after the crash: %v", err)
		}
	case "running":
	default:
		t.Fatalf("sandbox %s is %s after the crash: %s", id, sb.State, sb.Error)
	}
	res, err := c.d.Client.Exec(c.ctx, id, client.ExecRequest{Cmd: "cat", Args: []string{"/run/m/marker"}})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != marker {
		t.Fatalf("guest memory after the crash: %+v %v", res, err)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// expectSnapshots checks that snapshot "base" is byte for byte what it was
// and that no half-written snapshot is left, listed or on disk.
func (c *crashRun) expectSnapshots(t *testing.T) {
	t.Helper()
	if got := treeHash(t, filepath.Join(c.d.DataDir, "snapshots", "base")); got != c.baseHash {
		t.Errorf("snapshot base changed: %s, was %s", got, c.baseHash)
	}
	sns, err := c.d.Client.ListSnapshots(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range sns {
		if sn.Name != "base" {
			if _, err := os.Stat(filepath.Join(c.d.DataDir, "snapshots", sn.Name, "state")); err != nil {
				t.Errorf("snapshot %s listed without its state: %v", sn.Name, err)
			}
		}
	}
	ents, _ := os.ReadDir(filepath.Join(c.d.DataDir, "snapshots"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") || strings.HasPrefix(e.Name(), ".fork-") {
			t.Errorf("left in the snapshot directory: %s", e.Name())
		}
	}
}

// treeHash hashes every file's path and content under dir.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	var paths []string
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Strings(paths)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(h, strings.TrimPrefix(p, dir)+"\n")
		io.Copy(h, f)
		f.Close()
	}
	return hex.EncodeToString(h.Sum(nil))
}

// expectNoHalfCreates checks that every sandbox is running or in error
// (its resources released): never left creating.
func (c *crashRun) expectNoHalfCreates(t *testing.T) {
	t.Helper()
	sbs, err := c.d.Client.ListSandboxes(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs {
		switch sb.State {
		case "running":
			if r, err := c.d.Client.Exec(c.ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil || r.ExitCode != 0 {
				t.Errorf("running sandbox %s does not run: %+v %v", sb.ID, r, err)
			}
		case "error":
			if _, err := os.Stat(filepath.Join(c.d.DataDir, "sandboxes", sb.ID)); !os.IsNotExist(err) {
				t.Errorf("failed create %s kept its directory: %v", sb.ID, err)
			}
		default:
			t.Errorf("sandbox %s is %s after the crash", sb.ID, sb.State)
		}
	}
}

func pauseOp(ctx context.Context, c *crashRun, id string) error {
	_, err := c.d.Client.PauseSandbox(ctx, id)
	return err
}

func createOp(ctx context.Context, c *crashRun, _ string) error {
	_, err := c.d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	return err
}

func (c *crashRun) createPaused(t *testing.T) string {
	id := c.create(t)
	if _, err := c.d.Client.PauseSandbox(c.ctx, id); err != nil {
		t.Fatal(err)
	}
	return id
}

func crashes() []crash {
	createCase := func(point string) crash {
		return crash{point: point, setup: func(*crashRun, *testing.T) string { return "" }, op: createOp,
			check: func(t *testing.T, c *crashRun, _ string) { c.expectNoHalfCreates(t) }}
	}
	pauseCase := func(point string, want ...string) crash {
		return crash{point: point, setup: (*crashRun).create, op: pauseOp,
			check: func(t *testing.T, c *crashRun, id string) { c.expectIntact(t, id, want...) }}
	}
	resumeCase := func(point string) crash {
		return crash{point: point, setup: (*crashRun).createPaused,
			op: func(ctx context.Context, c *crashRun, id string) error {
				_, err := c.d.Client.ResumeSandbox(ctx, id)
				return err
			},
			check: func(t *testing.T, c *crashRun, id string) { c.expectIntact(t, id, "paused", "running") }}
	}
	snapshotCase := func(point string) crash {
		return crash{point: point, setup: (*crashRun).create,
			op: func(ctx context.Context, c *crashRun, id string) error {
				_, err := c.d.Client.CreateSnapshot(ctx, id, "interrupted")
				return err
			},
			check: func(t *testing.T, c *crashRun, id string) {
				c.expectIntact(t, id, "running")
				c.expectSnapshots(t)
			}}
	}
	forkCase := func(point string) crash {
		return crash{point: point, setup: (*crashRun).create,
			op: func(ctx context.Context, c *crashRun, id string) error {
				_, err := c.d.Client.ForkSandbox(ctx, id, 2)
				return err
			},
			check: func(t *testing.T, c *crashRun, id string) {
				c.expectIntact(t, id, "running")
				c.expectNoHalfCreates(t)
			}}
	}
	destroyCase := func(point string) crash {
		return crash{point: point, setup: (*crashRun).create,
			op: func(ctx context.Context, c *crashRun, id string) error { return c.d.Client.DeleteSandbox(ctx, id) },
			check: func(t *testing.T, c *crashRun, id string) {
				if _, err := c.d.Client.GetSandbox(c.ctx, id); !client.IsCode(err, "sandbox_not_found") {
					t.Errorf("interrupted destroy: %v, want it finished (sandbox_not_found)", err)
				}
			}}
	}
	return []crash{
		createCase(failpoint.CreateRecord), createCase(failpoint.CreateDisk), createCase(failpoint.CreateSlot),
		createCase(failpoint.CreateVMM), createCase(failpoint.CreateRunning),
		// Before the state is published the pause is undone; after, it
		// is finished.
		pauseCase(failpoint.PausePausing, "running"), pauseCase(failpoint.PauseStopped, "running"),
		pauseCase(failpoint.PauseSaved, "running"), pauseCase(failpoint.PausePublished, "paused"),
		pauseCase(failpoint.PauseReleased, "paused"),
		resumeCase(failpoint.ResumeResuming), resumeCase(failpoint.ResumeAttached),
		resumeCase(failpoint.ResumeRestored), resumeCase(failpoint.ResumeRunning),
		snapshotCase(failpoint.SnapshotStopped), snapshotCase(failpoint.SnapshotSaved),
		snapshotCase(failpoint.SnapshotFlattened), snapshotCase(failpoint.SnapshotPublished),
		forkCase(failpoint.ForkSnapshot), forkCase(failpoint.ForkCreated),
		destroyCase(failpoint.DestroyStopping), destroyCase(failpoint.DestroyVMM),
	}
}

// TestCrashMatrix SIGKILLs the daemon at each failpoint of create, pause,
// resume, snapshot, fork and destroy in turn, restarts it, and checks that
// no sandbox the user did not ask to destroy is lost: an interrupted pause
// ends running or paused with its memory intact, a resume paused or
// running, a snapshot or fork leaves the source as it was (and snapshot
// "base" byte for byte), a create ends running or failed with everything
// released, a destroy is finished. After each case every sandbox is
// destroyed and nothing may be left: no netns, veth, VMM process, cgroup,
// loop device, sandbox directory or guest RAM file.
func TestCrashMatrix(t *testing.T) {
	bin := testutil.RequireEnv(t, "EMBER_FAILPOINT_BIN", "run through `make test`, which builds bin/ember-failpoints")
	d := startWith(t, harness.Options{SlotFirst: 5750})
	d.Bin = bin
	ctx := context.Background()
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	c := &crashRun{d: d, ctx: ctx}
	// Snapshot base is taken once and must come through every crash.
	src := c.create(t)
	if _, err := d.Client.CreateSnapshot(ctx, src, "base"); err != nil {
		t.Fatal(err)
	}
	if err := d.Client.DeleteSandbox(ctx, src); err != nil {
		t.Fatal(err)
	}
	c.baseHash = treeHash(t, filepath.Join(d.DataDir, "snapshots", "base"))
	shmBefore := shmFiles(t)

	for _, tc := range crashes() {
		t.Run(tc.point, func(t *testing.T) {
			begin := time.Now()
			id := tc.setup(c, t)
			d.ExtraEnv = []string{failpoint.Env + "=" + tc.point}
			if err := d.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			opErr := make(chan error, 1)
			go func() { opErr <- tc.op(ctx, c, id) }()
			// The operation ends when the daemon dies under it; one that
			// ends first was refused before it reached the point.
			select {
			case err := <-opErr:
				if !d.WaitExit(10 * time.Second) {
					t.Fatalf("failpoint %s never hit: the operation ended first: %v", tc.point, err)
				}
				if err == nil {
					t.Errorf("the operation answered success although the daemon died at %s", tc.point)
				}
			case <-time.After(90 * time.Second):
				t.Fatalf("failpoint %s never hit in 90 s", tc.point)
			}
			d.ExtraEnv = nil
			if err := d.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			tc.check(t, c, id)
			if err := d.DestroyAll(ctx); err != nil {
				t.Fatal(err)
			}
			if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
				t.Errorf("left after destroying all: %v", leaks)
			}
			if extra := newFiles(shmBefore, shmFiles(t)); len(extra) > 0 {
				t.Errorf("guest RAM files left in /dev/shm: %v", extra)
			}
			t.Logf("%s: %s", tc.point, time.Since(begin).Round(time.Millisecond))
		})
	}
	if err := d.Client.DeleteSnapshot(ctx, "base"); err != nil {
		t.Fatal(err)
	}
}

// TestCrashDuringTemplateBuild kills `ember template build` at each of its
// failpoints: the next build succeeds and no half-built template or work
// directory is left in the registry.
func TestCrashDuringTemplateBuild(t *testing.T) {
	bin := testutil.RequireEnv(t, "EMBER_FAILPOINT_BIN", "run through `make test`, which builds bin/ember-failpoints")
	testutil.RequireRoot(t)
	guest := testutil.Guest(t)
	reg := t.TempDir()
	build := func(point string) error {
		cmd := exec.Command(bin, "template", "build", "crashtpl", "--kernel", guest.Kernel, "--dir", reg)
		cmd.Env = append(os.Environ(), failpoint.Env+"="+point)
		out, err := cmd.CombinedOutput()
		if err != nil && point == "" {
			t.Logf("build output:\n%s", out)
		}
		return err
	}
	for _, point := range []string{failpoint.TemplateStaged, failpoint.TemplateImage} {
		err := build(point)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != -1 {
			t.Fatalf("build armed at %s: %v, want it killed", point, err)
		}
		if _, err := os.Stat(filepath.Join(reg, "crashtpl")); !os.IsNotExist(err) {
			t.Fatalf("a template published by a build killed at %s: %v", point, err)
		}
	}
	if err := build(""); err != nil {
		t.Fatalf("build after the crashes: %v", err)
	}
	ents, _ := os.ReadDir(reg)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".build-") {
			t.Errorf("work directory left: %s", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(reg, "crashtpl", "rootfs.ext4")); err != nil {
		t.Fatalf("template after the crashes: %v", err)
	}
}

// shmFiles lists ember's guest RAM files in /dev/shm.
func shmFiles(t *testing.T) map[string]bool {
	t.Helper()
	files, _ := filepath.Glob("/dev/shm/ember-*.mem")
	out := map[string]bool{}
	for _, f := range files {
		out[f] = true
	}
	return out
}

func newFiles(before, after map[string]bool) []string {
	var out []string
	for f := range after {
		if !before[f] {
			out = append(out, f)
		}
	}
	return out
}
