package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// GuestImage is a built guest kernel and root filesystem image for tests that
// boot real machines.
type GuestImage struct {
	Kernel string
	Rootfs string
}

// Guest returns the default template's kernel and root filesystem, found in
// the directory named by EMBER_TEST_TEMPLATE (make test builds it and sets the
// variable). It skips, or fails under EMBER_REQUIRE_ALL, when they are absent.
func Guest(t testing.TB) GuestImage {
	t.Helper()
	dir := RequireEnv(t, "EMBER_TEST_TEMPLATE", "run through `make test`, which builds the default template")
	g := GuestImage{Kernel: filepath.Join(dir, "vmlinux"), Rootfs: filepath.Join(dir, "rootfs.ext4")}
	for _, p := range []string{g.Kernel, g.Rootfs} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("EMBER_TEST_TEMPLATE=%s is incomplete: %v", dir, err)
		}
	}
	return g
}
