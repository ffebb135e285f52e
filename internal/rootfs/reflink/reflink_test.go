//go:build linux

package reflink_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/reflink"
	"github.com/emberhq/ember/internal/rootfs/rootfstest"
	"github.com/emberhq/ember/internal/testutil"
)

func newBackend(testing.TB) rootfs.Backend { return reflink.New(slog.New(slog.DiscardHandler)) }

func TestConformance(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			dir := rootfstest.ReflinkDir(t, fs)
			// The suite's temporary directories, base image included,
			// must be on the mounted filesystem: a subtest makes its own.
			t.Setenv("TMPDIR", dir)
			t.Run("suite", func(t *testing.T) { rootfstest.Run(t, newBackend) })
		})
	}
}

func TestSupported(t *testing.T) {
	if err := reflink.Supported(t.TempDir()); err == nil {
		t.Skip("the temporary directory's filesystem reflinks; nothing to refuse")
	} else if !errors.Is(err, reflink.ErrUnsupported) {
		t.Fatalf("probe on a plain filesystem: %v, want ErrUnsupported", err)
	}
	testutil.RequireRoot(t)
	if err := reflink.Supported(rootfstest.ReflinkDir(t, "xfs")); err != nil {
		t.Errorf("probe on xfs with reflink=1: %v", err)
	}
}

func TestPrepareAcrossFilesystems(t *testing.T) {
	testutil.RequireRoot(t)
	dir := rootfstest.ReflinkDir(t, "xfs")
	base := filepath.Join(t.TempDir(), "base.raw") // not on the xfs
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	b := newBackend(t)
	_, err := b.Prepare(t.Context(), "sb-x", dir, base, 0)
	if !errors.Is(err, reflink.ErrUnsupported) {
		t.Errorf("prepare across filesystems: %v, want ErrUnsupported", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("prepare left %d entries in %s", len(ents), dir)
	}
}
