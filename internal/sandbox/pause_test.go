package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmm"
)

// mustCreate creates a sandbox or fails the test.
func mustCreate(t *testing.T, m *Manager, req CreateRequest) store.Sandbox {
	t.Helper()
	r, err := m.Create(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// destroyAll destroys the sandboxes or fails the test.
func destroyAll(t *testing.T, m *Manager, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := m.Destroy(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

func machineOf(t *testing.T, w *world, pid int) *fakeMachine {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	m, ok := w.machines[pid]
	if !ok {
		t.Fatalf("no machine with pid %d", pid)
	}
	return m
}

// assertPaused checks what a paused sandbox holds: a record in "paused", its
// saved state, a detached disk, and no machine or slot.
func assertPaused(t *testing.T, w *world, st *store.Store, m *Manager, id string) store.Sandbox {
	t.Helper()
	r, err := m.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StatePaused || r.VMMPID != 0 || r.SlotIndex != -1 {
		t.Fatalf("paused record %+v", r)
	}
	if r.MemoryBytes <= 0 || r.DiskBytes <= 0 {
		t.Fatalf("paused usage: disk %d memory %d", r.DiskBytes, r.MemoryBytes)
	}
	if stored, _ := st.GetSandbox(context.Background(), id); stored.State != StatePaused {
		t.Fatalf("stored state %s", stored.State)
	}
	if _, err := os.Stat(filepath.Join(pauseDir(r), "mem")); err != nil {
		t.Fatalf("saved state: %v", err)
	}
	if _, err := os.Stat(pauseDir(r) + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary state dir left: %v", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.detached[id] || len(w.machines) != 0 || len(w.slots) != 0 {
		t.Fatalf("paused sandbox holds detached=%v machines=%d slots=%v", w.detached[id], len(w.machines), w.slots)
	}
	return r
}

func TestPauseResume(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	r := mustCreate(t, m, CreateRequest{TimeoutS: 60})
	first := machineOf(t, w, r.VMMPID)
	p, err := m.Pause(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != StatePaused || p.MemoryBytes <= 0 {
		t.Fatalf("pause returned %+v", p)
	}
	if _, ok := p.TimingsMS["pause"]; !ok {
		t.Fatalf("no pause timing in %v", p.TimingsMS)
	}
	// The stopped machine must not look like a crash to the watcher.
	<-first.done
	time.Sleep(20 * time.Millisecond)
	assertPaused(t, w, st, m, r.ID)

	if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); !errors.Is(err, ErrConflict) {
		t.Fatalf("exec in paused sandbox: %v", err)
	}
	if _, err := m.Address(r.ID); !errors.Is(err, ErrConflict) {
		t.Fatalf("address of paused sandbox: %v", err)
	}
	if _, err := m.Pause(ctx, r.ID); !errors.Is(err, ErrConflict) {
		t.Fatalf("pause twice: %v", err)
	}

	before := time.Now()
	res, err := m.Resume(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.State != StateRunning || res.VMMPID == 0 || res.VMMPID == r.VMMPID || res.SlotIndex < 0 || res.MemoryBytes != 0 {
		t.Fatalf("resumed record %+v", res)
	}
	if res.ExpiresAt.Before(before.Add(59 * time.Second)) {
		t.Fatalf("end time %s not restarted on resume", res.ExpiresAt)
	}
	if mach := machineOf(t, w, res.VMMPID); mach.from != pauseDir(r) {
		t.Fatalf("restored from %q, want %q", mach.from, pauseDir(r))
	}
	if _, err := os.Stat(pauseDir(r)); !os.IsNotExist(err) {
		t.Fatalf("saved state kept after resume: %v", err)
	}
	if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("exec after resume: %v", err)
	}
	if _, err := m.Resume(ctx, r.ID); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("resume of a running sandbox: %v", err)
	}
	// Pause and resume again: nothing accumulates.
	if _, err := m.Pause(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	destroyAll(t, m, r.ID)
	assertEmpty(t, w, st, m, dir)
}

func TestPauseFailureKeepsRunning(t *testing.T) {
	cases := []struct {
		name string
		set  func(*world)
	}{
		{"vcpus will not stop", func(w *world) { w.failPause = true }},
		{"state not saved", func(w *world) { w.failSnapshot = true }},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			ctx := context.Background()
			r := mustCreate(t, m, CreateRequest{})
			tc.set(w)
			// Either way the VMM could not save the machine.
			if _, err := m.Pause(ctx, r.ID); !errors.Is(err, ErrVMMSave) {
				t.Fatalf("pause: %v, want ErrVMMSave", err)
			}
			got, _ := m.Get(r.ID)
			if got.State != StateRunning || got.VMMPID != r.VMMPID {
				t.Fatalf("after failed pause: %+v", got)
			}
			if machineOf(t, w, r.VMMPID).isPaused() {
				t.Fatal("vcpus left stopped")
			}
			if _, err := os.Stat(pauseDir(r)); !os.IsNotExist(err) {
				t.Fatalf("saved state after failed pause: %v", err)
			}
			if _, err := os.Stat(pauseDir(r) + ".tmp"); !os.IsNotExist(err) {
				t.Fatalf("partial state after failed pause: %v", err)
			}
			if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); err != nil {
				t.Fatalf("exec after failed pause: %v", err)
			}
			destroyAll(t, m, r.ID)
			assertEmpty(t, w, st, m, dir)
		})
	}
}

func TestPauseStopFailureFailsTheSandbox(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	r := mustCreate(t, m, CreateRequest{})
	w.failStop = true
	if _, err := m.Pause(ctx, r.ID); err == nil {
		t.Fatal("pause succeeded")
	}
	if got, _ := m.Get(r.ID); got.State != StateError {
		t.Fatalf("state %s", got.State)
	}
	w.failStop = false
	destroyAll(t, m, r.ID)
	assertEmpty(t, w, st, m, dir)
}

func TestResumeFailureStaysPaused(t *testing.T) {
	cases := []struct {
		name string
		set  func(*world, bool)
		kind error
	}{
		{"disk will not attach", func(w *world, on bool) { w.failAttach = on }, ErrDisk},
		{"no slot", func(w *world, on bool) { w.failSlot = on }, ErrNetwork},
		{"restore fails", func(w *world, on bool) { w.failRestore = on }, ErrVMMStart},
		{"agent silent", func(w *world, on bool) { w.failReady = on }, ErrBoot},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			ctx := context.Background()
			r := mustCreate(t, m, CreateRequest{})
			if _, err := m.Pause(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
			tc.set(w, true)
			var op *OpError
			if _, err := m.Resume(ctx, r.ID); !errors.Is(err, tc.kind) || !errors.As(err, &op) || op.Op != "resume" || op.ID != r.ID {
				t.Fatalf("resume: %v, want a resume *OpError of %v", err, tc.kind)
			}
			assertPaused(t, w, st, m, r.ID)
			tc.set(w, false)
			if _, err := m.Resume(ctx, r.ID); err != nil {
				t.Fatalf("resume after the failure cleared: %v", err)
			}
			destroyAll(t, m, r.ID)
			assertEmpty(t, w, st, m, dir)
		})
	}
}

