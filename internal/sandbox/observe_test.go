package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/wire"
)

// opLog records what an Observer hears.
type opLog struct {
	mu  sync.Mutex
	ops []Op
}

func (l *opLog) Observe(op Op) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ops = append(l.ops, op)
}

// outcomes lists the operations heard as "name ok" or "name error".
func (l *opLog) outcomes() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, op := range l.ops {
		outcome := "ok"
		if op.Err != nil {
			outcome = "error"
		}
		out = append(out, op.Name+" "+outcome)
	}
	return out
}

func (l *opLog) last(name string) Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.ops) - 1; i >= 0; i-- {
		if l.ops[i].Name == name {
			return l.ops[i]
		}
	}
	return Op{}
}

// events returns the events waiting on s as "type sandbox state".
func events(s *event.Subscription) []wire.Event {
	var out []wire.Event
	for {
		select {
		case e := <-s.C:
			out = append(out, e)
		default:
			return out
		}
	}
}

func types(evs []wire.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func observed(t *testing.T) (*world, *Manager, *opLog, *event.Subscription) {
	t.Helper()
	obs := &opLog{}
	w, _, _, m := setupWith(t, func(_ *Config, d *Deps) { d.Observer = obs })
	sub := m.Events().Subscribe(event.Filter{})
	t.Cleanup(sub.Close)
	return w, m, obs, sub
}

func TestLifecycleIsObservedInOrder(t *testing.T) {
	_, m, obs, sub := observed(t)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { _, err := m.Pause(ctx, r.ID); return err },
		func() error { _, err := m.Resume(ctx, r.ID); return err },
		func() error { _, err := m.CreateSnapshot(ctx, r.ID, "snap"); return err },
		func() error { _, err := m.Fork(ctx, r.ID, 1); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	var forkID string
	for _, sb := range m.List() {
		if sb.ID != r.ID {
			forkID = sb.ID
		}
	}
	for _, id := range []string{forkID, r.ID} {
		if err := m.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	want := []string{"create ok", "pause ok", "resume ok", "snapshot ok", "restore ok", "fork ok", "destroy ok", "destroy ok"}
	if got := obs.outcomes(); !slices.Equal(got, want) {
		t.Fatalf("observer heard %v, want %v", got, want)
	}
	for _, tc := range []struct {
		op     string
		phases []string
	}{
		{OpCreate, []string{"agent", "boot", "disk", "init", "network", "setup"}},
		{OpRestore, []string{"agent", "disk", "init", "network", "restore", "setup"}},
		{OpPause, []string{"release", "save"}},
		{OpResume, []string{"agent", "disk", "network", "restore"}},
		{OpSnapshot, []string{"disk", "state"}},
		{OpFork, []string{"copies", "snapshot"}},
		{OpDestroy, []string{"release"}},
	} {
		op := obs.last(tc.op)
		var got []string
		for p := range op.Phases {
			got = append(got, p)
		}
		sort.Strings(got)
		if !slices.Equal(got, tc.phases) || op.Duration <= 0 || op.Template != "base" || op.Sandbox == "" {
			t.Errorf("%s: phases %v, want %v (op %+v)", tc.op, got, tc.phases, op)
		}
		for _, p := range got {
			if !slices.Contains(Phases[tc.op], p) {
				t.Errorf("%s: phase %s is not among its Phases %v", tc.op, p, Phases[tc.op])
			}
		}
	}

	evs := events(sub)
	wantTypes := []string{"created", "paused", "resumed", "snapshot", "created", "destroyed", "destroyed"}
	if got := types(evs); !slices.Equal(got, wantTypes) {
		t.Fatalf("events %v, want %v", got, wantTypes)
	}
	wantStates := []string{"running", "paused", "running", "running", "running", "", ""}
	for i, e := range evs {
		if e.State != wantStates[i] || e.Seq == 0 || e.Template != "base" || e.DurationMS <= 0 {
			t.Errorf("event %d: %+v, want state %q", i, e, wantStates[i])
		}
	}
	if evs[0].Sandbox != r.ID || evs[0].Op != OpCreate || evs[3].Snapshot != "snap" || evs[4].Op != OpRestore ||
		!strings.HasPrefix(evs[4].Snapshot, forkPrefix) || evs[4].Sandbox != forkID {
		t.Fatalf("events %+v", evs)
	}
}

func TestFailuresAreObserved(t *testing.T) {
	cases := []struct {
		name string
		// run makes the operation fail and returns the sandbox it concerns.
		run       func(t *testing.T, w *world, m *Manager) string
		wantOp    string
		wantState string
		wantErr   string
	}{
		{"create", func(t *testing.T, w *world, m *Manager) string {
			w.failStart = true
			if _, err := m.Create(context.Background(), CreateRequest{}); err == nil {
				t.Fatal("create succeeded")
			}
			return ""
		}, OpCreate, "", "qemu exploded"},
		{"pause rolled back", func(t *testing.T, w *world, m *Manager) string {
			r := mustCreate(t, m, CreateRequest{})
			w.failSnapshot = true
			if _, err := m.Pause(context.Background(), r.ID); err == nil {
				t.Fatal("pause succeeded")
			}
			return r.ID
		}, OpPause, StateRunning, "migration failed"},
		{"resume with its disk gone", func(t *testing.T, w *world, m *Manager) string {
			r := mustCreate(t, m, CreateRequest{})
			if _, err := m.Pause(context.Background(), r.ID); err != nil {
				t.Fatal(err)
			}
			w.mu.Lock()
			delete(w.disks, r.ID)
			w.mu.Unlock()
			if _, err := m.Resume(context.Background(), r.ID); err == nil {
				t.Fatal("resume succeeded")
			}
			return r.ID
		}, OpResume, StateError, "disk gone"},
		{"machine died", func(t *testing.T, w *world, m *Manager) string {
			r := mustCreate(t, m, CreateRequest{})
			crashAndWait(t, w, m, r)
			return r.ID
		}, opRunning, StateError, "vmm process exited unexpectedly"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, m, obs, sub := observed(t)
			id := tc.run(t, w, m)
			var failed []wire.Event
			for _, e := range events(sub) {
				if e.Type == wire.EventFailed {
					failed = append(failed, e)
				}
			}
			if len(failed) != 1 {
				t.Fatalf("failed events %+v, want one", failed)
			}
			e := failed[0]
			if e.Op != tc.wantOp || e.State != tc.wantState || !strings.Contains(e.Error, tc.wantErr) || id != "" && e.Sandbox != id {
				t.Fatalf("failed event %+v, want op %s, state %q, error with %q", e, tc.wantOp, tc.wantState, tc.wantErr)
			}
			if tc.wantOp != opRunning {
				if op := obs.last(tc.wantOp); op.Err == nil || !strings.Contains(op.Err.Error(), tc.wantErr) {
					t.Fatalf("observer heard %+v", op)
				}
			}
		})
	}
}

func TestTimeoutIsAnEvent(t *testing.T) {
	_, m, _, sub := observed(t)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{TimeoutS: 1})
	if err != nil {
		t.Fatal(err)
	}
	m.reap(ctx, time.Now().Add(2*time.Second))
	evs := events(sub)
	if got := types(evs); !slices.Equal(got, []string{"created", "timeout", "destroyed"}) || evs[1].Sandbox != r.ID {
		t.Fatalf("events %v: %+v", got, evs)
	}
}

// TestLifecycleLogLinesCarryTheSameKeys reads the JSON log of a sandbox's
// life: every line about an operation has the five keys.
func TestLifecycleLogLinesCarryTheSameKeys(t *testing.T) {
	var buf testutil.SyncBuffer
	w, _, _, m := setupWith(t, func(_ *Config, d *Deps) { d.Log = slog.New(slog.NewJSONHandler(&buf, nil)) })
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Pause(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	w.failRestore = true
	if _, err := m.Resume(ctx, r.ID); err == nil {
		t.Fatal("resume succeeded")
	}
	if err := m.Destroy(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	var ops []string
	sc := bufio.NewScanner(strings.NewReader(buf.String()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if _, ok := line["op"]; !ok {
			continue
		}
		for _, k := range []string{"sandbox", "template", "op", "duration_ms", "err"} {
			if _, ok := line[k]; !ok {
				t.Errorf("line %q has no %s", sc.Text(), k)
			}
		}
		if line["sandbox"] != r.ID || line["template"] != "base" {
			t.Errorf("line %q names another sandbox", sc.Text())
		}
		ops = append(ops, line["op"].(string)+" "+line["level"].(string))
	}
	want := []string{"create INFO", "pause INFO", "resume WARN", "destroy INFO"}
	if !slices.Equal(ops, want) {
		t.Fatalf("lifecycle lines %v, want %v\n%s", ops, want, buf.String())
	}
}
