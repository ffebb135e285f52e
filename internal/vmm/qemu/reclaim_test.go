//go:build linux

package qemu

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/vmm"
)

func TestOptValue(t *testing.T) {
	for _, tc := range []struct {
		name, opts, key, want string
		ok                    bool
	}{
		{"middle", "memory-backend-file,id=mem,mem-path=/dev/shm/a.mem,share=on", "mem-path", "/dev/shm/a.mem", true},
		{"last", "id=mem,mem-path=/x", "mem-path", "/x", true},
		{"escaped comma", "id=mem,mem-path=/dev/shm/a,,b.mem,share=on", "mem-path", "/dev/shm/a,b.mem", true},
		{"absent", "id=mem,share=on", "mem-path", "", false},
		{"prefix of another key", "xmem-path=/x", "mem-path", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := optValue(tc.opts, tc.key)
			if got != tc.want || ok != tc.ok {
				t.Errorf("optValue(%q, %q) = %q, %v; want %q, %v", tc.opts, tc.key, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestReclaimMemory(t *testing.T) {
	memDir := t.TempDir()
	d := &Driver{memDir: memDir}
	live := d.memPath(vmm.Spec{ID: "live,one", Dir: "/d/live"})
	orphan := d.memPath(vmm.Spec{ID: "orphan", Dir: "/d/orphan"})
	other := filepath.Join(memDir, "not-ours.mem")
	for _, p := range []string{live, orphan, other} {
		if err := os.WriteFile(p, []byte("ram"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A process whose command line names live's file, as its QEMU's does.
	cmd := exec.Command("sh", "-c", "sleep 60", "memory-backend-file,id=mem,size=1M,mem-path="+optEscape(live)+",share=on")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	removed, err := d.ReclaimMemory()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{orphan}) {
		t.Errorf("removed %v, want only %s", removed, orphan)
	}
	for _, p := range []string{live, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestMemoryFileGoesWithQEMU kills QEMU behind the driver's back and
// checks that its guest RAM file is gone by the time Done closes, for the
// handle that started it and for one attached to it.
func TestMemoryFileGoesWithQEMU(t *testing.T) {
	d, spec, m := startCounterGuest(t)
	if _, err := os.Stat(m.memPath); err != nil {
		t.Fatalf("guest memory file of a running machine: %v", err)
	}
	attached, err := d.Attach(t.Context(), spec, m.PID())
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(m.PID(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, h := range []vmm.Machine{m, attached} {
		select {
		case <-h.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("Done not closed after SIGKILL")
		}
		if _, err := os.Stat(m.memPath); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("guest memory file after the process died: %v", err)
		}
	}
}
