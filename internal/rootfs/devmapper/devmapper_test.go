//go:build linux

package devmapper_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/devmapper"
	"github.com/emberhq/ember/internal/rootfs/loop"
	"github.com/emberhq/ember/internal/rootfs/rootfstest"
	"github.com/emberhq/ember/internal/testhost"
	"github.com/emberhq/ember/internal/testutil"
)

// requireDM skips (fails inside a test host) without device-mapper, and
// checks at the end of the test that no device or loop device it made
// is left.
func requireDM(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	testhost.Require(t, devmapper.Available())
	tmp := os.TempDir()
	t.Cleanup(func() {
		if names, err := devmapper.Names(devmapper.Prefix + "sb-"); err != nil || len(names) > 0 {
			t.Errorf("dm devices left: %v %v", names, err)
		}
		// Autoclear unbinds loop devices once their dm tables are gone.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			ns, err := loop.Bound(func(b string) bool { return strings.HasPrefix(b, tmp) })
			if err == nil && len(ns) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("loop devices left over test files: %v %v", ns, err)
				return
			}
		}
	})
}

func newBackend(t testing.TB) rootfs.Backend {
	b, err := devmapper.New(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	requireDM(t)
	rootfstest.Run(t, newBackend)
}

// TestSharedBase checks that sandboxes over one image share one read-only
// loop device and that the last disk's removal unbinds it.
func TestSharedBase(t *testing.T) {
	requireDM(t)
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{1}, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	b := newBackend(t).(*devmapper.Backend)
	ctx := t.Context()
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	for i, dir := range dirs {
		if _, err := b.Prepare(ctx, "sb-share"+string(rune('a'+i)), dir, base, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.Loops().Holders(base); n != 3 {
		t.Errorf("holders of the base's device: %d, want 3", n)
	}
	if ns, _ := loop.Bound(func(b string) bool { return b == base }); len(ns) != 1 {
		t.Errorf("loop devices over the base: %v, want one", ns)
	}
	for i, dir := range dirs {
		if err := b.Remove(ctx, "sb-share"+string(rune('a'+i)), dir); err != nil {
			t.Fatal(err)
		}
	}
	if n := b.Loops().Holders(base); n != 0 {
		t.Errorf("holders after removing every disk: %d", n)
	}
}

// TestReconcile leaves intents behind as a crash would and checks that a
// new backend settles them.
func TestReconcile(t *testing.T) {
	requireDM(t)
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{2}, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	ctx := t.Context()
	for _, tc := range []struct {
		name, op string
		kept     bool
	}{
		{"interrupted prepare", "prepare", false},
		{"interrupted attach", "attach", true},
		{"interrupted detach", "detach", true},
		{"interrupted remove", "remove", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := devmapper.New(state, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			id, dir := "sb-crash", t.TempDir()
			if _, err := b.Prepare(ctx, id, dir, base, 8<<20); err != nil {
				t.Fatal(err)
			}
			intent := `{"op":"` + tc.op + `","id":"` + id + `","dir":"` + dir + `"}`
			if err := os.WriteFile(filepath.Join(state, id+".json"), []byte(intent), 0o600); err != nil {
				t.Fatal(err)
			}
			// A new process: a fresh backend over the same state.
			again, err := devmapper.New(state, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if err := again.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			if names, _ := devmapper.Names(devmapper.Prefix + id); len(names) > 0 {
				t.Errorf("devices left after reconcile: %v", names)
			}
			if ents, _ := os.ReadDir(state); len(ents) > 0 {
				t.Errorf("intents left after reconcile: %d", len(ents))
			}
			_, err = again.Attach(ctx, id, dir)
			if tc.kept != (err == nil) {
				t.Errorf("attach after reconcile: %v, want the disk kept=%v", err, tc.kept)
			}
			if err := again.Remove(ctx, id, dir); err != nil {
				t.Error(err)
			}
			// The first backend's registry still holds the base: drop it.
			b.Loops().Release(base, id)
		})
	}
}

// TestReclaimDevices checks that startup reclaim removes the devices of
// sandboxes it does not keep, grown ones included, and nothing else.
func TestReclaimDevices(t *testing.T) {
	requireDM(t)
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{3}, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	b := newBackend(t).(*devmapper.Backend)
	ctx := t.Context()
	keepDir, goneDir := t.TempDir(), t.TempDir()
	if _, err := b.Prepare(ctx, "sb-keep", keepDir, base, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(ctx, "sb-orphan", goneDir, base, 8<<20); err != nil {
		t.Fatal(err)
	}
	res, err := b.Reclaim(ctx, reclaim.Keep{Sandboxes: map[string]bool{"sb-keep": true}})
	n := res.Removed
	if err != nil || n != 1 {
		t.Errorf("reclaim: %d, %v; want 1 sandbox's devices", n, err)
	}
	if names, _ := devmapper.Names(devmapper.Prefix + "sb-"); len(names) != 1 || names[0] != "ember-sb-keep" {
		t.Errorf("devices after reclaim: %v, want [ember-sb-keep]", names)
	}
	for id, dir := range map[string]string{"sb-keep": keepDir, "sb-orphan": goneDir} {
		if err := b.Remove(ctx, id, dir); err != nil {
			t.Error(err)
		}
	}
}
