package accel

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/vmm/accel/acceltest"
	"golang.org/x/sys/unix"
)

func kernelFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func noArgs(string, string) []string { return nil }

// pidsGone checks that the fake QEMU and the child it started are dead:
// the probe kills QEMU's whole process group.
func pidsGone(t *testing.T, bin string) {
	t.Helper()
	for _, name := range []string{"pid", "child"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(bin), name))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		deadline := time.Now().Add(5 * time.Second)
		for running(pid) {
			if time.Now().After(deadline) {
				t.Errorf("probe left %s %d running", name, pid)
				unix.Kill(pid, unix.SIGKILL)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// running reports whether pid is alive and not a zombie waiting for
// whoever adopted it to reap it.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func TestVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		module   string // "" with noKVM: no /dev/kvm at all
		noKVM    bool
		body     string
		accel    string
		reason   []string
		probeRun bool
	}{
		{
			name: "pvm host, kernel hangs", module: "kvm_pvm", body: "sleep 600",
			accel: TCG, probeRun: true,
			reason: []string{"tcg: /dev/kvm is PVM (kvm_pvm) and kernel ", " does not boot under it", "no console output in 300ms"},
		},
		{
			name: "pvm host, qemu aborts", module: "kvm_pvm",
			body:  "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 1",
			accel: TCG, probeRun: true,
			reason: []string{"tcg: /dev/kvm is PVM (kvm_pvm)", "qemu exited (exit status 1)", "failed to set MSR 0x10a"},
		},
		{
			name: "intel host, kernel boots", module: "kvm_intel",
			body:  "echo 'Linux version 6.1'; echo 'VFS: Cannot open root device \"\" or unknown-block(0,0): error -6'; sleep 600",
			accel: KVM, probeRun: true,
			reason: []string{"kvm: kernel ", " boots under KVM (kvm_intel)"},
		},
		{
			name: "amd host, start-up stalls after output", module: "kvm_amd",
			body:  "echo 'Linux version 6.1'; sleep 600",
			accel: TCG, probeRun: true,
			reason: []string{"tcg: kernel ", "does not boot under KVM (kvm_amd)", "last output: Linux version 6.1"},
		},
		{
			name: "no kvm", noKVM: true, body: "exit 0",
			accel: TCG, probeRun: false,
			reason: []string{"tcg: no usable /dev/kvm (open /dev/kvm: "},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := acceltest.Host(t, tc.module)
			if tc.noKVM {
				os.Remove(filepath.Join(root, "dev/kvm"))
			}
			bin, runs := acceltest.QEMU(t, tc.body)
			p := &Prober{QEMU: bin, Args: noArgs, CacheDir: t.TempDir(), Timeout: 300 * time.Millisecond, Root: root}
			v, err := p.Choose(t.Context(), kernelFile(t, tc.name))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("verdict: %s", v.Reason)
			if v.Accel != tc.accel {
				t.Errorf("accel %q, want %q", v.Accel, tc.accel)
			}
			for _, want := range tc.reason {
				if !strings.Contains(v.Reason, want) {
					t.Errorf("reason %q does not say %q", v.Reason, want)
				}
			}
			if !strings.Contains(v.Reason, v.ShortKernel()) && !tc.noKVM {
				t.Errorf("reason %q does not name kernel %s", v.Reason, v.ShortKernel())
			}
			if got := acceltest.Runs(t, runs); (got == 1) != tc.probeRun || got > 1 {
				t.Errorf("probe ran %d times", got)
			}
			if tc.probeRun {
				pidsGone(t, bin)
			}
		})
	}
}

