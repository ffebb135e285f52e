package sandbox

import (
	"context"
	"fmt"
	"maps"
	"os"
	"testing"
)

// releases returns what the world released since the last call.
func (w *world) releases() map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := maps.Clone(w.released)
	clear(w.released)
	return out
}

func wantReleases(t *testing.T, step string, got map[string]int, want ...string) {
	t.Helper()
	exp := map[string]int{}
	for _, w := range want {
		exp[w]++
	}
	if !maps.Equal(got, exp) {
		t.Errorf("%s released %v, want each of %v once", step, got, want)
	}
}

// TestEachPathReleasesWhatItOwns follows one sandbox through every way its
// resources end: each path releases exactly what it owns, once, in order,
// and a failure half-way keeps what lies under it for the retry.
func TestEachPathReleasesWhatItOwns(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()

	r := mustCreate(t, m, CreateRequest{})
	id, pid, slotIdx := r.ID, r.VMMPID, r.SlotIndex
	if got := w.releases(); len(got) != 0 {
		t.Fatalf("create released %v", got)
	}

	// Pause: the runtime holds go (VMM, slot, the disk's attachment); the
	// disk, directory and record stay.
	if _, err := m.Pause(ctx, id); err != nil {
		t.Fatal(err)
	}
	wantReleases(t, "pause", w.releases(), fmt.Sprint("stop ", pid), fmt.Sprint("return ", slotIdx), "detach "+id)
	if _, err := os.Stat(r.Dir); err != nil {
		t.Fatalf("pause removed the directory: %v", err)
	}

	// Resume re-acquires them; a second pause releases the new ones, once.
	res, err := m.Resume(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.releases(); len(got) != 0 {
		t.Fatalf("resume released %v", got)
	}

	// Destroy half-way: the disk will not go. The VMM and slot are released
	// once; the directory, above the disk, and the record stay.
	w.failRemove = true
	if err := m.Destroy(ctx, id); err == nil {
		t.Fatal("destroy succeeded with a busy disk")
	}
	wantReleases(t, "failed destroy", w.releases(), fmt.Sprint("stop ", res.VMMPID), fmt.Sprint("return ", res.SlotIndex), "detach "+id)
	if _, err := os.Stat(r.Dir); err != nil {
		t.Fatalf("a failed disk removal let the directory go: %v", err)
	}
	got, err := m.Get(id)
	if err != nil || got.State != StateError {
		t.Fatalf("after a failed destroy: %+v, %v", got, err)
	}

	// The retry releases only what is left.
	w.failRemove = false
	if err := m.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	wantReleases(t, "retried destroy", w.releases(), "remove "+id)
	assertEmpty(t, w, st, m, dir)

	// Fail (the VMM dies): runtime and storage go, the record stays in the
	// error state; its destroy releases the record alone.
	r = mustCreate(t, m, CreateRequest{})
	crashAndWait(t, w, m, r)
	// Stopping the dead machine is a no-op for it, still run once.
	wantReleases(t, "fail", w.releases(), fmt.Sprint("stop ", r.VMMPID), fmt.Sprint("return ", r.SlotIndex), "detach "+r.ID, "remove "+r.ID)
	if _, err := os.Stat(r.Dir); !os.IsNotExist(err) {
		t.Errorf("a failed sandbox kept its directory: %v", err)
	}
	if err := m.Destroy(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	wantReleases(t, "destroy of a failed sandbox", w.releases())
	assertEmpty(t, w, st, m, dir)

	// A create failing half-way (the agent never answers) releases what it
	// acquired, once each.
	w.failReady = true
	if _, err := m.Create(ctx, CreateRequest{}); err == nil {
		t.Fatal("create succeeded without an agent")
	}
	w.failReady = false
	got2 := w.releases()
	if len(got2) != 4 {
		t.Errorf("failed create released %v, want stop, return, detach and remove once each", got2)
	}
	for k, n := range got2 {
		if n != 1 {
			t.Errorf("failed create released %s %d times", k, n)
		}
	}
	assertEmpty(t, w, st, m, dir)
}
