package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/resource"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
)

// fuzzCreate is a create request as a client may send it.
type fuzzCreate struct {
	Template, Snapshot        string
	VCPUs, MemoryMiB, DiskMiB int
	TimeoutS                  int
	Env, Metadata             map[string]string
	Internet                  bool
	Allow, Deny               []string
	AutoPause                 bool
	CPUs                      float64
	LimitMiB, Pids, IOWeight  int
	ExecTimeoutS, ForkCount   int
}

// FuzzCreateRequests makes sandboxes from whatever a create asks for: each
// is made (and destroyed) or refused with an error a client can act on
// (invalid argument, unknown template or snapshot, no capacity), and
// nothing is left held either way.
func FuzzCreateRequests(f *testing.F) {
	for _, seed := range []fuzzCreate{
		{},
		{Template: "base", VCPUs: 2, MemoryMiB: 512, TimeoutS: 60, Env: map[string]string{"A": "b"}},
		{VCPUs: -1}, {MemoryMiB: 1 << 30}, {TimeoutS: -5}, {DiskMiB: 1}, {DiskMiB: 4096},
		{Env: map[string]string{"": "x", "A=B": "y", "C\x00": "z"}},
		{Allow: []string{"10.0.0.0/8", "::/0"}, Deny: []string{"bogus"}},
		{Snapshot: "nope"}, {Template: "base", Snapshot: "x"}, {Template: "../etc"},
		{CPUs: 0.1, LimitMiB: 300, Pids: 32, IOWeight: 5}, {CPUs: 1e300}, {LimitMiB: 1},
		{ExecTimeoutS: -1, ForkCount: 1000},
	} {
		b, _ := json.Marshal(seed)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var in fuzzCreate
		if json.Unmarshal(data, &in) != nil {
			return
		}
		w := newWorld()
		dir := t.TempDir()
		st, err := store.Open(context.Background(), filepath.Join(dir, "ember.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		cfg := DefaultConfig(filepath.Join(dir, "sandboxes"))
		cfg.BootTimeout = time.Second
		cfg.Capacity = Capacity{MemoryMiB: 4096, OverheadMiB: 64, VCPUs: 8}
		cfg.Resources = ResourceDefaults{CPUPerVCPU: 1, Pids: 256, IOWeight: 100}
		m, err := NewManager(cfg, Deps{Store: st, Templates: w, Disks: w, Slots: fakeSlots{w}, VMM: fakeDriver{w},
			Agent: func(netip.Addr, string) Agent { return fakeAgent{w: w} }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		req := CreateRequest{Template: in.Template, Snapshot: in.Snapshot, VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB,
			DiskMiB: in.DiskMiB, TimeoutS: in.TimeoutS, Env: in.Env, Metadata: in.Metadata, AutoPause: in.AutoPause,
			Limits: resource.Limits{CPUs: in.CPUs, MemoryMiB: in.LimitMiB, Pids: in.Pids, IOWeight: in.IOWeight}}
		if in.Allow != nil || in.Deny != nil || in.Internet {
			pol, err := Policy(store.NetworkPolicy{Internet: in.Internet, Allow: in.Allow, Deny: in.Deny})
			if err != nil {
				if !errors.Is(err, slot.ErrInvalidPolicy) {
					t.Fatalf("policy %v: %v", in, err)
				}
				return
			}
			req.Network = &pol
		}
		ctx := context.Background()
		r, err := m.Create(ctx, req)
		if err != nil {
			for _, ok := range []error{ErrInvalid, ErrTemplateNotFound, ErrSnapshotNotFound, ErrNoCapacity} {
				if errors.Is(err, ok) {
					err = nil
				}
			}
			if err != nil {
				t.Fatalf("create %+v: %v", in, err)
			}
		} else {
			if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x", Timeout: time.Duration(in.ExecTimeoutS) * time.Second}, io.Discard, io.Discard); err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("exec: %v", err)
			}
			if _, err := m.Fork(ctx, r.ID, in.ForkCount); err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNoCapacity) {
				t.Fatalf("fork %d: %v", in.ForkCount, err)
			}
			for _, sb := range m.List() {
				if err := m.Destroy(ctx, sb.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		if l := w.leaks(); len(l) > 0 {
			t.Fatalf("left held after %+v: %v", in, l)
		}
		if u := m.Capacity(); u.Machines != 0 {
			t.Fatalf("capacity held after %+v: %+v", in, u)
		}
	})
}