func TestResumeAfterDiskOrStateVanished(t *testing.T) {
	cases := []struct {
		name string
		lose func(*world, store.Sandbox)
	}{
		{"disk gone", func(w *world, r store.Sandbox) {
			w.mu.Lock()
			delete(w.disks, r.ID)
			w.mu.Unlock()
		}},
		{"saved state gone", func(w *world, r store.Sandbox) { os.RemoveAll(pauseDir(r)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			ctx := context.Background()
			r := mustCreate(t, m, CreateRequest{})
			if _, err := m.Pause(ctx, r.ID); err != nil {
				t.Fatal(err)
			}
			tc.lose(w, r)
			if _, err := m.Resume(ctx, r.ID); !errors.Is(err, ErrConflict) {
				t.Fatalf("resume: %v", err)
			}
			got, _ := m.Get(r.ID)
			if got.State != StateError || got.Error == "" {
				t.Fatalf("after lost resume: %+v", got)
			}
			if l := w.leaks(); len(l) > 0 {
				t.Fatalf("leaked: %v", l)
			}
			destroyAll(t, m, r.ID)
			assertEmpty(t, w, st, m, dir)
		})
	}
}

func TestPauseRacingDestroy(t *testing.T) {
	for i := 0; i < 20; i++ {
		w, st, dir, m := setup(t)
		ctx := context.Background()
		r := mustCreate(t, m, CreateRequest{})
		var wg sync.WaitGroup
		var pauseErr, destroyErr error
		wg.Add(2)
		go func() { defer wg.Done(); _, pauseErr = m.Pause(ctx, r.ID) }()
		go func() { defer wg.Done(); destroyErr = m.Destroy(ctx, r.ID) }()
		wg.Wait()
		if destroyErr != nil {
			t.Fatalf("destroy: %v", destroyErr)
		}
		if pauseErr != nil && !errors.Is(pauseErr, ErrNotFound) {
			t.Fatalf("pause lost the race with %v, want not found", pauseErr)
		}
		assertEmpty(t, w, st, m, dir)
	}
}

func TestUnsupportedDriver(t *testing.T) {
	w, st, dir, _ := setup(t)
	cfg := DefaultConfig(dir)
	type plain struct{ vmm.Driver }
	m, err := NewManager(cfg, Deps{Store: st, Templates: w, Disks: w, Slots: fakeSlots{w}, VMM: plain{fakeDriver{w}},
		Agent: func(netip.Addr, string) Agent { return fakeAgent{w: w} }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	ctx := context.Background()
	r := mustCreate(t, m, CreateRequest{})
	// The fake machine can snapshot, so pause works; resume cannot.
	if _, err := m.Pause(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(ctx, r.ID); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("resume: %v", err)
	}
	assertPaused(t, w, st, m, r.ID)
	destroyAll(t, m, r.ID)
	assertEmpty(t, w, st, m, dir)
}

func TestSetTimeout(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	r := mustCreate(t, m, CreateRequest{})
	for _, bad := range []int{0, -1, 1 << 30} {
		if _, err := m.SetTimeout(ctx, r.ID, bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("timeout %d: %v", bad, err)
		}
	}
	if _, err := m.SetTimeout(ctx, "nope", 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	before := time.Now()
	got, err := m.SetTimeout(ctx, r.ID, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if d := got.ExpiresAt.Sub(before); d < 3599*time.Second || d > 3601*time.Second || got.TimeoutS != 3600 {
		t.Fatalf("end time %s after now, timeout %d", d, got.TimeoutS)
	}
	if stored, _ := st.GetSandbox(ctx, r.ID); stored.ExpiresAt.Sub(got.ExpiresAt).Abs() > time.Millisecond {
		t.Fatalf("stored end time %s, want %s", stored.ExpiresAt, got.ExpiresAt)
	}
	destroyAll(t, m, r.ID)
	assertEmpty(t, w, st, m, dir)
}

func TestReaperPausesAutoPauseSandboxes(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	ap := mustCreate(t, m, CreateRequest{TimeoutS: 1, AutoPause: true})
	plain := mustCreate(t, m, CreateRequest{TimeoutS: 1})
	m.reap(ctx, time.Now().Add(2*time.Second))
	if _, err := m.Get(plain.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired sandbox without auto-pause: %v", err)
	}
	got := assertPaused(t, w, st, m, ap.ID)
	if !got.AutoPause {
		t.Fatal("auto_pause lost")
	}
	// A paused sandbox does not expire.
	m.reap(ctx, time.Now().Add(time.Hour))
	assertPaused(t, w, st, m, ap.ID)
	destroyAll(t, m, ap.ID)
	assertEmpty(t, w, st, m, dir)
}

func TestRecoverKeepsPausedAndSettlesInterrupted(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	paused := mustCreate(t, m, CreateRequest{})
	if _, err := m.Pause(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}
	// A pause interrupted after the state was saved, and one before.
	saved := mustCreate(t, m, CreateRequest{})
	unsaved := mustCreate(t, m, CreateRequest{})
	m.Close()
	for _, r := range []store.Sandbox{saved, unsaved} {
		r.State = StatePausing
		if err := st.PutSandbox(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(pauseDir(saved), 0o700); err != nil {
		t.Fatal(err)
	}
	machineOf(t, w, saved.VMMPID).Pause(ctx)
	os.WriteFile(filepath.Join(pauseDir(saved), "mem"), []byte("vcpus=1 mem=256"), 0o600)
	// The unsaved one died with its vCPUs stopped and half a state.
	unsavedVMM := machineOf(t, w, unsaved.VMMPID)
	unsavedVMM.Pause(ctx)
	os.MkdirAll(pauseDir(unsaved)+".tmp", 0o700)
	w.mu.Lock()
	w.slots = map[int]bool{} // the network reclaim's job, as in TestRecoverAdoptsSurvivorsAndMarksTheLost
	w.mu.Unlock()

	m2 := newManager(t, w, st, dir)
	if _, err := m2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	// A pause interrupted before the state was saved ends running: the
	// guest is re-adopted with its vCPUs going again.
	if got, _ := m2.Get(unsaved.ID); got.State != StateRunning {
		t.Fatalf("pause interrupted before saving: %s (%s)", got.State, got.Error)
	}
	if unsavedVMM.isPaused() {
		t.Fatal("re-adopted guest left with its vcpus stopped")
	}
	if _, err := os.Stat(pauseDir(unsaved) + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("half-saved state left: %v", err)
	}
	if res, err := m2.Exec(ctx, unsaved.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); err != nil || res.ExitCode != 7 {
		t.Fatalf("exec in the re-adopted guest: %+v %v", res, err)
	}
	assertPausedRecord := func(id string) {
		got, _ := m2.Get(id)
		if got.State != StatePaused {
			t.Fatalf("%s: state %s", id, got.State)
		}
	}
	assertPausedRecord(paused.ID)
	assertPausedRecord(saved.ID)
	for _, id := range []string{paused.ID, saved.ID} {
		if _, err := m2.Resume(ctx, id); err != nil {
			t.Fatalf("resume %s after restart: %v", id, err)
		}
	}
	for _, id := range []string{paused.ID, saved.ID, unsaved.ID} {
		if err := m2.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	assertEmpty(t, w, st, m2, dir)
}

// In the bridge network mode a guest's address is its slot's, and a restored
// machine keeps the one it was saved with: everything that restores one
// elsewhere is refused (saying why, not blaming the VMM), and nothing is
// left half done. Pause, which resumes on the same slot, works.
func TestSlotAddressedRefusesRestores(t *testing.T) {
	w, st, dir, _ := setup(t)
	cfg := DefaultConfig(dir)
	slots := &parkingSlots{fakeSlots: fakeSlots{w}, reserved: map[int]bool{}}
	m, err := NewManager(cfg, Deps{Store: st, Templates: w, Disks: w, Slots: slots, VMM: fakeDriver{w},
		Agent: func(netip.Addr, string) Agent { return fakeAgent{w: w} }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	ctx := context.Background()
	r := mustCreate(t, m, CreateRequest{})
	if _, err := m.CreateSnapshot(ctx, r.ID, "snap"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "bridge network mode") || strings.Contains(err.Error(), "driver") {
		t.Fatalf("snapshot: %v", err)
	}
	if _, err := m.Fork(ctx, r.ID, 1); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "bridge network mode") {
		t.Fatalf("fork: %v", err)
	}
	got, err := m.Get(r.ID)
	if err != nil || got.State != StateRunning {
		t.Fatalf("after refusals: %+v %v", got, err)
	}
	if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("exec after refusals: %v", err)
	}
	if w.bases[r.ID] != "/r" {
		t.Errorf("created from %q, want the template image (no template snapshot in this mode)", w.bases[r.ID])
	}
	destroyAll(t, m, r.ID)
	assertEmpty(t, w, st, m, dir)
}

// parkingSlots is fakeSlots for the bridge mode: Park keeps the address.
type parkingSlots struct {
	fakeSlots
	mu       sync.Mutex
	reserved map[int]bool
}

func (p *parkingSlots) Park(ctx context.Context, s *slot.Slot) (bool, error) {
	if err := p.fakeSlots.Return(ctx, s); err != nil {
		return false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reserved[s.Index] = true
	return true, nil
}

// Unpark takes the parked slot back, as the bridge pool's Adopt does.
func (p *parkingSlots) Unpark(_ context.Context, index int) (*slot.Slot, error) {
	p.mu.Lock()
	ok := p.reserved[index]
	delete(p.reserved, index)
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("slot %d is not parked", index)
	}
	return p.fakeSlots.Adopt(index)
}

func (p *parkingSlots) Reserve(index int) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reserved[index] = true
	return true, nil
}

func (p *parkingSlots) Movable() error {
	return errors.New("the bridge network mode gives each guest its own address, which a restored machine keeps")
}

func (p *parkingSlots) Unreserve(index int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.reserved, index)
}

func (p *parkingSlots) isReserved(index int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reserved[index]
}

// With guests addressed by their slot, a paused sandbox parks its slot and
// resumes on the same one; deleting it frees the address.
func TestSlotAddressedPauseKeepsTheSlot(t *testing.T) {
	w, st, dir, _ := setup(t)
	cfg := DefaultConfig(dir)
	slots := &parkingSlots{fakeSlots: fakeSlots{w}, reserved: map[int]bool{}}
	newM := func() *Manager {
		m, err := NewManager(cfg, Deps{Store: st, Templates: w, Disks: w, Slots: slots, VMM: fakeDriver{w},
			Agent: func(netip.Addr, string) Agent { return fakeAgent{w: w} }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		return m
	}
	m := newM()
	ctx := context.Background()
	other := mustCreate(t, m, CreateRequest{})
	r := mustCreate(t, m, CreateRequest{})
	index := r.SlotIndex
	p, err := m.Pause(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.SlotIndex != index || !slots.isReserved(index) {
		t.Fatalf("paused on slot %d (reserved %v), want slot %d kept", p.SlotIndex, slots.isReserved(index), index)
	}
	// A daemon restart holds the parked address again.
	m.Close()
	slots.Unreserve(index)
	m = newM()
	if _, err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if !slots.isReserved(index) {
		t.Fatalf("slot %d not reserved after a restart", index)
	}
	back, err := m.Resume(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if back.SlotIndex != index {
		t.Fatalf("resumed on slot %d, want %d", back.SlotIndex, index)
	}
	if _, err := m.Pause(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	destroyAll(t, m, r.ID, other.ID)
	if slots.isReserved(index) {
		t.Fatalf("slot %d still reserved after its paused sandbox was deleted", index)
	}
	assertEmpty(t, w, st, m, dir)
}
