package sandbox

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmm"
)

// assertNoSnapshots checks that no snapshot record or file remains.
func assertNoSnapshots(t *testing.T, st *store.Store, m *Manager) {
	t.Helper()
	if all, _ := st.ListSnapshots(context.Background()); len(all) > 0 {
		t.Errorf("snapshot records left: %+v", all)
	}
	if entries, _ := os.ReadDir(m.cfg.SnapshotDir); len(entries) > 0 {
		t.Errorf("snapshot files left: %v", entries)
	}
}

func TestSnapshotCreateFromAndDelete(t *testing.T) {
	for _, pauseFirst := range []bool{false, true} {
		name := "of a running sandbox"
		if pauseFirst {
			name = "of a paused sandbox"
		}
		t.Run(name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			ctx := context.Background()
			src := mustCreate(t, m, CreateRequest{VCPUs: 2, MemoryMiB: 512, Env: map[string]string{"FROM": "src"}})
			if pauseFirst {
				if _, err := m.Pause(ctx, src.ID); err != nil {
					t.Fatal(err)
				}
			}
			sn, err := m.CreateSnapshot(ctx, src.ID, "snap-1")
			if err != nil {
				t.Fatal(err)
			}
			if sn.Name != "snap-1" || sn.Sandbox != src.ID || sn.VCPUs != 2 || sn.MemoryMiB != 512 || sn.DiskMiB != 1024 ||
				sn.Template != "base" || sn.DiskBytes <= 0 || sn.MemoryBytes <= 0 {
				t.Fatalf("snapshot %+v", sn)
			}
			// The source is as it was.
			got, _ := m.Get(src.ID)
			if pauseFirst {
				assertPaused(t, w, st, m, src.ID)
			} else if got.State != StateRunning || got.VMMPID != src.VMMPID || machineOf(t, w, src.VMMPID).isPaused() {
				t.Fatalf("source after snapshot: %+v", got)
			}
			for _, f := range []string{snapRootfs(sn.Dir), filepath.Join(snapState(sn.Dir), "mem")} {
				if _, err := os.Stat(f); err != nil {
					t.Fatalf("snapshot file: %v", err)
				}
			}
			if _, err := m.CreateSnapshot(ctx, src.ID, "snap-1"); !errors.Is(err, ErrSnapshotExists) {
				t.Fatalf("same name again: %v", err)
			}
			if list, err := m.ListSnapshots(ctx); err != nil || len(list) != 1 || list[0].Name != "snap-1" {
				t.Fatalf("list %+v %v", list, err)
			}

			var kids []store.Sandbox
			for range 3 {
				k := mustCreate(t, m, CreateRequest{Snapshot: "snap-1", Env: map[string]string{"KID": "1"}})
				kids = append(kids, k)
			}
			tokens := map[string]bool{src.Token: true}
			for _, k := range kids {
				if k.State != StateRunning || k.Snapshot != "snap-1" || k.VCPUs != 2 || k.MemoryMiB != 512 ||
					k.Env["FROM"] != "src" || k.Env["KID"] != "1" {
					t.Fatalf("sandbox from snapshot %+v", k)
				}
				// Each restored guest is handed a token of its own.
				if k.Token == "" || tokens[k.Token] {
					t.Fatalf("sandbox %s from snapshot shares token %q", k.ID, k.Token)
				}
				tokens[k.Token] = true
				if _, ok := k.TimingsMS["restore"]; !ok {
					t.Fatalf("timings %v", k.TimingsMS)
				}
				w.mu.Lock()
				base := w.bases[k.ID]
				w.mu.Unlock()
				if base != snapRootfs(sn.Dir) {
					t.Fatalf("disk over %q, want the snapshot's image", base)
				}
				if mach := machineOf(t, w, k.VMMPID); mach.from != snapState(sn.Dir) {
					t.Fatalf("restored from %q", mach.from)
				}
			}
			// A sandbox from a snapshot pauses and resumes like any other.
			if _, err := m.Pause(ctx, kids[0].ID); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Resume(ctx, kids[0].ID); err != nil {
				t.Fatal(err)
			}
			if err := m.DeleteSnapshot(ctx, "snap-1"); !errors.Is(err, ErrSnapshotInUse) {
				t.Fatalf("delete in use: %v", err)
			}
			for _, id := range []string{kids[0].ID, kids[1].ID, kids[2].ID, src.ID} {
				if err := m.Destroy(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			// The snapshot outlives its source.
			if _, err := m.GetSnapshot(ctx, "snap-1"); err != nil {
				t.Fatal(err)
			}
			if err := m.DeleteSnapshot(ctx, "snap-1"); err != nil {
				t.Fatal(err)
			}
			if err := m.DeleteSnapshot(ctx, "snap-1"); !errors.Is(err, ErrSnapshotNotFound) {
				t.Fatalf("delete twice: %v", err)
			}
			assertEmpty(t, w, st, m, dir)
			assertNoSnapshots(t, st, m)
		})
	}
}

// withSnapshot sets up a manager with one sandbox and a snapshot of it.
func withSnapshot(t *testing.T, name string) (*world, *store.Store, string, *Manager, store.Sandbox) {
	t.Helper()
	w, st, dir, m := setup(t)
	src := mustCreate(t, m, CreateRequest{})
	if _, err := m.CreateSnapshot(context.Background(), src.ID, name); err != nil {
		t.Fatal(err)
	}
	return w, st, dir, m, src
}

func TestSnapshotBadInput(t *testing.T) {
	w, st, dir, m, src := withSnapshot(t, "s")
	ctx := context.Background()
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"empty name", func() error { _, err := m.CreateSnapshot(ctx, src.ID, ""); return err }, ErrInvalid},
		{"dot name", func() error { _, err := m.CreateSnapshot(ctx, src.ID, ".hidden"); return err }, ErrInvalid},
		{"slash in name", func() error { _, err := m.CreateSnapshot(ctx, src.ID, "a/b"); return err }, ErrInvalid},
		{"long name", func() error { _, err := m.CreateSnapshot(ctx, src.ID, strings.Repeat("a", 65)); return err }, ErrInvalid},
		{"unknown sandbox", func() error { _, err := m.CreateSnapshot(ctx, "nope", "t"); return err }, ErrNotFound},
		{"create from unknown", func() error { _, err := m.Create(ctx, CreateRequest{Snapshot: "nope"}); return err }, ErrSnapshotNotFound},
		{"template and snapshot", func() error { _, err := m.Create(ctx, CreateRequest{Snapshot: "s", Template: "base"}); return err }, ErrInvalid},
		{"other memory", func() error { _, err := m.Create(ctx, CreateRequest{Snapshot: "s", MemoryMiB: 512}); return err }, ErrInvalid},
		{"other vcpus", func() error { _, err := m.Create(ctx, CreateRequest{Snapshot: "s", VCPUs: 4}); return err }, ErrInvalid},
		{"other disk", func() error { _, err := m.Create(ctx, CreateRequest{Snapshot: "s", DiskMiB: 4096}); return err }, ErrInvalid},
		{"get unknown", func() error { _, err := m.GetSnapshot(ctx, "nope"); return err }, ErrSnapshotNotFound},
		{"delete unknown", func() error { return m.DeleteSnapshot(ctx, "nope") }, ErrSnapshotNotFound},
		{"fork zero", func() error { _, err := m.Fork(ctx, src.ID, 0); return err }, ErrInvalid},
		{"fork too many", func() error { _, err := m.Fork(ctx, src.ID, 1000); return err }, ErrInvalid},
		{"fork unknown", func() error { _, err := m.Fork(ctx, "nope", 1); return err }, ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if err := m.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSnapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, w, st, m, dir)
	assertNoSnapshots(t, st, m)
}

