//go:build linux

package diskfile

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCopyPlain covers the read/write fallback used where copy_file_range
// cannot copy between the two files.
func TestCopyPlain(t *testing.T) {
	src := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB
	for _, tc := range []struct {
		name   string
		off, n int64
	}{
		{"whole", 0, int64(len(src))},
		{"unaligned middle", 4097, 1<<20 + 3},
		{"last byte", int64(len(src)) - 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sp, dp := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			if err := os.WriteFile(sp, src, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := os.Open(sp)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			d, err := os.Create(dp)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := copyPlain(int(d.Fd()), int(s.Fd()), tc.off, tc.n); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dp)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, tc.off+tc.n)
			copy(want[tc.off:], src[tc.off:tc.off+tc.n])
			if !bytes.Equal(got, want) {
				t.Errorf("copied bytes differ (len %d, want %d)", len(got), len(want))
			}
		})
	}
}
