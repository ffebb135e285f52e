//go:build linux

package qemu

import (
	"log/slog"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// TestConformance runs the whole suite under real QEMU, booting the
// default template's guest, with guest RAM in a shared file (the default)
// and with guest RAM anonymous and saved inside the migration stream.
func TestConformance(t *testing.T) {
	testutil.RequireTool(t, "qemu-system-x86_64")
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"MemoryFile", Config{}},
		{"StreamMemory", Config{StreamMemory: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmmtest.Run(t, vmmtest.Suite{New: newTestDriver(tc.cfg), Boot: true})
		})
	}
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
