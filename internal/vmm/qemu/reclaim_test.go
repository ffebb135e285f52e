//go:build linux

package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
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
	res, err := d.ReclaimMemory(t.Context(), reclaim.Keep{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if res != (reclaim.Result{Found: 1, Removed: 1}) {
		t.Errorf("result %+v, want only %s found and removed", res, orphan)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphaned %s not removed: %v", orphan, err)
	}
	for _, p := range []string{live, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestReclaimProcesses plays what a crashed daemon leaves: QEMUs (fake
// ones, with a real QEMU's command line) for machines under keep.Dir, one
// of which keep holds, one for a machine elsewhere, and an admin's tail of
// a console log under keep.Dir. Only the orphaned QEMUs end: by SIGTERM,
// or, one that ignores it, by SIGKILL to its process group.
func TestReclaimProcesses(t *testing.T) {
	d, base := fakeDriver(t, fakeObedient)
	d.reclaimWait = 300 * time.Millisecond
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	keep := reclaim.Keep{Dir: t.TempDir(), PIDs: map[int]bool{}}
	childPID := filepath.Join(t.TempDir(), "child.pid")
	type vm struct {
		name, mode string
		dir        string // the sandboxes directory it runs under
		kept       bool
		endedBy    syscall.Signal // 0: runs on
	}
	vms := []vm{
		{"obeys", fakeObedient, keep.Dir, false, syscall.SIGTERM},
		{"ignores", fakeStubbornGroup, keep.Dir, false, syscall.SIGKILL},
		{"kept", fakeObedient, keep.Dir, true, 0},
		{"elsewhere", fakeObedient, t.TempDir(), false, 0},
	}
	status := make([]chan syscall.WaitStatus, len(vms))
	for i, v := range vms {
		spec := base
		spec.ID, spec.Dir = v.name, filepath.Join(v.dir, v.name)
		if err := os.Mkdir(spec.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var files vmmproc.Handed
		h := noneHanded
		if h.qmp, err = files.Listen(qmpPath(spec.Dir)); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, buildArgs(AccelTCG, 0, guestRAM{}, spec, h, nil)...)
		cmd.Env = append(os.Environ(), fakeQEMUEnv+"="+v.mode, fakeChildEnv+"="+childPID)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.ExtraFiles = files.Files()
		err := cmd.Start()
		files.Close()
		if err != nil {
			t.Fatal(err)
		}
		status[i] = make(chan syscall.WaitStatus, 1)
		go func() {
			cmd.Wait()
			status[i] <- cmd.ProcessState.Sys().(syscall.WaitStatus)
		}()
		t.Cleanup(func() { unix.Kill(-cmd.Process.Pid, unix.SIGKILL) })
		if v.kept {
			keep.PIDs[cmd.Process.Pid] = true
		}
		waitQMP(t, qmpPath(spec.Dir)) // the fake's signal handling is set
	}
	console := vmm.ConsoleLog(filepath.Join(keep.Dir, "obeys"))
	if err := os.WriteFile(console, []byte("boot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tail := exec.Command("tail", "-f", console)
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	tailEnded := make(chan error, 1)
	go func() { tailEnded <- tail.Wait() }()
	t.Cleanup(func() { tail.Process.Kill() })

	res, err := d.ReclaimProcesses(t.Context(), keep)
	if err != nil {
		t.Fatal(err)
	}
	if res != (reclaim.Result{Found: 2, Removed: 2}) {
		t.Errorf("result %+v, want 2 found, 2 removed", res)
	}
	// Reclaim has returned: whatever it signalled has had its signal.
	const grace = 200 * time.Millisecond
	for i, v := range vms {
		wait := grace
		if v.endedBy != 0 {
			wait = 5 * time.Second
		}
		select {
		case ws := <-status[i]:
			if v.endedBy == 0 {
				t.Errorf("qemu of %s ended (%v); it is no orphan", v.name, ws)
			} else if !ws.Signaled() || ws.Signal() != v.endedBy {
				t.Errorf("qemu of %s ended with %v, want %v", v.name, ws, v.endedBy)
			}
		case <-time.After(wait):
			if v.endedBy != 0 {
				t.Errorf("orphaned qemu of %s still running", v.name)
			}
		}
	}
	b, err := os.ReadFile(childPID)
	if err != nil {
		t.Fatal(err)
	}
	child, _ := strconv.Atoi(string(b))
	for deadline := time.Now().Add(5 * time.Second); alive(child); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			unix.Kill(child, unix.SIGKILL)
			t.Fatalf("child %d in the stubborn qemu's group survived", child)
		}
	}
	select {
	case err := <-tailEnded:
		t.Errorf("tail -f %s ended (%v); it is no vmm", console, err)
	case <-time.After(grace):
	}
}

// waitQMP waits until QMP answers on the socket at path.
func waitQMP(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := dialQMP(ctx, path)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no qmp on %s after 10s: %v", path, err)
		}
	}
}

// TestMemoryFileGoesWithQEMU kills QEMU behind the driver's back and
// checks that its guest RAM file is gone by the time Done closes, for the
// handle that started it and for one attached to it.
func TestMemoryFileGoesWithQEMU(t *testing.T) {
	d, spec, m := startCounterGuest(t)
	if _, err := os.Stat(m.ram.Path); err != nil {
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
		if _, err := os.Stat(m.ram.Path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("guest memory file after the process died: %v", err)
		}
	}
}
