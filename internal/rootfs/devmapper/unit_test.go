//go:build linux

package devmapper

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/rootfs/loop"
	"github.com/emberhq/ember/internal/testutil"
)

func TestCopySkippingZeros(t *testing.T) {
	const size = 3<<20 + 512
	src := make([]byte, size)
	for _, off := range []int{0, 4096*7 + 5, 1 << 20, size - 1} {
		src[off] = 0xee
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, src, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := copySkippingZeros(t.Context(), out, f, size); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Error("copy differs from the source")
	}
	// Four blocks hold data; the rest must stay holes.
	st, err := out.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > 64<<10 {
		t.Errorf("copy allocates %d bytes for 4 blocks of data", used)
	}
}

func TestIntentNames(t *testing.T) {
	b, err := New(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"sb-1", true},
		{"", false},
		{"../x", false},
		{".hidden", false},
	} {
		err := b.begin(intent{Op: opPrepare, ID: tc.id, Dir: "/d"})
		if (err == nil) != tc.ok {
			t.Errorf("begin for id %q: %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err == nil {
			b.done(tc.id)
		}
	}
	if ents, _ := os.ReadDir(b.state); len(ents) != 0 {
		t.Errorf("state holds %d entries after done", len(ents))
	}
}

func TestAvailableNamesTheGap(t *testing.T) {
	err := Available()
	if _, statErr := os.Stat("/dev/mapper/control"); statErr == nil {
		t.Skip("this host has device-mapper")
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Available on a host without device-mapper: %v", err)
	}
}

// TestRegistry needs only the loop driver: one device per image, shared,
// adopted by a new registry, unbound after the last release.
func TestRegistry(t *testing.T) {
	testutil.RequireRoot(t)
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	r, other := NewLoopRegistry(), NewLoopRegistry()
	a, err := r.Acquire(base, "a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Release(base, "a"); r.Release(base, "b"); other.Release(base, "c") })
	b, err := r.Acquire(base, "b")
	if err != nil {
		t.Fatal(err)
	}
	c, err := other.Acquire(base, "c") // as a restarted process would
	if err != nil {
		t.Fatal(err)
	}
	if a != b || a != c {
		t.Errorf("devices %s, %s, %s over one image, want one", a, b, c)
	}
	if _, err := r.Acquire(base, "a"); err != nil || r.Holders(base) != 2 {
		t.Errorf("second acquire by one holder: %v, holders %d, want 2", err, r.Holders(base))
	}
	if f, err := os.OpenFile(a, os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt([]byte{1}, 0)
		if cerr := f.Close(); werr == nil && cerr == nil {
			t.Errorf("%s takes writes", a)
		}
	}
	for _, h := range []string{"a", "b", "b"} {
		if err := r.Release(base, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := other.Release(base, "c"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ns, err := loop.Bound(func(b string) bool { return b == base })
		if err != nil {
			t.Fatal(err)
		}
		if len(ns) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("loop devices %v still over the image after the last release", ns)
		}
	}
}