func TestSnapshotFailureLeavesNothing(t *testing.T) {
	cases := []struct {
		name string
		set  func(*world, bool)
		kind error
	}{
		{"vcpus will not stop", func(w *world, on bool) { w.failPause = on }, ErrVMMSave},
		{"state not saved", func(w *world, on bool) { w.failSnapshot = on }, ErrVMMSave},
		{"disk not flattened", func(w *world, on bool) { w.failFlatten = on }, ErrDisk},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			ctx := context.Background()
			src := mustCreate(t, m, CreateRequest{})
			tc.set(w, true)
			if _, err := m.CreateSnapshot(ctx, src.ID, "s"); !errors.Is(err, tc.kind) {
				t.Fatalf("snapshot: %v, want %v", err, tc.kind)
			}
			if _, err := m.Fork(ctx, src.ID, 2); !errors.Is(err, tc.kind) {
				t.Fatalf("fork: %v, want %v", err, tc.kind)
			}
			assertNoSnapshots(t, st, m)
			if got, _ := m.Get(src.ID); got.State != StateRunning || machineOf(t, w, src.VMMPID).isPaused() {
				t.Fatalf("source after failed snapshot: %+v", got)
			}
			tc.set(w, false)
			if _, err := m.CreateSnapshot(ctx, src.ID, "s"); err != nil {
				t.Fatalf("snapshot after the failure cleared: %v", err)
			}
			if err := m.Destroy(ctx, src.ID); err != nil {
				t.Fatal(err)
			}
			if err := m.DeleteSnapshot(ctx, "s"); err != nil {
				t.Fatal(err)
			}
			assertEmpty(t, w, st, m, dir)
			assertNoSnapshots(t, st, m)
		})
	}
}

