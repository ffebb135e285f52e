package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/wire"
)

func (f *fakeSandboxes) setState(id, from, to string) (store.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[id]
	if !ok {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: %w", id, sandbox.ErrNotFound)
	}
	if id == "old" {
		return store.Sandbox{}, fmt.Errorf("pause: %w", sandbox.ErrUnsupported)
	}
	if r.State != from {
		return store.Sandbox{}, &sandbox.StateConflict{ID: id, State: r.State, Want: from}
	}
	r.State = to
	if to == sandbox.StatePaused {
		r.MemoryBytes = 4096
	} else {
		r.MemoryBytes = 0
	}
	f.recs[id] = r
	return r, nil
}

func (f *fakeSandboxes) Pause(ctx context.Context, id string) (store.Sandbox, error) {
	return f.setState(id, sandbox.StateRunning, sandbox.StatePaused)
}

func (f *fakeSandboxes) Resume(ctx context.Context, id string) (store.Sandbox, error) {
	// As the manager's, a resume waits out a pause in progress.
	f.mu.Lock()
	if r, ok := f.recs[id]; ok && r.State == sandbox.StatePausing {
		r.State = sandbox.StatePaused
		f.recs[id] = r
	}
	f.mu.Unlock()
	return f.setState(id, sandbox.StatePaused, sandbox.StateRunning)
}

func (f *fakeSandboxes) SetTimeout(ctx context.Context, id string, seconds int) (store.Sandbox, error) {
	if seconds < 1 {
		return store.Sandbox{}, &sandbox.InvalidError{Field: "timeout_s", Reason: "must be at least 1"}
	}
	r, err := f.Get(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r.ExpiresAt = time.Now().Add(time.Duration(seconds) * time.Second)
	f.recs[id] = r
	return r, nil
}

func (f *fakeSandboxes) Fork(ctx context.Context, id string, count int) ([]store.Sandbox, error) {
	if count < 1 || count > 16 {
		return nil, &sandbox.InvalidError{Field: "count", Reason: "must be between 1 and 16"}
	}
	src, err := f.Get(id)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Sandbox
	for i := range count {
		r := src
		r.ID = fmt.Sprintf("%s-fork%d", id, i)
		f.recs[r.ID] = r
		out = append(out, r)
	}
	return out, nil
}

func (f *fakeSandboxes) CreateSnapshot(ctx context.Context, id, name string) (store.Snapshot, error) {
	if name == "" || strings.HasPrefix(name, ".") {
		return store.Snapshot{}, &sandbox.InvalidError{Field: "name", Reason: "bad name"}
	}
	r, err := f.Get(id)
	if err != nil {
		return store.Snapshot{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.snaps[name]; ok {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: %w", name, sandbox.ErrSnapshotExists)
	}
	sn := store.Snapshot{Name: name, Sandbox: id, Template: r.Template, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB,
		DiskMiB: r.DiskMiB, CreatedAt: time.Now(), DiskBytes: 1 << 20, MemoryBytes: 2 << 20}
	if f.snaps == nil {
		f.snaps = map[string]store.Snapshot{}
	}
	f.snaps[name] = sn
	return sn, nil
}

func (f *fakeSandboxes) GetSnapshot(ctx context.Context, name string) (store.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sn, ok := f.snaps[name]
	if !ok {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: %w", name, sandbox.ErrSnapshotNotFound)
	}
	return sn, nil
}

func (f *fakeSandboxes) ListSnapshots(ctx context.Context) ([]store.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Snapshot
	for _, sn := range f.snaps {
		out = append(out, sn)
	}
	return out, nil
}

func (f *fakeSandboxes) DeleteSnapshot(ctx context.Context, name string) error {
	if _, err := f.GetSnapshot(ctx, name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inUse[name] {
		return fmt.Errorf("snapshot %q: %w", name, sandbox.ErrSnapshotInUse)
	}
	delete(f.snaps, name)
	return nil
}

func TestPauseResumeTimeoutForkThroughClient(t *testing.T) {
	f := &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning, AutoPause: true, DiskBytes: 8192}}}
	_, c := newServer(t, f)
	ctx := context.Background()
	sb, err := c.PauseSandbox(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != "paused" || sb.MemoryBytes != 4096 || sb.DiskBytes != 8192 || !sb.AutoPause {
		t.Fatalf("paused %+v", sb)
	}
	if _, err := c.PauseSandbox(ctx, "sb1"); !client.IsCode(err, "invalid_state") || !strings.Contains(err.Error(), "sandbox sb1 is paused, not running") {
		t.Fatalf("pause twice: %v", err)
	}
	if sb, err = c.ResumeSandbox(ctx, "sb1"); err != nil || sb.State != "running" {
		t.Fatalf("resume: %+v %v", sb, err)
	}
	if _, err := c.ResumeSandbox(ctx, "sb1"); !client.IsCode(err, "invalid_state") || !strings.Contains(err.Error(), "sandbox sb1 is running, not paused") {
		t.Fatalf("resume twice: %v", err)
	}
	before := time.Now()
	if sb, err = c.SetTimeout(ctx, "sb1", 600); err != nil || sb.ExpiresAt.Before(before.Add(599*time.Second)) {
		t.Fatalf("timeout: %+v %v", sb, err)
	}
	forks, err := c.ForkSandbox(ctx, "sb1", 3)
	if err != nil || len(forks) != 3 || forks[0].ID == "sb1" {
		t.Fatalf("fork: %+v %v", forks, err)
	}
}

func TestSnapshotsThroughClient(t *testing.T) {
	f := &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning, Template: "base", VCPUs: 2, MemoryMiB: 512, DiskMiB: 1024}}}
	_, c := newServer(t, f)
	ctx := context.Background()
	sn, err := c.CreateSnapshot(ctx, "sb1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if sn.Name != "s1" || sn.Sandbox != "sb1" || sn.VCPUs != 2 || sn.MemoryMiB != 512 || sn.DiskMiB != 1024 ||
		sn.DiskBytes != 1<<20 || sn.MemoryBytes != 2<<20 || sn.CreatedAt.IsZero() {
		t.Fatalf("snapshot %+v", sn)
	}
	if list, err := c.ListSnapshots(ctx); err != nil || len(list) != 1 || list[0].Name != "s1" {
		t.Fatalf("list %+v %v", list, err)
	}
	if got, err := c.GetSnapshot(ctx, "s1"); err != nil || got.Name != "s1" {
		t.Fatalf("get %+v %v", got, err)
	}
	if _, err := c.CreateSandbox(ctx, wire.CreateSandboxRequest{Snapshot: "s1", AutoPause: true}); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	last := f.created[len(f.created)-1]
	f.mu.Unlock()
	if last.Snapshot != "s1" || !last.AutoPause {
		t.Fatalf("create request %+v", last)
	}
	if err := c.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSnapshot(ctx, "s1"); !client.IsCode(err, "snapshot_not_found") {
		t.Fatalf("after delete: %v", err)
	}
}

