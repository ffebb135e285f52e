package template

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/testutil"
)

// TestEnsureDefault builds the default template from the cached kernel (it
// skips when none is built: that takes minutes) and checks it is rebuilt
// exactly when an input changes.
func TestEnsureDefault(t *testing.T) {
	testutil.RequireTool(t, "mkfs.ext4")
	testutil.RequireTool(t, "busybox")
	k := builtKernelOrSkip(t)
	ctx := context.Background()
	reg := Registry{Dir: t.TempDir()}
	var steps []string
	b := &Builder{RootfsSize: 64 << 20, Progress: func(s string) { steps = append(steps, s) }}

	if got, err := b.Kernel(ctx); err != nil || got != k.path {
		t.Fatalf("Kernel = %q, %v; want cached %q", got, err, k.path)
	}
	stale := filepath.Join(reg.Dir, ".build-base-killed")
	if err := os.MkdirAll(filepath.Join(stale, "out"), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		agent   string
		rebuild bool
	}{
		{"first build", "agent v1", true},
		{"up to date", "agent v1", false},
		{"agent changed", "agent v2", true},
	}
	var prev Template
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			steps = nil
			start := time.Now()
			got, err := b.EnsureDefault(ctx, reg, []byte(tc.agent))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s in %s: rootfs %d bytes allocated of %d", tc.name, time.Since(start), got.RootfsBytes, got.RootfsSizeBytes)
			if rebuilt := len(steps) > 0; rebuilt != tc.rebuild {
				t.Fatalf("rebuilt = %v (steps %q), want %v", rebuilt, steps, tc.rebuild)
			}
			if tc.rebuild == (got.Key == prev.Key) {
				t.Fatalf("key %s after %s, previous %s", got.Key, tc.name, prev.Key)
			}
			if got.Name != DefaultName || got.RootfsSizeBytes != 64<<20 || got.RootfsBytes == 0 || got.KernelBytes == 0 {
				t.Fatalf("template = %+v", got)
			}
			if got.Inputs["agent_sha256"] != sha256Hex([]byte(tc.agent)) || got.Inputs["kernel"] != k.key {
				t.Fatalf("inputs = %v", got.Inputs)
			}
			if err := checkPVH(got.Kernel); err != nil {
				t.Fatal(err)
			}
			listed, err := reg.List()
			if err != nil || len(listed) != 1 || listed[0].Key != got.Key {
				t.Fatalf("List = %+v, %v; want just the new template", listed, err)
			}
			prev = got
		})
	}
	leftovers, _ := filepath.Glob(filepath.Join(reg.Dir, ".build-*"))
	if len(leftovers) != 0 {
		t.Fatalf("build directories left behind: %v", leftovers)
	}
}

func TestEnsureDefaultNeedsAgent(t *testing.T) {
	b := &Builder{CacheDir: t.TempDir()}
	_, err := b.EnsureDefault(context.Background(), Registry{Dir: t.TempDir()}, nil)
	if !errors.Is(err, ErrNoAgent) {
		t.Fatalf("EnsureDefault without agent = %v, want ErrNoAgent", err)
	}
}