// TestVerdictReused shows a verdict is kept on disk and reused without a
// second probe: by the same Prober, by a new one (a daemon restart), and
// for a copy of the kernel at another path; a changed kernel is probed.
func TestVerdictReused(t *testing.T) {
	root := acceltest.Host(t, "kvm_pvm")
	bin, runs := acceltest.QEMU(t, "exit 1")
	cache := t.TempDir()
	newProber := func() *Prober {
		return &Prober{QEMU: bin, Args: noArgs, CacheDir: cache, Timeout: time.Second, Root: root}
	}
	kernel := kernelFile(t, "kernel one")
	p := newProber()
	first, err := p.Choose(t.Context(), kernel)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Choose(t.Context(), kernel); err != nil {
		t.Fatal(err)
	}
	again := newProber()
	v, err := again.Choose(t.Context(), kernelFile(t, "kernel one"))
	if err != nil {
		t.Fatal(err)
	}
	if v != first {
		t.Errorf("reused verdict %+v, want %+v", v, first)
	}
	if n := acceltest.Runs(t, runs); n != 1 || p.Probes() != 1 || again.Probes() != 0 {
		t.Fatalf("probes: %d runs, %d and %d by the probers; want 1, 1, 0", n, p.Probes(), again.Probes())
	}
	if _, err := again.Choose(t.Context(), kernelFile(t, "kernel two")); err != nil {
		t.Fatal(err)
	}
	if n := acceltest.Runs(t, runs); n != 2 {
		t.Errorf("another kernel: %d probe runs in all, want 2", n)
	}
	// Another host (here: another host kernel release) probes again.
	os.WriteFile(filepath.Join(root, "proc/sys/kernel/osrelease"), []byte("6.19.0-test\n"), 0o644)
	if _, err := newProber().Choose(t.Context(), kernel); err != nil {
		t.Fatal(err)
	}
	if n := acceltest.Runs(t, runs); n != 3 {
		t.Errorf("another host: %d probe runs in all, want 3", n)
	}
}

// TestProbeCutOff shows a probe whose guest hangs is cut off at its bound,
// with QEMU and everything in its process group killed.
func TestProbeCutOff(t *testing.T) {
	root := acceltest.Host(t, "kvm_pvm")
	bin, _ := acceltest.QEMU(t, "sleep 600")
	const bound = 500 * time.Millisecond
	p := &Prober{QEMU: bin, Args: noArgs, Timeout: bound, Root: root}
	begin := time.Now()
	v, err := p.Choose(t.Context(), kernelFile(t, "hangs"))
	took := time.Since(begin)
	if err != nil {
		t.Fatal(err)
	}
	if v.Accel != TCG || !strings.Contains(v.Reason, "no console output in 500ms") {
		t.Errorf("verdict %+v", v)
	}
	// The bound itself, plus room for a loaded machine; far below the
	// fake's 600 s.
	if took < bound || took > bound+5*time.Second {
		t.Errorf("probe took %s, want its %s bound", took, bound)
	}
	pidsGone(t, bin)
}

// TestProbeCancelled: a probe whose caller gives up is an error, not a
// verdict, and nothing is cached.
func TestProbeCancelled(t *testing.T) {
	root := acceltest.Host(t, "kvm_intel")
	bin, runs := acceltest.QEMU(t, "sleep 600")
	cache := t.TempDir()
	p := &Prober{QEMU: bin, Args: noArgs, CacheDir: cache, Timeout: time.Minute, Root: root}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	kernel := kernelFile(t, "k")
	if v, err := p.Choose(ctx, kernel); err == nil {
		t.Fatalf("cancelled probe gave verdict %+v", v)
	}
	pidsGone(t, bin)
	p2 := &Prober{QEMU: bin, Args: noArgs, CacheDir: cache, Timeout: 200 * time.Millisecond, Root: root}
	if _, err := p2.Choose(t.Context(), kernel); err != nil {
		t.Fatal(err)
	}
	if n := acceltest.Runs(t, runs); n != 2 {
		t.Errorf("%d probe runs, want 2 (a cancelled probe caches nothing)", n)
	}
}

func TestReadHost(t *testing.T) {
	for _, tc := range []struct {
		module, kind, describe string
	}{
		{"kvm_pvm", KindPVM, "PVM (kvm_pvm)"},
		{"kvm_intel", KindIntel, "KVM (kvm_intel)"},
		{"kvm_amd", KindAMD, "KVM (kvm_amd)"},
		{"", KindOther, "KVM"},
	} {
		h := ReadHost(acceltest.Host(t, tc.module))
		if !h.KVM || h.Kind != tc.kind || h.Describe() != tc.describe || h.Release != "6.18.0-test" {
			t.Errorf("module %q: %+v (%s)", tc.module, h, h.Describe())
		}
	}
}
