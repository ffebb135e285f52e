//go:build linux

package qemu

import (
	"log/slog"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// TestConformance boots the default template's guest under real QEMU,
// guest RAM in a shared file (the default).
func TestConformance(t *testing.T) {
	testutil.RequireTool(t, "qemu-system-x86_64")
	vmmtest.Run(t, newTestDriver(Config{}))
}

// TestSnapshotStreamMemory runs the snapshot cases with guest RAM saved
// inside the migration stream.
func TestSnapshotStreamMemory(t *testing.T) {
	testutil.RequireTool(t, "qemu-system-x86_64")
	vmmtest.RunSnapshot(t, newTestDriver(Config{StreamMemory: true}))
}

// newTestDriver makes drivers for cfg that log to the test's log.
func newTestDriver(cfg Config) vmmtest.New {
	return func(t testing.TB) vmm.Driver {
		d, err := New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
