//go:build linux

package network

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/netns"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// slotsExist reports whether every index in [first, first+n) has a namespace.
func slotsExist(first, n int) bool {
	for i := first; i < first+n; i++ {
		if !netns.IsMounted(NetnsPath(i)) {
			return false
		}
	}
	return true
}

func TestPoolPrebuildsAndClosesIdle(t *testing.T) {
	const first, size = 2300, 3
	p := testPool(t, Config{FirstIndex: first, PoolSize: size})
	waitFor(t, "the pool to fill", 10*time.Second, func() bool { return len(p.idle) == size })
	if !slotsExist(first, size) {
		t.Fatalf("pool reports %d idle slots but %d..%d do not all exist", size, first, first+size-1)
	}

	start := time.Now()
	s, err := p.Get(context.Background())
	took := time.Since(start)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if s.Index < first || s.Index >= first+size {
		t.Errorf("Get built slot %d instead of handing out a pre-built one", s.Index)
	}
	t.Logf("Get from a full pool took %v", took)
	// The filler replaces the slot handed out.
	waitFor(t, "the refill", 10*time.Second, func() bool { return len(p.idle) == size })

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i := first; i <= first+size; i++ {
		if i == s.Index {
			continue
		}
		if l := settledLeftovers(i, nil); len(l) > 0 {
			t.Errorf("Close left idle slot %d: %v", i, l)
		}
	}
	if !netns.IsMounted(s.NetnsPath) {
		t.Errorf("Close tore down slot %d, which is handed out", s.Index)
	}
	if err := p.Return(context.Background(), s); err != nil {
		t.Errorf("Return after Close: %v", err)
	}
	if l := settledLeftovers(s.Index, &s.HostAddr); len(l) > 0 {
		t.Errorf("Return after Close kept slot %d: %v", s.Index, l)
	}
}

func TestPoolReusesReturnedSlots(t *testing.T) {
	const first = 2320
	p := testPool(t, Config{FirstIndex: first, PoolSize: 1})
	waitFor(t, "the pool to fill", 10*time.Second, func() bool { return len(p.idle) == 1 })
	a, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.InUse != 2 || st.Reused != 0 || st.Reuses != 0 {
		t.Errorf("stats with two slots out: %+v", st)
	}
	if err := p.Return(context.Background(), a); err != nil {
		t.Fatalf("Return a: %v", err)
	}
	if !netns.IsMounted(a.NetnsPath) {
		t.Fatalf("Return tore down slot %d instead of keeping it for reuse", a.Index)
	}
	if st := p.Stats(); st.InUse != 1 || st.Reused != 1 {
		t.Errorf("stats with one slot returned for reuse: %+v", st)
	}
	if err := p.Return(context.Background(), a); err != nil {
		t.Errorf("second Return of an idle slot = %v, want nil", err)
	}
	if !netns.IsMounted(a.NetnsPath) {
		t.Fatalf("second Return tore down the idle slot %d", a.Index)
	}
	// The reuse queue is full: b goes.
	if err := p.Return(context.Background(), b); err != nil {
		t.Fatalf("Return b: %v", err)
	}
	if l := settledLeftovers(b.Index, &b.HostAddr); len(l) > 0 {
		t.Errorf("Return beyond the pool size kept slot %d: %v", b.Index, l)
	}
	again := getSlot(t, p)
	if again.Index != a.Index {
		t.Errorf("Get = slot %d, want the returned slot %d (reuse before new)", again.Index, a.Index)
	}
	if st := p.Stats(); st.InUse != 1 || st.Reused != 0 || st.Reuses != 1 {
		t.Errorf("stats after a reuse: %+v", st)
	}
	// The reused slot works like a new one.
	port := serveGuest(t, again)
	if _, err := exchange(netip.AddrPortFrom(again.HostAddr, uint16(port)), netip.Addr{}, 2*time.Second); err != nil {
		t.Errorf("host -> reused slot: %v", err)
	}
}

func TestPoolFillerBacksOff(t *testing.T) {
	const first = 2340
	var attempts atomic.Int32
	errInjected := errors.New("injected")
	p, err := newPool(Config{FirstIndex: first, PoolSize: 2, NoEgress: true}, testLogger(t), func(p *Pool) {
		p.backoffMin, p.backoffMax = 20*time.Millisecond, 80*time.Millisecond
		p.hook = func(step string) error {
			if step == stepNetns {
				attempts.Add(1)
				return errInjected
			}
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	time.Sleep(500 * time.Millisecond)
	// Spinning would make thousands of attempts; backing off 20, 40, 80,
	// 80... ms makes about eight.
	if n := attempts.Load(); n < 2 || n > 12 {
		t.Errorf("filler made %d attempts in 500ms, want 2..12 (backing off)", n)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if l := leftovers(first, nil); len(l) > 0 {
		t.Errorf("failed builds left: %v", l)
	}
}

func TestReclaimCrashedPool(t *testing.T) {
	const first, size = 2360, 2
	// A daemon that dies with slots idle in its pool: it never closes.
	crashed, err := NewPool(Config{FirstIndex: first, PoolSize: size, NoEgress: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pool to fill", 10*time.Second, func() bool { return len(crashed.idle) == size })
	crashed.stopFill()
	crashed.filler.Wait()
	t.Cleanup(func() {
		for i := first; i < first+size; i++ {
			remove(i, nil)
		}
	})
	// The restarted daemon keeps only its sandboxes' slots (none here).
	keep := map[int]bool{}
	for _, i := range allSlotIndexes(t) {
		if i >= first+10 {
			keep[i] = true
		}
	}
	removed, err := Reclaim(context.Background(), first, keep, testLogger(t))
	if err != nil {
		t.Fatalf("Reclaim: %v", err)
	}
	if removed != size {
		t.Errorf("Reclaim removed %d slots, want the %d idle ones", removed, size)
	}
	p := testPool(t, Config{FirstIndex: first})
	if s := getSlot(t, p); s.Index != first {
		t.Errorf("Get after Reclaim = slot %d, want %d", s.Index, first)
	}
	idx := allSlotIndexes(t)
	if slices.Contains(idx, first+1) {
		t.Errorf("slot %d survived Reclaim", first+1)
	}
}
