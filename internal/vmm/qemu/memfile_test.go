//go:build linux

package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/emberhq/ember/internal/vmm"
)

func TestCopyMemory(t *testing.T) {
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, pageSize) }
	for _, tc := range []struct {
		name string
		// writes maps page numbers to their contents; pages not listed
		// are holes.
		writes map[int64][]byte
		size   int64
		// dataPages is how many pages the copy may allocate.
		dataPages int64
	}{
		{"empty", nil, 0, 0},
		{"all hole", nil, 64 * pageSize, 0},
		{"zero pages become holes", map[int64][]byte{0: page(0), 5: page(0)}, 16 * pageSize, 0},
		{"data between holes and zeroes", map[int64][]byte{1: page(0), 2: page(7), 3: page(0), 9: page(1), 10: page(2)}, 16 * pageSize, 3},
		{"data across a buffer boundary", map[int64][]byte{copyBuf/pageSize - 1: page(3), copyBuf / pageSize: page(4)}, 2 * copyBuf, 2},
		{"short last page", map[int64][]byte{3: []byte("tail")}, 3*pageSize + 4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			f, err := os.Create(src)
			if err != nil {
				t.Fatal(err)
			}
			for n, b := range tc.writes {
				if _, err := f.WriteAt(b, n*pageSize); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Truncate(tc.size); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if err := copyMemory(t.Context(), dst, src); err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(src)
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("copy differs from the source (%d bytes, want %d)", len(got), len(want))
			}
			st, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > tc.dataPages*pageSize {
				t.Errorf("copy allocates %d bytes, want at most %d", used, tc.dataPages*pageSize)
			}
			if err := copyMemory(t.Context(), dst, src); err == nil {
				t.Error("copy over an existing file succeeded")
			}
		})
	}
}

func TestMemPath(t *testing.T) {
	d := &Driver{memDir: "/dev/shm"}
	a := d.memPath(vmm.Spec{ID: "sb1", Dir: "/var/lib/ember/sb1"})
	b := d.memPath(vmm.Spec{ID: "sb1", Dir: "/var/lib/ember/sb1-restored"})
	if a == b {
		t.Errorf("two directories share the memory file %s", a)
	}
	if filepath.Dir(a) != "/dev/shm" || !strings.HasPrefix(filepath.Base(a), "ember-sb1-") {
		t.Errorf("memory file %s: want /dev/shm/ember-sb1-…", a)
	}
	if p := d.memPath(vmm.Spec{ID: "../x/y", Dir: "/d"}); filepath.Dir(p) != "/dev/shm" {
		t.Errorf("id with slashes escapes the memory directory: %s", p)
	}
	if p := (&Driver{}).memPath(vmm.Spec{ID: "sb1", Dir: "/d"}); p != "" {
		t.Errorf("stream memory: memory file %q, want none", p)
	}
}