func TestCreateFromSnapshotFailureUnwinds(t *testing.T) {
	w, st, dir, m, src := withSnapshot(t, "s")
	ctx := context.Background()
	if err := m.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	for _, set := range []func(bool){
		func(on bool) { w.failRestore = on },
		func(on bool) { w.failReady = on },
		func(on bool) { w.failSlot = on },
	} {
		set(true)
		if _, err := m.Create(ctx, CreateRequest{Snapshot: "s"}); err == nil {
			t.Fatal("create succeeded")
		}
		set(false)
		assertEmpty(t, w, st, m, dir)
	}
	// Nothing holds the snapshot after failed creates.
	if err := m.DeleteSnapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	assertNoSnapshots(t, st, m)
}

func TestFork(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	src := mustCreate(t, m, CreateRequest{AutoPause: true, AutoResume: true, PrivateTraffic: true, Metadata: map[string]string{"k": "v"}})
	if !src.AutoResume || src.TrafficToken == "" {
		t.Fatalf("created %+v", src)
	}
	if back, err := st.GetSandbox(ctx, src.ID); err != nil || !back.AutoResume || back.TrafficToken != src.TrafficToken {
		t.Fatalf("stored %+v, %v", back, err)
	}
	forks, err := m.Fork(ctx, src.ID, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(forks) != 3 {
		t.Fatalf("%d forks", len(forks))
	}
	seen := map[string]bool{src.ID: true, src.Token: true, src.TrafficToken: true}
	for _, f := range forks {
		if seen[f.ID] || f.State != StateRunning || !f.AutoPause || f.Metadata["k"] != "v" || !strings.HasPrefix(f.Snapshot, forkPrefix) {
			t.Fatalf("fork %+v", f)
		}
		// A fork is private and auto-resumed as its source, with tokens
		// of its own.
		if !f.AutoResume || f.TrafficToken == "" || seen[f.TrafficToken] || f.Token == src.Token || seen[f.Token] {
			t.Fatalf("fork %+v of %+v", f, src)
		}
		seen[f.ID], seen[f.Token], seen[f.TrafficToken] = true, true, true
	}
	if got, _ := m.Get(src.ID); got.State != StateRunning || got.VMMPID != src.VMMPID {
		t.Fatalf("source after fork: %+v", got)
	}
	if list, _ := m.ListSnapshots(ctx); len(list) != 0 {
		t.Fatalf("fork snapshot listed: %+v", list)
	}
	if _, err := m.Exec(ctx, forks[1].ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, f := range forks {
		if err := m.Destroy(ctx, f.ID); err != nil {
			t.Fatal(err)
		}
	}
	destroyAll(t, m, src.ID)
	assertEmpty(t, w, st, m, dir)
	assertNoSnapshots(t, st, m)
}

func TestForkFailureLeavesNoFork(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	src := mustCreate(t, m, CreateRequest{})
	// The second restore fails: the first fork must go too.
	var mu sync.Mutex
	restores := 0
	orig := m.d.VMM
	m.d.VMM = countingRestorer{fakeDriver: fakeDriver{w}, before: func() error {
		mu.Lock()
		defer mu.Unlock()
		if restores++; restores == 2 {
			return errors.New("out of memory")
		}
		return nil
	}}
	defer func() { m.d.VMM = orig }()
	if _, err := m.Fork(ctx, src.ID, 3); err == nil {
		t.Fatal("fork succeeded")
	}
	if l := m.List(); len(l) != 1 || l[0].ID != src.ID {
		t.Fatalf("sandboxes after failed fork: %+v", l)
	}
	assertNoSnapshots(t, st, m)
	destroyAll(t, m, src.ID)
	assertEmpty(t, w, st, m, dir)
}

type countingRestorer struct {
	fakeDriver
	before func() error
}

func (c countingRestorer) Restore(ctx context.Context, spec vmm.Spec, dir string) (vmm.Machine, error) {
	if err := c.before(); err != nil {
		return nil, err
	}
	return c.fakeDriver.Restore(ctx, spec, dir)
}

func TestConcurrentDeleteAndCreateFromSnapshot(t *testing.T) {
	w, st, dir, m, src := withSnapshot(t, "s")
	ctx := context.Background()
	if err := m.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var created store.Sandbox
	var createErr, deleteErr error
	wg.Add(2)
	go func() { defer wg.Done(); created, createErr = m.Create(ctx, CreateRequest{Snapshot: "s"}) }()
	go func() { defer wg.Done(); deleteErr = m.DeleteSnapshot(ctx, "s") }()
	wg.Wait()
	switch {
	case createErr == nil && errors.Is(deleteErr, ErrSnapshotInUse):
		if err := m.Destroy(ctx, created.ID); err != nil {
			t.Fatal(err)
		}
		if err := m.DeleteSnapshot(ctx, "s"); err != nil {
			t.Fatal(err)
		}
	case errors.Is(createErr, ErrSnapshotNotFound) && deleteErr == nil:
	default:
		t.Fatalf("create %v, delete %v", createErr, deleteErr)
	}
	assertEmpty(t, w, st, m, dir)
	assertNoSnapshots(t, st, m)
}

func TestRecoverReclaimsSnapshotOrphans(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	src := mustCreate(t, m, CreateRequest{})
	if _, err := m.CreateSnapshot(ctx, src.ID, "keep"); err != nil {
		t.Fatal(err)
	}
	forks, err := m.Fork(ctx, src.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	// A capture interrupted by the crash, and the fork gone while the
	// daemon was down (its record deleted).
	os.MkdirAll(filepath.Join(m.cfg.SnapshotDir, ".tmp-half"), 0o700)
	if err := st.DeleteSandbox(ctx, forks[0].ID); err != nil {
		t.Fatal(err)
	}
	machineOf(t, w, forks[0].VMMPID).crash()
	w.mu.Lock()
	delete(w.disks, forks[0].ID)
	delete(w.slots, forks[0].SlotIndex)
	w.mu.Unlock()
	os.RemoveAll(forks[0].Dir) // the daemon's directory reclaim, not the manager's job

	m2 := newManager(t, w, st, dir)
	if _, err := m2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(m2.cfg.SnapshotDir)
	if len(entries) != 1 || entries[0].Name() != "keep" {
		t.Fatalf("snapshot dir after recover: %v", entries)
	}
	if all, _ := st.ListSnapshots(ctx); len(all) != 1 {
		t.Fatalf("snapshot records after recover: %+v", all)
	}
	if err := m2.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	if err := m2.DeleteSnapshot(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, w, st, m2, dir)
	assertNoSnapshots(t, st, m2)
}
