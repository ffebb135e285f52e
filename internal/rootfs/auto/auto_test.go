//go:build linux

package auto_test

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/rootfs/devmapper"
	"github.com/emberhq/ember/internal/rootfs/reflink"
	"github.com/emberhq/ember/internal/rootfs/rootfstest"
	"github.com/emberhq/ember/internal/testutil"
)

var discard = slog.New(slog.DiscardHandler)

func TestSelectByName(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	dir := t.TempDir()
	for _, tc := range []struct {
		preferred, want string
		err             bool
	}{
		{"copy", "copy", false},
		{"qcow2", "qcow2", false},
		{"zfs", "", true},
	} {
		t.Run(tc.preferred, func(t *testing.T) {
			b, reason, err := auto.Select(dir, tc.preferred, nil, discard)
			if tc.err {
				if !errors.Is(err, auto.ErrUnknown) {
					t.Fatalf("select %q: %v, want ErrUnknown", tc.preferred, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.Name() != tc.want || reason != "configured" {
				t.Errorf("select %q gave %s (%q)", tc.preferred, b.Name(), reason)
			}
		})
	}
}

// TestSelectAutomatic checks the order and the reasons on this host: no
// device-mapper, and a data directory that reflinks or not.
func TestSelectAutomatic(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	dmErr := devmapper.Available()
	plain := t.TempDir()
	want := "qcow2"
	switch {
	case dmErr == nil:
		want = "devmapper"
	case reflink.Supported(plain) == nil:
		want = "reflink"
	}
	b, reason, err := auto.Select(plain, "", nil, discard)
	if err != nil {
		t.Fatal(err)
	}
	if b.Name() != want || !strings.HasPrefix(reason, "automatic: ") {
		t.Errorf("automatic selection gave %s (%q), want %s", b.Name(), reason, want)
	}
	if dmErr != nil && !strings.Contains(reason, "devmapper: "+dmErr.Error()) {
		t.Errorf("reason %q does not say why devmapper was passed over", reason)
	}
	if _, _, err := auto.Select(plain, "devmapper", nil, discard); (err == nil) != (dmErr == nil) {
		t.Errorf("select devmapper by name: %v, available: %v", err, dmErr)
	}

	if dmErr == nil {
		return
	}
	testutil.RequireRoot(t)
	b, reason, err = auto.Select(rootfstest.ReflinkDir(t, "xfs"), "", nil, discard)
	if err != nil || b.Name() != "reflink" {
		t.Errorf("automatic selection on xfs gave %v (%q), %v; want reflink", b, reason, err)
	}
}

// TestSelectForRawOnlyVMM: a VMM that opens raw disks only (Firecracker)
// passes qcow2 over, saying why, and refuses it when asked for by name.
func TestSelectForRawOnlyVMM(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	plain := t.TempDir()
	raw := []string{"raw"}
	b, reason, err := auto.Select(plain, "", raw, discard)
	if err != nil {
		t.Fatal(err)
	}
	if auto.Format(b.Name()) != "raw" {
		t.Fatalf("chose %s for a raw-only vmm", b.Name())
	}
	if devmapper.Available() != nil && reflink.Supported(plain) != nil &&
		!strings.Contains(reason, "qcow2: its disks are qcow2 and the vmm opens raw only") {
		t.Errorf("reason %q does not say why qcow2 was passed over", reason)
	}
	if _, _, err := auto.Select(plain, "qcow2", raw, discard); err == nil || !strings.Contains(err.Error(), "opens raw only") {
		t.Errorf("qcow2 by name for a raw-only vmm: %v", err)
	}
}