func TestSnapshotErrorCodes(t *testing.T) {
	f := &fakeSandboxes{
		recs: map[string]store.Sandbox{
			"sb1": {ID: "sb1", State: sandbox.StateRunning},
			"zz":  {ID: "zz", State: sandbox.StatePaused},
			"old": {ID: "old", State: sandbox.StateRunning},
		},
		snaps: map[string]store.Snapshot{"used": {Name: "used"}, "free": {Name: "free"}},
		inUse: map[string]bool{"used": true},
	}
	srv, _ := newServer(t, f)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"pause unknown", "POST", "/v1/sandboxes/nope/pause", "", 404, "sandbox_not_found"},
		{"pause paused", "POST", "/v1/sandboxes/zz/pause", "", 409, "invalid_state"},
		{"resume running", "POST", "/v1/sandboxes/sb1/resume", "", 409, "invalid_state"},
		{"resume unknown", "POST", "/v1/sandboxes/nope/resume", "", 404, "sandbox_not_found"},
		{"pause without vmm support", "POST", "/v1/sandboxes/old/pause", "", 501, "not_supported"},
		{"timeout zero", "POST", "/v1/sandboxes/sb1/timeout", `{"timeout_s":0}`, 400, "invalid_argument"},
		{"timeout no body", "POST", "/v1/sandboxes/sb1/timeout", ``, 400, "invalid_json"},
		{"timeout unknown", "POST", "/v1/sandboxes/nope/timeout", `{"timeout_s":5}`, 404, "sandbox_not_found"},
		{"fork too many", "POST", "/v1/sandboxes/sb1/fork", `{"count":100}`, 400, "invalid_argument"},
		{"fork unknown", "POST", "/v1/sandboxes/nope/fork", `{"count":1}`, 404, "sandbox_not_found"},
		{"fork bad field", "POST", "/v1/sandboxes/sb1/fork", `{"n":1}`, 400, "invalid_json"},
		{"snapshot exists", "POST", "/v1/snapshots", `{"sandbox":"sb1","name":"used"}`, 409, "snapshot_exists"},
		{"snapshot bad name", "POST", "/v1/snapshots", `{"sandbox":"sb1","name":".x"}`, 400, "invalid_argument"},
		{"snapshot no sandbox", "POST", "/v1/snapshots", `{"name":"x"}`, 400, "invalid_argument"},
		{"snapshot unknown sandbox", "POST", "/v1/snapshots", `{"sandbox":"nope","name":"x"}`, 404, "sandbox_not_found"},
		{"get unknown snapshot", "GET", "/v1/snapshots/nope", "", 404, "snapshot_not_found"},
		{"delete unknown snapshot", "DELETE", "/v1/snapshots/nope", "", 404, "snapshot_not_found"},
		{"delete snapshot in use", "DELETE", "/v1/snapshots/used", "", 409, "snapshot_in_use"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, srv, tc.method, tc.path, key, tc.body, tc.status, tc.code)
		})
	}
	// A free snapshot deletes with 204.
	req, _ := http.NewRequest("DELETE", srv.URL+"/v1/snapshots/free", nil)
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
}
