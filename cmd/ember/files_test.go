package main

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSandboxPath(t *testing.T) {
	for _, tt := range []struct {
		arg, id, path string
		remote        bool
	}{
		{"abc123:/root/x", "abc123", "/root/x", true},
		{"abc123:rel", "abc123", "rel", true},
		{"./local:file", "", "", false},
		{"/abs/path", "", "", false},
		{"dir.d:x", "", "", false},
		{":nothing", "", "", false},
		{"-", "", "", false},
	} {
		t.Run(tt.arg, func(t *testing.T) {
			id, p, ok := sandboxPath(tt.arg)
			if id != tt.id || p != tt.path || ok != tt.remote {
				t.Fatalf("= %q %q %v, want %q %q %v", id, p, ok, tt.id, tt.path, tt.remote)
			}
		})
	}
}

// TestTarRoundTrip: a tree packed by writeTar unpacks the same, under its
// prefix, links and modes included.
func TestTarRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a/b"), 0o755)
	os.WriteFile(filepath.Join(src, "a/b/f.bin"), []byte{0, 1, 2, 255}, 0o640)
	os.WriteFile(filepath.Join(src, "top.txt"), []byte("top\n"), 0o755)
	os.Symlink("top.txt", filepath.Join(src, "link"))
	var buf bytes.Buffer
	if err := writeTar(&buf, src, "tree"); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := readTar(&buf, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "tree/a/b/f.bin")); err != nil || !bytes.Equal(b, []byte{0, 1, 2, 255}) {
		t.Fatalf("f.bin: %v %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "tree/top.txt")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("top.txt: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "tree/link")); err != nil || l != "top.txt" {
		t.Fatalf("link: %q %v", l, err)
	}
}

// TestReadTarRefusesEscapes: a stream naming paths outside the target is
// refused before anything lands there.
func TestReadTarRefusesEscapes(t *testing.T) {
	for _, name := range []string{"../evil", "/etc/evil", "a/../../evil"} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
			tw.Write([]byte("x"))
			tw.Close()
			dir := t.TempDir()
			err := readTar(&buf, filepath.Join(dir, "in"))
			if err == nil || !strings.Contains(err.Error(), "outside") {
				t.Fatalf("readTar = %v, want a refusal", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
				t.Fatal("evil was written")
			}
		})
	}
}
