//go:build linux

package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// nobody is the unprivileged user the confined tests run QEMU as: every
// Debian system has it, so the tests need no user of their own.
var nobody = &Confinement{UID: 65534, GID: 65534, User: "nobody", Seccomp: true, Chroot: true}

// TestConfinedConformance runs the whole suite with QEMU confined: as an
// unprivileged user, under its seccomp filter, chrooted. Everything QEMU
// opens then comes from the daemon as a descriptor; a restore's RAM file is
// given to QEMU's user.
func TestConfinedConformance(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	vmmtest.Run(t, vmmtest.Suite{New: newTestDriver(Config{Confine: nobody}), Boot: true})
}

// TestConfinedProcess checks what the kernel says of a confined QEMU: a
// non-root uid with no supplementary groups, seccomp filter mode (2),
// CAP_SYS_CHROOT as its only capability, its root the empty directory.
func TestConfinedProcess(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	d, err := New(Config{Confine: nobody}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	spec := vmmtest.CounterSpec(t, guest)
	m, err := d.Start(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Stop(context.Background()) })
	vmmtest.WaitTick(t, m, spec, 1)

	status := testutil.ProcStatus(t, m.PID())
	for key, want := range map[string]string{
		"Uid":     "65534\t65534\t65534\t65534",
		"Gid":     "65534\t65534\t65534\t65534",
		"Groups":  "",
		"Seccomp": "2",
		// CAP_SYS_CHROOT is bit 18.
		"CapEff": fmt.Sprintf("%016x", 1<<18),
		"CapPrm": fmt.Sprintf("%016x", 1<<18),
	} {
		if got := status[key]; got != want {
			t.Errorf("/proc/%d/status %s: %q, want %q", m.PID(), key, got, want)
		}
	}
	root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", m.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(spec.Dir, chrootName); root != want {
		t.Errorf("qemu's root is %s, want %s", root, want)
	}
	if ents, err := os.ReadDir(root); err != nil || len(ents) != 0 {
		t.Errorf("chroot %s holds %v (%v), want nothing", root, ents, err)
	}
	if st, err := os.Stat(root); err != nil || st.Mode().Perm()&0o222 != 0 {
		t.Errorf("chroot %s is writable: %v %v", root, st.Mode(), err)
	}
	ms := d.Measures()
	for _, x := range ms {
		if !x.On {
			t.Errorf("measure %s off: %s", x.Name, x.Detail)
		}
	}
}

// TestUnconfinedMeasures: a driver with no confinement says so, and why.
func TestUnconfinedMeasures(t *testing.T) {
	d := &Driver{}
	for _, x := range d.Measures() {
		if x.On || x.Detail == "" {
			t.Errorf("unconfined measure %+v", x)
		}
	}
}

var _ vmm.Driver = (*Driver)(nil)

// TestConfinedRefusesUnreadableKernel: a kernel QEMU's user may not read
// is refused up front, with the fix, not by QEMU after it started.
func TestConfinedRefusesUnreadableKernel(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	guest := testutil.Guest(t)
	d, err := New(Config{Confine: nobody}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	spec := vmmtest.CounterSpec(t, guest)
	b, err := os.ReadFile(spec.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	spec.Kernel = filepath.Join(spec.Dir, "vmlinux-private")
	if err := os.WriteFile(spec.Kernel, b, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := d.Start(t.Context(), spec)
	if err == nil {
		m.Stop(context.Background())
		t.Fatal("a confined qemu started with a kernel its user cannot read")
	}
	if !strings.Contains(err.Error(), "not readable by nobody") {
		t.Fatalf("error %v, want the kernel's mode named", err)
	}
}
