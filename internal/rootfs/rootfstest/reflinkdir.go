//go:build linux

package rootfstest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/emberhq/ember/internal/rootfs/loop"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
)

// ReflinkDir mounts a fresh filesystem of type fstype ("xfs" or "btrfs",
// both made to reflink) from a sparse image through a loop device and
// returns its root; the test's cleanup unmounts it, which also unbinds the
// loop device. It needs root and the filesystem's mkfs.
func ReflinkDir(t testing.TB, fstype string) string {
	t.Helper()
	testutil.RequireRoot(t)
	var mkfs []string
	switch fstype {
	case "xfs":
		mkfs = []string{"mkfs.xfs", "-q", "-m", "reflink=1"}
	case "btrfs":
		mkfs = []string{"mkfs.btrfs", "-q"}
	default:
		t.Fatalf("no reflink filesystem %q", fstype)
	}
	testutil.RequireTool(t, mkfs[0])
	img := filepath.Join(t.TempDir(), fstype+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.Run(t.Context(), mkfs[0], append(mkfs[1:], img)...); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	unmount, err := loop.Mount(img, fstype, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	return mnt
}
