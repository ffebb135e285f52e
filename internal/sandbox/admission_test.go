package sandbox

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestReserveRefusesWhatWouldOvercommit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cap      Capacity
		have     [][2]int // vcpus, memory of machines admitted first
		vcpus    int
		mem      int
		resource string // "" for admitted
	}{
		{"unbounded", Capacity{}, [][2]int{{8, 4096}}, 8, 4096, ""},
		{"memory fits", Capacity{MemoryMiB: 1024, OverheadMiB: 64}, [][2]int{{1, 256}}, 1, 256, ""},
		{"memory full", Capacity{MemoryMiB: 600, OverheadMiB: 64}, [][2]int{{1, 256}}, 1, 256, "memory"},
		{"overhead counts", Capacity{MemoryMiB: 511, OverheadMiB: 1}, [][2]int{{1, 255}}, 1, 255, "memory"},
		{"vcpus full", Capacity{VCPUs: 4}, [][2]int{{2, 256}, {2, 256}}, 1, 256, "vcpus"},
		{"shm full", Capacity{ShmMiB: 512}, [][2]int{{1, 512}}, 1, 64, "shm"},
		{"shm taken by others", Capacity{ShmFree: func() (int, error) { return 100, nil }}, nil, 1, 256, "shm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAdmission(tc.cap)
			for _, h := range tc.have {
				if _, err := a.reserve(h[0], h[1]); err != nil {
					t.Fatalf("first machines: %v", err)
				}
			}
			_, err := a.reserve(tc.vcpus, tc.mem)
			var ce *CapacityError
			switch {
			case tc.resource == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.resource != "" && (!errors.As(err, &ce) || ce.Resource != tc.resource || !errors.Is(err, ErrNoCapacity)):
				t.Fatalf("err %v, want %s exhausted", err, tc.resource)
			case tc.resource != "" && ce.RetryAfter != DefaultRetryAfter:
				t.Fatalf("retry after %s", ce.RetryAfter)
			}
		})
	}
}

func TestReleaseGivesCapacityBackOnce(t *testing.T) {
	a := newAdmission(Capacity{MemoryMiB: 300})
	release, err := a.reserve(1, 256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.reserve(1, 256); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("second machine: %v", err)
	}
	release()
	release()
	if u := a.usage(); u.MemoryMiB != 0 || u.Machines != 0 {
		t.Fatalf("after release: %+v", u)
	}
	if _, err := a.reserve(1, 256); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestTurnsQueueBoundedAndTimed(t *testing.T) {
	a := newAdmission(Capacity{MaxParallel: 1, MaxQueue: 1, QueueWait: 200 * time.Millisecond})
	ctx := context.Background()
	done, err := a.turn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// One waits in the queue; the next finds it full at once.
	var wg sync.WaitGroup
	var queuedErr error
	var queued func()
	wg.Add(1)
	go func() {
		defer wg.Done()
		queued, queuedErr = a.turn(ctx)
	}()
	for a.usage().Waiting != 1 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if _, err := a.turn(ctx); !errors.Is(err, ErrNoCapacity) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("full queue: %v after %s", err, time.Since(start))
	}
	done()
	wg.Wait()
	if queuedErr != nil {
		t.Fatalf("queued create: %v", queuedErr)
	}
	// The queued one holds the turn; a new one waits out QueueWait.
	start = time.Now()
	if _, err := a.turn(ctx); !errors.Is(err, ErrNoCapacity) || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("timed out wait: %v after %s", err, time.Since(start))
	}
	queued()
	if u := a.usage(); u.Running != 0 || u.Waiting != 0 {
		t.Fatalf("after all: %+v", u)
	}
}

// The manager counts what running machines commit, gives it back when one
// pauses or goes, and refuses a create or resume that would overcommit.
func TestManagerAdmission(t *testing.T) {
	w, st, dir, _ := setup(t)
	m := newManagerWith(t, w, st, dir+"/sb2", func(cfg *Config, _ *Deps) {
		cfg.Capacity = Capacity{MemoryMiB: 600, OverheadMiB: 44}
	})
	ctx := context.Background()
	a, err := m.Create(ctx, CreateRequest{Template: "base"})
	if err != nil {
		t.Fatal(err)
	}
	if u := m.Capacity(); u.MemoryMiB != 300 || u.Machines != 1 {
		t.Fatalf("after one create: %+v", u)
	}
	if _, err := m.Create(ctx, CreateRequest{Template: "base", MemoryMiB: 512}); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("create beyond capacity: %v", err)
	}
	if _, err := m.Pause(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if u := m.Capacity(); u.MemoryMiB != 0 {
		t.Fatalf("a paused sandbox commits %d MiB", u.MemoryMiB)
	}
	b, err := m.Create(ctx, CreateRequest{Template: "base", MemoryMiB: 512})
	if err != nil {
		t.Fatalf("create into the room the pause freed: %v", err)
	}
	if _, err := m.Resume(ctx, a.ID); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("resume beyond capacity: %v", err)
	}
	if r, _ := m.Get(a.ID); r.State != StatePaused {
		t.Fatalf("refused resume left the sandbox %s", r.State)
	}
	if err := m.Destroy(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(ctx, a.ID); err != nil {
		t.Fatalf("resume once there is room: %v", err)
	}
	if err := m.Destroy(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if u := m.Capacity(); u.MemoryMiB != 0 || u.Machines != 0 {
		t.Fatalf("after destroying all: %+v", u)
	}
	if l := w.leaks(); len(l) > 0 {
		t.Fatalf("leaks: %v", l)
	}
}
