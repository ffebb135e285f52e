//go:build linux

package qcow2_test

import (
	"log/slog"
	"testing"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/qcow2"
	"github.com/emberhq/ember/internal/rootfs/rootfstest"
	"github.com/emberhq/ember/internal/testutil"
)

func newBackend(testing.TB) rootfs.Backend { return qcow2.New(slog.New(slog.DiscardHandler)) }

func TestConformance(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	rootfstest.Run(t, newBackend)
}

// BenchmarkPrepare1GiB overlays a 1 GiB base: fully written, and a quarter
// written (closer to a fresh root filesystem image).
func BenchmarkPrepare1GiB(b *testing.B) {
	b.Run("full", func(b *testing.B) { rootfstest.Benchmark(b, newBackend, 1<<30, 1) })
	b.Run("quarter", func(b *testing.B) { rootfstest.Benchmark(b, newBackend, 1<<30, 0.25) })
}
