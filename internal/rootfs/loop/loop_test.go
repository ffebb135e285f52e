//go:build linux

package loop_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/rootfs/loop"
	"github.com/emberhq/ember/internal/testutil"
)

// unbound waits for loop device n to let go of its file.
func unbound(t *testing.T, n int, file string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := loop.Backing(n)
		if err != nil {
			t.Fatal(err)
		}
		if b != file {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("loop%d still bound to %s", n, file)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAttach(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name     string
		readOnly bool
	}{
		{"read-write", false},
		{"read-only", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(file, bytes.Repeat([]byte{7}, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := loop.Attach(file, tc.readOnly)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close(); loop.Clear(d.Number) })
			found, err := loop.Bound(func(b string) bool { return b == file })
			if err != nil || len(found) != 1 || found[0] != d.Number {
				t.Fatalf("bound devices over %s: %v, %v; want [%d]", file, found, err, d.Number)
			}
			again, err := loop.Open(d.Number, file)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 4096)
			f, err := os.OpenFile(d.Path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadAt(got, 4096); err != nil || got[0] != 7 {
				t.Errorf("read through %s: %v, byte %d", d.Path, err, got[0])
			}
			_, werr := f.WriteAt([]byte("written"), 0)
			f.Close()
			if tc.readOnly == (werr == nil) {
				t.Errorf("write to a %s device: %v", tc.name, werr)
			}
			// Autoclear: the device unbinds when its last holder closes it.
			d.Close()
			if b, _ := loop.Backing(d.Number); b != file {
				t.Errorf("loop%d unbound while still held", d.Number)
			}
			again.Close()
			unbound(t, d.Number, file)
			if _, err := loop.Open(d.Number, file); err == nil {
				t.Error("open of an unbound device succeeded")
			}
		})
	}
}
