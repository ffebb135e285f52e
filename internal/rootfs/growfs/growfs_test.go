//go:build linux

package growfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/rootfs/growfs"
	"github.com/emberhq/ember/internal/rootfs/loop"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testhost"
	"github.com/emberhq/ember/internal/testutil"
)

// requireResource skips (fails inside a test host) without
// CAP_SYS_RESOURCE, which resizing a mounted ext4 needs; some container
// hosts drop it even for root.
func requireResource(t *testing.T) {
	t.Helper()
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if caps&(1<<unix.CAP_SYS_RESOURCE) == 0 {
				testhost.Require(t, errors.New("no CAP_SYS_RESOURCE in this process (ext4 online resize needs it)"))
			}
			return
		}
	}
}

// TestExt4 grows a mounted ext4 after its disk grew, as the agent does
// at start in a sandbox created with a larger disk.
func TestExt4(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "mkfs.ext4")
	requireResource(t)
	img := filepath.Join(t.TempDir(), "root.ext4")
	if _, err := runner.Run(t.Context(), "mkfs.ext4", "-q", "-F", img, "64M"); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	unmount, err := loop.Mount(img, "ext4", mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	// Same size: nothing to do.
	if from, to, err := growfs.Ext4(mnt); err != nil || from != 64<<20 || to != from {
		t.Fatalf("grow an unchanged disk: %d → %d, %v; want 64 MiB unchanged", from, to, err)
	}
	// The disk grows (the host's part), then the filesystem (the guest's).
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	ns, err := loop.Bound(func(b string) bool { return b == img })
	if err != nil || len(ns) != 1 {
		t.Fatalf("loop device over %s: %v %v", img, ns, err)
	}
	if err := loop.Refresh(ns[0]); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	from, to, err := growfs.Ext4(mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("grew %d → %d bytes in %s", from, to, time.Since(begin))
	if from != 64<<20 || to != 256<<20 {
		t.Errorf("grow: %d → %d, want 64 MiB → 256 MiB", from, to)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	if size := int64(sfs.Blocks) * int64(sfs.Bsize); size < 200<<20 {
		t.Errorf("df size after grow %d, want about 256 MiB", size)
	}
	if _, to2, err := growfs.Ext4(mnt); err != nil || to2 != to {
		t.Errorf("second grow: %d, %v; want a no-op", to2, err)
	}
}

func TestExt4LeavesOtherFilesystems(t *testing.T) {
	if from, to, err := growfs.Ext4("/proc"); err != nil || from != 0 || to != 0 {
		t.Errorf("grow /proc: %d → %d, %v; want nothing done", from, to, err)
	}
}
