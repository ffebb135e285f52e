//go:build linux

package copy_test

import (
	"log/slog"
	"testing"

	"github.com/emberhq/ember/internal/rootfs"
	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/rootfs/rootfstest"
)

func newBackend(testing.TB) rootfs.Backend { return rootfscopy.New(slog.New(slog.DiscardHandler)) }

func TestConformance(t *testing.T) { rootfstest.Run(t, newBackend) }

// BenchmarkPrepare1GiB copies a 1 GiB base: fully written, and a quarter
// written (closer to a fresh root filesystem image).
func BenchmarkPrepare1GiB(b *testing.B) {
	b.Run("full", func(b *testing.B) { rootfstest.Benchmark(b, newBackend, 1<<30, 1) })
	b.Run("quarter", func(b *testing.B) { rootfstest.Benchmark(b, newBackend, 1<<30, 0.25) })
}
