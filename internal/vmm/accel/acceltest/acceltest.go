// Package acceltest makes the stand-ins that tests of accelerator choices
// need, so that a test controls the verdict of an accel.Prober: a host
// root (accel.Prober.Root) whose /dev/kvm opens and whose /sys/module names
// a KVM module, and a qemu-system-x86_64 (accel.Prober.QEMU) whose probe
// boots do what the test says.
package acceltest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Host returns a host root holding dev/kvm (a plain file, which opens),
// sys/module/<module> when module is set, and a kernel release.
func Host(t testing.TB, module string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"dev", "sys/module", "proc/sys/kernel"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "dev/kvm"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if module != "" {
		if err := os.Mkdir(filepath.Join(root, "sys/module", module), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "proc/sys/kernel/osrelease"), []byte("6.18.0-test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// Shell bodies for QEMU: what a probe boot under KVM does.
const (
	// Boots prints the line a kernel that boots ends its start-up with
	// (no root disk) and waits to be killed.
	Boots = `echo 'Linux version 6.1'; echo 'VFS: Cannot open root device "" or unknown-block(0,0): error -6'; sleep 600`
	// Aborts is QEMU failing under a PVM /dev/kvm.
	Aborts = `echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 1`
)

// QEMU writes a stand-in for qemu-system-x86_64 that answers -version
// and, for a probe, appends a line to the file runs, writes its pid and a
// child's pid beside it (files pid and child in the directory of bin), and
// then runs body, a shell script.
func QEMU(t testing.TB, body string) (bin, runs string) {
	t.Helper()
	dir := t.TempDir()
	bin, runs = filepath.Join(dir, "qemu"), filepath.Join(dir, "runs")
	script := "#!/bin/sh\n" +
		"if [ \"$1\" = -version ]; then echo 'QEMU emulator version 0.0.0-fake'; exit 0; fi\n" +
		"echo run >> " + runs + "\n" +
		"echo $$ > " + dir + "/pid\n" +
		"sleep 600 & echo $! > " + dir + "/child\n" +
		body + "\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, runs
}

// Runs counts the probe boots a QEMU from QEMU has run, from its runs file.
func Runs(t testing.TB, runs string) int {
	t.Helper()
	b, err := os.ReadFile(runs)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "run\n")
}
