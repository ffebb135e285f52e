package sandbox

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
)

// waitPool waits until the pool of base has ready warm sandboxes and none
// starting.
func waitPool(t *testing.T, m *Manager, ready int) WarmPool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := m.warmPool("base")
		if st.Ready == ready && st.Starting == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %+v, want %d ready", st, ready)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *world) machineCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.machines)
}

// warmSetup is setup with a pool of n warm sandboxes of base, filled;
// tune, when set, adjusts the world first.
func warmSetup(t *testing.T, n int, tune func(*world)) (*world, *store.Store, string, *Manager) {
	t.Helper()
	w, st, dir, m := setup(t)
	if tune != nil {
		tune(w)
	}
	m.RunWarm(context.Background())
	if _, err := m.SetWarm(context.Background(), "base", n); err != nil {
		t.Fatal(err)
	}
	waitPool(t, m, n)
	return w, st, dir, m
}

// emptyPool sets the pool of base to nothing and waits for it.
func emptyPool(t *testing.T, m *Manager) {
	t.Helper()
	if _, err := m.SetWarm(context.Background(), "base", 0); err != nil {
		t.Fatal(err)
	}
}

func TestWarmPoolFillsAndClaims(t *testing.T) {
	w, st, dir, m := warmSetup(t, 2, nil)
	ctx := context.Background()
	if n := w.machineCount(); n != 2 {
		t.Fatalf("%d machines for a pool of 2", n)
	}
	if l := m.List(); len(l) != 0 {
		t.Fatalf("warm sandboxes listed: %+v", l)
	}
	if all := m.ListAll(); len(all) != 2 || all[0].State != StateWarm {
		t.Fatalf("ListAll: %+v", all)
	}
	warmID := m.ListAll()[0].ID
	if _, err := m.Get(warmID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of a warm sandbox: %v", err)
	}
	if _, err := m.Exec(ctx, warmID, ExecRequest{Cmd: "x"}, nil, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exec in a warm sandbox: %v", err)
	}

	pol := slot.Policy{Internet: false}
	r, err := m.Create(ctx, CreateRequest{Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"}, TimeoutS: 60, Network: &pol,
		AutoPause: true, AutoResume: true, PrivateTraffic: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.TimingsMS["claim"]; !ok || r.State != StateRunning {
		t.Fatalf("create did not claim a warm sandbox: %+v", r)
	}
	if r.Env["A"] != "1" || r.Metadata["k"] != "v" || len(r.Metadata) != 1 || r.TimeoutS != 60 || r.Network.Internet ||
		!r.AutoPause || !r.AutoResume || r.TrafficToken == "" || r.Token == "" {
		t.Fatalf("claimed record lacks the create's settings: %+v", r)
	}
	if got := r.ExpiresAt.Sub(r.CreatedAt); got != time.Minute || time.Since(r.CreatedAt) > time.Second {
		t.Fatalf("claimed sandbox created %s, expires %s later", r.CreatedAt, got)
	}
	w.mu.Lock()
	applied := w.policies[r.SlotIndex]
	w.mu.Unlock()
	if applied.Internet {
		t.Errorf("claimed sandbox's slot kept the default policy")
	}
	if got, err := m.Get(r.ID); err != nil || got.State != StateRunning {
		t.Fatalf("claimed sandbox: %+v, %v", got, err)
	}
	if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x"}, &stringsBuilder{}, &stringsBuilder{}); err != nil {
		t.Fatalf("exec in the claimed sandbox: %v", err)
	}
	// The pool refills, the next claim is a sandbox of its own; a create
	// of another shape restores as before.
	waitPool(t, m, 2)
	next, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := next.TimingsMS["claim"]; !ok || next.ID == r.ID || next.Token == r.Token || next.TrafficToken != "" ||
		next.AutoResume || len(next.Metadata) != 0 || len(next.Env) != 0 {
		t.Fatalf("second claim: %+v", next)
	}
	destroyAll(t, m, next.ID)
	waitPool(t, m, 2)
	other, err := m.Create(ctx, CreateRequest{MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := other.TimingsMS["claim"]; ok {
		t.Fatalf("create of another shape claimed a warm sandbox")
	}
	if n := w.machineCount(); n != 4 {
		t.Fatalf("%d machines: want 2 warm, the claimed one and the other shape's", n)
	}
	destroyAll(t, m, r.ID, other.ID)
	emptyPool(t, m)
	assertEmpty(t, w, st, m, dir)
}

// TestWarmClaimFailureFallsBack checks that a warm sandbox whose claim
// fails is dropped and the create goes on without it (with the next warm
// one, when the pool refilled meanwhile, else a restore).
func TestWarmClaimFailureFallsBack(t *testing.T) {
	w, st, dir, m := warmSetup(t, 1, nil)
	ctx := context.Background()
	warmPID := m.ListAll()[0].VMMPID
	w.mu.Lock()
	w.failInits = 1
	w.mu.Unlock()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r.VMMPID == warmPID {
		t.Fatalf("create took the warm sandbox whose init failed: %+v", r)
	}
	w.mu.Lock()
	stopped := w.released[fmt.Sprint("stop ", warmPID)]
	w.mu.Unlock()
	if stopped != 1 {
		t.Errorf("warm sandbox whose claim failed was not dropped")
	}
	destroyAll(t, m, r.ID)
	emptyPool(t, m)
	assertEmpty(t, w, st, m, dir)
}

// TestWarmPoolSurvivesRestart stops the daemon with a full pool: the next
// one re-adopts the warm sandboxes instead of restoring new ones, and
// drops one whose machine died meanwhile.
func TestWarmPoolSurvivesRestart(t *testing.T) {
	w, st, dir, m := warmSetup(t, 2, nil)
	ctx := context.Background()
	all := m.ListAll()
	m.Close()
	w.mu.Lock()
	dead := w.machines[all[1].VMMPID]
	w.mu.Unlock()
	dead.crash()
	w.mu.Lock()
	delete(w.slots, all[1].SlotIndex)
	w.mu.Unlock()

	m2 := newManager(t, w, st, dir)
	keep, err := m2.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !keep.PIDs[all[0].VMMPID] || keep.PIDs[all[1].VMMPID] {
		t.Errorf("reclaim keeps pids %v, want the survivor's %d only", keep.PIDs, all[0].VMMPID)
	}
	if st := m2.warmPool("base"); st.Ready != 1 {
		t.Fatalf("pool after restart: %+v, want the survivor", st)
	}
	if recs := m2.ListAll(); len(recs) != 1 || recs[0].ID != all[0].ID {
		t.Fatalf("records after restart: %+v", recs)
	}
	r, err := m2.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != all[0].ID {
		t.Fatalf("create after restart did not claim the re-adopted warm sandbox")
	}
	destroyAll(t, m2, r.ID)
	assertEmpty(t, w, st, m2, dir)
}

// TestWarmSandboxGivesWayToClients fills a pool up to the host's last slot:
// a client's create that needs a slot drops a warm sandbox for it.
func TestWarmSandboxGivesWayToClients(t *testing.T) {
	w, st, dir, m := warmSetup(t, 2, func(w *world) { w.maxSlots = 2 })
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{MemoryMiB: 512})
	if err != nil {
		t.Fatalf("create with every slot warm: %v", err)
	}
	if all := m.ListAll(); len(all) != 2 {
		t.Fatalf("records: %+v, want the client's and one warm", all)
	}
	destroyAll(t, m, r.ID)
	emptyPool(t, m)
	assertEmpty(t, w, st, m, dir)
}

// TestWarmMachineDies checks that a warm sandbox whose machine dies is
// dropped without a trace for clients, and the pool refills.
func TestWarmMachineDies(t *testing.T) {
	w, st, dir, m := warmSetup(t, 1, nil)
	first := m.ListAll()[0]
	w.mu.Lock()
	mach := w.machines[first.VMMPID]
	w.mu.Unlock()
	mach.crash()
	deadline := time.Now().Add(5 * time.Second)
	for {
		all := m.ListAll()
		if len(all) == 1 && all[0].ID != first.ID && all[0].State == StateWarm {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("records after a warm machine died: %+v", all)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if l := m.List(); len(l) != 0 {
		t.Fatalf("listed: %+v", l)
	}
	emptyPool(t, m)
	assertEmpty(t, w, st, m, dir)
}

// TestWarmPoolBacksOff checks that failing fills are retried after a
// growing delay and say why, and that a pool recovers once they succeed.
func TestWarmPoolBacksOff(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	w.failStart = true
	m.RunWarm(ctx)
	if _, err := m.SetWarm(ctx, "base", 1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var pool WarmPool
	for pool = m.warmPool("base"); pool.LastError == ""; pool = m.warmPool("base") {
		if time.Now().After(deadline) {
			t.Fatal("no failure reported")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !pool.RetryAt.After(time.Now()) || pool.Ready != 0 {
		t.Fatalf("pool after a failed fill: %+v", pool)
	}
	w.mu.Lock()
	w.failStart = false
	w.mu.Unlock()
	// SetWarm starts over without waiting for the backoff.
	if _, err := m.SetWarm(ctx, "base", 1); err != nil {
		t.Fatal(err)
	}
	if p := waitPool(t, m, 1); p.LastError != "" {
		t.Errorf("pool after a successful fill still reports %q", p.LastError)
	}
	emptyPool(t, m)
	assertEmpty(t, w, st, m, dir)
}

func TestSetWarmRefusesBadInput(t *testing.T) {
	_, _, _, m := setup(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		template string
		count    int
		want     error
	}{
		{"negative", "base", -1, ErrInvalid},
		{"too many", "base", MaxWarm + 1, ErrInvalid},
		{"unknown template", "nope", 1, ErrTemplateNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := m.SetWarm(ctx, tc.template, tc.count); !errors.Is(err, tc.want) {
				t.Errorf("SetWarm(%q, %d): %v, want %v", tc.template, tc.count, err, tc.want)
			}
		})
	}
	if pools := m.WarmPools(); len(pools) != 0 {
		t.Errorf("refused settings made pools: %+v", pools)
	}
}

// A create's look for a warm sandbox makes no pool to list, and emptying
// the pool of a template that is gone succeeds: what a client (a test
// harness tearing down) does after any create, of any template.
func TestWarmPoolsListOnlyConfigured(t *testing.T) {
	_, _, _, m := setup(t)
	ctx := context.Background()
	if _, err := m.Create(ctx, CreateRequest{Template: "nope"}); !errors.Is(err, ErrTemplateNotFound) {
		t.Fatalf("create of an unknown template: %v", err)
	}
	sb, err := m.Create(ctx, CreateRequest{Template: "base"})
	if err != nil {
		t.Fatal(err)
	}
	if pools := m.WarmPools(); len(pools) != 0 {
		t.Errorf("creates made pools: %+v", pools)
	}
	if _, err := m.SetWarm(ctx, "nope", 0); err != nil {
		t.Errorf("emptying the pool of a missing template: %v", err)
	}
	if err := m.Destroy(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
}

// Warm sandboxes commit capacity as any machine does, and give way to a
// client's create that would not fit otherwise.
func TestWarmSandboxesCountAgainstCapacity(t *testing.T) {
	w, st, dir, m := setupWith(t, func(cfg *Config, _ *Deps) {
		cfg.Capacity = Capacity{MemoryMiB: 900, OverheadMiB: 44}
	})
	ctx := context.Background()
	m.RunWarm(ctx)
	if _, err := m.SetWarm(ctx, "base", 2); err != nil {
		t.Fatal(err)
	}
	waitPool(t, m, 2)
	if u := m.Capacity(); u.MemoryMiB != 600 || u.Machines != 2 {
		t.Fatalf("two warm sandboxes commit %+v, want 600 MiB in 2 machines", u)
	}
	r, err := m.Create(ctx, CreateRequest{MemoryMiB: 512})
	if err != nil {
		t.Fatalf("create that fits only once a warm sandbox gives way: %v", err)
	}
	if all := m.ListAll(); len(all) != 2 {
		t.Fatalf("records: %+v, want the client's and one warm", all)
	}
	if u := m.Capacity(); u.MemoryMiB != 856 {
		t.Fatalf("committed %d MiB, want 556 for the client's and 300 for the warm one", u.MemoryMiB)
	}
	destroyAll(t, m, r.ID)
	emptyPool(t, m)
	assertEmpty(t, w, st, m, dir)
}
