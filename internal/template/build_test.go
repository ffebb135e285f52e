package template

import (
	"bytes"
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
			if err := CheckKernel(got.Kernel); err != nil {
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

// TestBuildSuppliedKernel builds a template around a kernel the user
// supplies: it is checked first, keys the template by its content, and the
// default template's name is refused for it.
func TestBuildSuppliedKernel(t *testing.T) {
	testutil.RequireTool(t, "mkfs.ext4")
	testutil.RequireTool(t, "busybox")
	k := builtKernelOrSkip(t)
	ctx := context.Background()
	reg := Registry{Dir: t.TempDir()}
	supplied := filepath.Join(t.TempDir(), "vmlinux-custom")
	data, err := os.ReadFile(k.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(supplied, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b := &Builder{RootfsSize: 64 << 20, KernelPath: supplied}
	got, err := b.Build(ctx, reg, "custom", []byte("agent"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Inputs["kernel"] != sha256Hex(data) || got.Inputs["linux_source"] != "supplied "+supplied {
		t.Errorf("inputs %v", got.Inputs)
	}
	if copied, err := os.ReadFile(got.Kernel); err != nil || !bytes.Equal(copied, data) {
		t.Errorf("template kernel differs from the supplied one (%v)", err)
	}

	for _, tc := range []struct {
		name, template, kernel string
		want                   error
	}{
		{"not a kernel", "bad", "/etc/hostname", ErrInvalidKernel},
		{"missing kernel", "bad", filepath.Join(t.TempDir(), "nope"), ErrInvalidKernel},
		{"default name", DefaultName, supplied, ErrInvalidName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &Builder{RootfsSize: 64 << 20, KernelPath: tc.kernel}
			if _, err := b.Build(ctx, reg, tc.template, []byte("agent")); !errors.Is(err, tc.want) {
				t.Fatalf("Build = %v, want %v", err, tc.want)
			}
			if _, err := reg.Get(tc.template); !errors.Is(err, ErrNotFound) {
				t.Errorf("a refused build left template %q: %v", tc.template, err)
			}
		})
	}
	if left, _ := filepath.Glob(filepath.Join(reg.Dir, ".build-*")); len(left) != 0 {
		t.Errorf("build directories left behind: %v", left)
	}
}
