package template

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeTemplate writes a template directory by hand, as a build would publish it.
func fakeTemplate(t *testing.T, reg Registry, name string, withManifest bool) {
	t.Helper()
	dir := filepath.Join(reg.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, kernelFile), []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, rootfsFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 8192)); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil { // sparse tail
		t.Fatal(err)
	}
	f.Close()
	if withManifest {
		m := Template{Name: name, Key: "key-" + name, BuiltAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
		if err := writeManifest(dir, m); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRegistry(t *testing.T) {
	reg := Registry{Dir: t.TempDir()}
	fakeTemplate(t, reg, "base", true)
	fakeTemplate(t, reg, "alpha", true)
	fakeTemplate(t, reg, "half", false)           // no manifest: not a template
	fakeTemplate(t, reg, ".build-base-123", true) // in progress: hidden

	list, err := reg.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tp := range list {
		names = append(names, tp.Name)
	}
	if got, want := len(names), 2; got != want || names[0] != "alpha" || names[1] != "base" {
		t.Fatalf("List names = %v, want [alpha base]", names)
	}

	tests := []struct {
		name    string
		wantErr error
	}{
		{"base", nil},
		{"alpha", nil},
		{"missing", ErrNotFound},
		{"half", ErrNotFound},
		{"", ErrInvalidName},
		{"../etc", ErrInvalidName},
		{".build-base-123", ErrInvalidName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := reg.Get(tc.name)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Get(%q) error = %v, want %v", tc.name, err, tc.wantErr)
			}
			if tc.wantErr != nil {
				return
			}
			dir := filepath.Join(reg.Dir, tc.name)
			if got.Name != tc.name || got.Key != "key-"+tc.name {
				t.Errorf("Get(%q) = name %q key %q", tc.name, got.Name, got.Key)
			}
			if got.Kernel != filepath.Join(dir, kernelFile) || got.Rootfs != filepath.Join(dir, rootfsFile) {
				t.Errorf("Get(%q) paths = %q, %q", tc.name, got.Kernel, got.Rootfs)
			}
			if got.RootfsSizeBytes != 64<<20 {
				t.Errorf("RootfsSizeBytes = %d, want %d", got.RootfsSizeBytes, 64<<20)
			}
			if got.RootfsBytes <= 0 || got.RootfsBytes >= got.RootfsSizeBytes {
				t.Errorf("RootfsBytes = %d, want allocated bytes of a sparse file (0 < n < %d)", got.RootfsBytes, got.RootfsSizeBytes)
			}
			if !got.BuiltAt.Equal(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)) {
				t.Errorf("BuiltAt = %v", got.BuiltAt)
			}
		})
	}
}

func TestRegistryMissingDir(t *testing.T) {
	reg := Registry{Dir: filepath.Join(t.TempDir(), "nope")}
	list, err := reg.List()
	if err != nil || len(list) != 0 {
		t.Fatalf("List of a missing dir = %v, %v; want empty, nil", list, err)
	}
	if _, err := reg.Get("base"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get in a missing dir: %v, want ErrNotFound", err)
	}
}

func TestPublishReplaces(t *testing.T) {
	root := t.TempDir()
	dst := filepath.Join(root, "base")
	write := func(dir, content string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ name, content string }{{"first", "one"}, {"replace", "two"}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(root, "new-"+tc.name)
			write(src, tc.content)
			if err := publish(src, dst); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(dst, "f"))
			if err != nil || string(b) != tc.content {
				t.Fatalf("after publish dst holds %q, %v; want %q", b, err, tc.content)
			}
		})
	}
	// The replaced directory was swapped to the source path for removal.
	b, err := os.ReadFile(filepath.Join(root, "new-replace", "f"))
	if err != nil || string(b) != "one" {
		t.Fatalf("old directory after swap holds %q, %v; want %q", b, err, "one")
	}
}
