//go:build linux

package template

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDigHoles(t *testing.T) {
	const blk = holeBlock
	data := func(n int) []byte { return bytes.Repeat([]byte{0xab}, n) }
	zeros := func(n int) []byte { return make([]byte, n) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name     string
		content  []byte
		maxAlloc int64 // allocated bytes after digging, at most
	}{
		{"all zero", zeros(64 * blk), 0},
		{"data then zeros", cat(data(blk), zeros(63*blk)), blk},
		{"zeros around data", cat(zeros(10*blk), data(2*blk), zeros(500*blk), data(blk)), 3 * blk},
		{"unaligned data and a partial tail block are kept", cat(zeros(blk+100), data(10), zeros(3*blk)), 2 * blk},
		{"short tail", cat(data(blk), zeros(blk), zeros(100)), 2 * blk},
		{"larger than a read", cat(zeros(300*blk), data(blk), zeros(300*blk)), blk},
	}
	// Preallocated (unwritten) extents read as zeros but SEEK_DATA skips
	// them; they must be released too.
	t.Run("preallocated", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "img")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data(blk)); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fallocate(int(f.Fd()), 0, blk, 100*blk); err != nil {
			t.Skipf("fallocate unsupported here: %v", err)
		}
		f.Close()
		if err := digHoles(p); err != nil {
			t.Fatal(err)
		}
		if alloc, size, err := usage(p); err != nil || size != 101*blk || alloc > blk {
			t.Fatalf("size %d allocated %d (%v); want size %d allocated <= %d", size, alloc, err, 101*blk, blk)
		}
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(p, tc.content, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := digHoles(p); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.content) {
				t.Fatal("contents changed")
			}
			alloc, size, err := usage(p)
			if err != nil {
				t.Fatal(err)
			}
			if size != int64(len(tc.content)) || alloc > tc.maxAlloc {
				t.Fatalf("size %d allocated %d; want size %d allocated <= %d", size, alloc, len(tc.content), tc.maxAlloc)
			}
		})
	}
}
