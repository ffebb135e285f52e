//go:build linux

package qcow2

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
)

// TestOverlayHeader checks the written image with qemu-img's own reading:
// consistent (check), the size, backing file and format asked for (info).
func TestOverlayHeader(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		size, want int64
	}{
		{"one L2 table", 64 << 20, 64 << 20},
		{"unaligned size", 1<<20 + 1, 1<<20 + 512},
		{"several L1 entries", 4 << 30, 4 << 30},
		{"L1 over two clusters", 5 << 40, 5 << 40}, // 10240 entries
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "disk.qcow2")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := writeOverlay(f, base, tc.size); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if out, err := runner.Run(t.Context(), "qemu-img", "check", "-f", "qcow2", p); err != nil {
				t.Fatalf("qemu-img check: %v\n%s", err, out)
			}
			out, err := runner.Run(t.Context(), "qemu-img", "info", "--output=json", "-U", "-f", "qcow2", p)
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				VirtualSize   int64  `json:"virtual-size"`
				Backing       string `json:"backing-filename"`
				BackingFormat string `json:"backing-filename-format"`
			}
			if err := json.Unmarshal(out, &info); err != nil {
				t.Fatal(err)
			}
			if info.VirtualSize != tc.want || info.Backing != base || info.BackingFormat != "raw" {
				t.Errorf("qemu-img info: %+v, want size %d backed by %s (raw)", info, tc.want, base)
			}
		})
	}
}
