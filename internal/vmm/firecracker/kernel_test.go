//go:build linux

package firecracker

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// guestOptions are the kernel options a Firecracker guest relies on, each
// with the reason.
var guestOptions = []struct{ name, why string }{
	{"PVH", "Firecracker boots vmlinux through its PVH entry point"},
	{"KVM_GUEST", "kvm-clock and paravirtual features under KVM"},
	{"PARAVIRT_CLOCK", "kvm-clock: the only stable clock Firecracker gives"},
	{"VIRTIO_MMIO", "every Firecracker device is virtio-mmio"},
	{"VIRTIO_MMIO_CMDLINE_DEVICES", "Firecracker describes its devices on the kernel command line"},
	{"VIRTIO_BLK", "the root drive"},
	{"VIRTIO_NET", "the slot's network interface"},
	{"SERIAL_8250", "the serial console (console=ttyS0)"},
	{"SERIAL_8250_CONSOLE", "kernel messages on ttyS0"},
	{"SERIO_I8042", "SendCtrlAltDel reaches the guest through the i8042"},
	{"KEYBOARD_ATKBD", "the guest sees ctrl-alt-del as a key press"},
	{"EXT4_FS", "the root filesystem"},
	{"HW_RANDOM_VIRTIO", "the entropy device"},
	{"VIRTIO_BALLOON", "the balloon device"},
	{"MEMORY_BALLOON", "balloon support"},
	{"VSOCKETS", "vsock"},
	{"VIRTIO_VSOCKETS", "the vsock device"},
	{"IP_PNP", "the ip= boot argument configures eth0"},
	{"UNIX", "the agent's local sockets"},
	{"INET", "the agent listens on TCP"},
	{"CGROUPS", "containers inside the sandbox"},
	{"MEMCG", "memory limits inside the sandbox"},
	{"NAMESPACES", "containers inside the sandbox"},
	{"NET_NS", "network namespaces inside the sandbox"},
	{"PID_NS", "pid namespaces inside the sandbox"},
	{"OVERLAY_FS", "container images inside the sandbox"},
	{"SECCOMP", "sandboxed workloads filter system calls"},
	{"SECCOMP_FILTER", "seccomp-bpf"},
}

// TestGuestKernel checks that the template's kernel is what Firecracker
// needs: an uncompressed x86-64 ELF vmlinux built with every option above.
func TestGuestKernel(t *testing.T) {
	dir := os.Getenv("EMBER_TEST_TEMPLATE")
	if dir == "" {
		t.Skip("EMBER_TEST_TEMPLATE not set: no built kernel to check (make test builds the default template)")
	}
	vmlinux := filepath.Join(dir, "vmlinux")
	f, err := elf.Open(vmlinux)
	if err != nil {
		t.Fatalf("%s is not an uncompressed ELF kernel: %v", vmlinux, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("%s: class %v machine %v type %v, want a 64-bit x86-64 executable", vmlinux, f.Class, f.Machine, f.Type)
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			loads++
		}
	}
	if loads == 0 {
		t.Errorf("%s has no loadable segments", vmlinux)
	}

	config := kernelConfig(t, dir)
	b, err := os.Open(config)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	set := map[string]string{}
	sc := bufio.NewScanner(b)
	for sc.Scan() {
		if name, val, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(name, "CONFIG_") {
			set[strings.TrimPrefix(name, "CONFIG_")] = val
		}
	}
	for _, o := range guestOptions {
		if v := set[o.name]; v != "y" {
			t.Errorf("CONFIG_%s=%q in %s, want y: %s", o.name, v, config, o.why)
		}
	}
}

// kernelConfig finds the .config the template's kernel was built with: the
// kernel cache entry template.json names, two levels above the template
// directory (<cache>/test-templates/<name> and <cache>/kernel/<key>).
func kernelConfig(t testing.TB, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "template.json"))
	if err != nil {
		t.Fatalf("template manifest: %v", err)
	}
	var manifest struct {
		Inputs struct {
			Kernel string `json:"kernel"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(b, &manifest); err != nil || manifest.Inputs.Kernel == "" {
		t.Fatalf("template manifest names no kernel (%v): %s", err, b)
	}
	for _, c := range []string{
		filepath.Join(dir, "..", "..", "kernel", manifest.Inputs.Kernel, "config"),
		filepath.Join(dir, "config"),
	} {
		if _, err := os.Stat(c); err == nil {
			return c
		}
	}
	t.Fatalf("no kernel config for kernel %s near %s", manifest.Inputs.Kernel, dir)
	return ""
}
