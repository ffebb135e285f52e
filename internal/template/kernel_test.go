package template

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestKernelKey(t *testing.T) {
	base := kernelKey([]byte("CONFIG_A=y\n"), "6.1.192-2")
	tests := []struct {
		name     string
		fragment string
		version  string
		same     bool
	}{
		{"same inputs", "CONFIG_A=y\n", "6.1.192-2", true},
		{"fragment changed", "CONFIG_A=n\n", "6.1.192-2", false},
		{"fragment grew", "CONFIG_A=y\nCONFIG_B=y\n", "6.1.192-2", false},
		{"source upgraded", "CONFIG_A=y\n", "6.1.193-1", false},
	}
	hex64 := regexp.MustCompile(`^[0-9a-f]{64}$`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := kernelKey([]byte(tc.fragment), tc.version)
			if !hex64.MatchString(got) {
				t.Fatalf("key %q is not a sha256 hex digest", got)
			}
			if (got == base) != tc.same {
				t.Fatalf("key equal to base = %v, want %v", got == base, tc.same)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	names, values := parseConfig([]byte(`# comment
CONFIG_A=y
# CONFIG_B is not set
CONFIG_C="ttyS0"

CONFIG_HZ=250
CONFIG_A=m
`))
	want := map[string]string{"CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_C": `"ttyS0"`, "CONFIG_HZ": "250"}
	if strings.Join(names, ",") != "CONFIG_A,CONFIG_B,CONFIG_C,CONFIG_HZ" {
		t.Errorf("names = %v", names)
	}
	for k, v := range want {
		if values[k] != v {
			t.Errorf("%s = %q, want %q", k, values[k], v)
		}
	}
}

func TestVerifyConfig(t *testing.T) {
	const fragment = "CONFIG_PVH=y\nCONFIG_HZ_250=y\n# CONFIG_PCI is not set\n"
	tests := []struct {
		name    string
		config  string
		missing []string // option names the error must carry
	}{
		{"all present", "CONFIG_PVH=y\nCONFIG_HZ_250=y\n# CONFIG_PCI is not set\n", nil},
		{"off option absent is fine", "CONFIG_PVH=y\nCONFIG_HZ_250=y\n", nil},
		{"option dropped", "CONFIG_HZ_250=y\n", []string{"CONFIG_PVH"}},
		{"option not set", "# CONFIG_PVH is not set\nCONFIG_HZ_250=y\n", []string{"CONFIG_PVH"}},
		{"wrong value", "CONFIG_PVH=y\nCONFIG_HZ_250=m\n", []string{"CONFIG_HZ_250"}},
		{"unwanted option on", "CONFIG_PVH=y\nCONFIG_HZ_250=y\nCONFIG_PCI=y\n", []string{"CONFIG_PCI"}},
		{"everything lost", "", []string{"CONFIG_PVH", "CONFIG_HZ_250"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := verifyConfig([]byte(fragment), []byte(tc.config))
			if len(tc.missing) == 0 {
				if err != nil {
					t.Fatalf("verifyConfig: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrKernelConfig) {
				t.Fatalf("verifyConfig error = %v, want ErrKernelConfig", err)
			}
			for _, m := range tc.missing {
				if !strings.Contains(err.Error(), m+" ") {
					t.Errorf("error %q does not name %s", err, m)
				}
			}
		})
	}
}

// TestFragmentParses guards the embedded fragment against lines Kconfig
// would read but verifyConfig would not.
func TestFragmentParses(t *testing.T) {
	names, _ := parseConfig(kernelFragment)
	for _, line := range strings.Split(string(kernelFragment), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "# ") && !strings.Contains(line, "CONFIG_") {
			continue
		}
		if !strings.HasPrefix(line, "CONFIG_") && !strings.HasSuffix(line, " is not set") && !strings.HasPrefix(line, "# ") {
			t.Errorf("fragment line %q is neither an option nor a comment", line)
		}
	}
	if len(names) < 50 {
		t.Fatalf("fragment has %d options; embedded file looks truncated", len(names))
	}
}

func note(order binary.AppendByteOrder, name string, typ uint32, desc []byte) []byte {
	pad := func(b []byte) []byte { return append(b, make([]byte, (4-len(b)%4)%4)...) }
	var b []byte
	b = order.AppendUint32(b, uint32(len(name)+1))
	b = order.AppendUint32(b, uint32(len(desc)))
	b = order.AppendUint32(b, typ)
	b = append(b, pad(append([]byte(name), 0))...)
	return append(b, pad(desc)...)
}

func TestHasNote(t *testing.T) {
	le := binary.LittleEndian
	entry := []byte{0, 0x10, 0, 1}
	tests := []struct {
		name string
		data []byte
		want bool
	}{
		{"pvh note", note(le, "Xen", 18, entry), true},
		{"after other notes", append(note(le, "GNU", 3, make([]byte, 20)), note(le, "Xen", 18, entry)...), true},
		{"other xen note", note(le, "Xen", 5, []byte("linux")), false},
		{"wrong owner", note(le, "Linux", 18, entry), false},
		{"truncated", note(le, "Xen", 18, entry)[:14], false},
		{"empty", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasNote(tc.data, le, "Xen", xenElfnotePhys32Entry); got != tc.want {
				t.Fatalf("hasNote = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckKernelRejectsNonKernel(t *testing.T) {
	exe, err := os.Executable() // an ELF without a PVH note
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := filepath.Join(dir, "text")
	os.WriteFile(text, []byte("not a kernel\n"), 0o644)
	// The first bytes of a bzImage: the setup header's "HdrS" at 0x202.
	bz := make([]byte, 0x400)
	copy(bz[0x202:], "HdrS")
	bzImage := filepath.Join(dir, "bzImage")
	os.WriteFile(bzImage, bz, 0o644)
	for _, tc := range []struct {
		name, path, says string
		noPVH            bool
	}{
		{"ELF without a PVH note", exe, "no PVH entry note", true},
		{"missing file", filepath.Join(dir, "missing"), "no such file", false},
		{"not an ELF file", text, "not an ELF file", false},
		{"bzImage", bzImage, "compressed bzImage", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckKernel(tc.path)
			if !errors.Is(err, ErrInvalidKernel) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("CheckKernel = %v, want ErrInvalidKernel saying %q", err, tc.says)
			}
			if tc.noPVH && !errors.Is(err, errNoPVH) {
				t.Errorf("CheckKernel = %v, want errNoPVH", err)
			}
		})
	}
}

// builtKernelOrSkip returns the cached kernel for the current fragment and
// source, skipping when none has been built (building takes minutes).
func builtKernelOrSkip(t *testing.T) builtKernel {
	t.Helper()
	version, err := sourceVersion(context.Background())
	if err != nil {
		t.Skipf("no kernel source to key a kernel by: %v", err)
	}
	k := (&Builder{}).cached(version)
	if !k.exists() {
		t.Skipf("no built kernel at %s: build one with `ember template build` (or set EMBER_CACHE_DIR to a cache holding it)", filepath.Dir(k.path))
	}
	return k
}

// TestBuiltKernel checks the kernel in the cache has what the VMM drivers,
// the root filesystem and the agent rely on.
func TestBuiltKernel(t *testing.T) {
	k := builtKernelOrSkip(t)
	data, err := os.ReadFile(k.config)
	if err != nil {
		t.Fatal(err)
	}
	_, got := parseConfig(data)
	tests := []struct {
		option string
		want   string
		why    string
	}{
		{"CONFIG_64BIT", "y", "x86-64 guest"},
		{"CONFIG_X86_64", "y", "x86-64 guest"},
		{"CONFIG_PVH", "y", "QEMU microvm and Firecracker boot vmlinux through the PVH entry"},
		{"CONFIG_KVM_GUEST", "y", "kvm-clock and paravirt under KVM"},
		{"CONFIG_PARAVIRT", "y", "paravirt ops"},
		{"CONFIG_HYPERVISOR_GUEST", "y", "hypervisor detection"},
		{"CONFIG_SMP", "y", "more than one vCPU"},
		{"CONFIG_HZ_250", "y", "the QEMU driver computes lpj= from HZ"},
		{"CONFIG_HZ", "250", "the QEMU driver computes lpj= from HZ"},
		{"CONFIG_NO_HZ_IDLE", "y", "idle guests stay idle"},
		{"CONFIG_HIGH_RES_TIMERS", "y", "timers"},
		{"CONFIG_PRINTK", "y", "console messages"},
		{"CONFIG_TTY", "y", "console"},
		{"CONFIG_SERIAL_8250", "y", "ttyS0"},
		{"CONFIG_SERIAL_8250_CONSOLE", "y", "console=ttyS0"},
		{"CONFIG_VIRTIO", "y", "virtio devices"},
		{"CONFIG_VIRTIO_MMIO", "y", "microVM devices are virtio-mmio"},
		{"CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y", "Firecracker and microvm acpi=off describe devices on the command line"},
		{"CONFIG_VIRTIO_BLK", "y", "root disk"},
		{"CONFIG_VIRTIO_NET", "y", "eth0"},
		{"CONFIG_VIRTIO_CONSOLE", "y", "hvc console"},
		{"CONFIG_HW_RANDOM_VIRTIO", "y", "entropy from the host"},
		{"CONFIG_VIRTIO_BALLOON", "y", "memory reclaim"},
		{"CONFIG_VSOCKETS", "y", "vsock"},
		{"CONFIG_VIRTIO_VSOCKETS", "y", "Firecracker vsock"},
		{"CONFIG_EXT4_FS", "y", "root filesystem"},
		{"CONFIG_BLK_DEV", "y", "block devices"},
		{"CONFIG_DEVTMPFS", "y", "/dev"},
		{"CONFIG_DEVTMPFS_MOUNT", "y", "/dev mounted before init"},
		{"CONFIG_TMPFS", "y", "/tmp and /run"},
		{"CONFIG_PROC_FS", "y", "/proc"},
		{"CONFIG_SYSFS", "y", "/sys"},
		{"CONFIG_UNIX98_PTYS", "y", "agent PTYs"},
		{"CONFIG_NET", "y", "networking"},
		{"CONFIG_INET", "y", "TCP for the agent"},
		{"CONFIG_PACKET", "y", "raw sockets"},
		{"CONFIG_UNIX", "y", "unix sockets"},
		{"CONFIG_IP_PNP", "y", "ip= boot argument configures eth0"},
		{"CONFIG_BINFMT_ELF", "y", "run binaries"},
		{"CONFIG_BINFMT_SCRIPT", "y", "run #! scripts"},
		{"CONFIG_FUTEX", "y", "Go runtime"},
		{"CONFIG_EPOLL", "y", "Go runtime"},
		{"CONFIG_SIGNALFD", "y", "userland"},
		{"CONFIG_TIMERFD", "y", "userland"},
		{"CONFIG_EVENTFD", "y", "userland"},
		{"CONFIG_SHMEM", "y", "tmpfs backing"},
		{"CONFIG_AIO", "y", "userland"},
		{"CONFIG_FILE_LOCKING", "y", "flock"},
		{"CONFIG_POSIX_TIMERS", "y", "Go runtime"},
		{"CONFIG_MULTIUSER", "y", "commands run as user"},
		{"CONFIG_CGROUPS", "y", "cgroups"},
		{"CONFIG_MEMCG", "y", "memory controller"},
		{"CONFIG_CGROUP_SCHED", "y", "cpu controller"},
		{"CONFIG_CGROUP_PIDS", "y", "pids controller"},
		{"CONFIG_CGROUP_FREEZER", "y", "freezer controller"},
		{"CONFIG_NAMESPACES", "y", "namespaces"},
		{"CONFIG_UTS_NS", "y", "namespaces"},
		{"CONFIG_IPC_NS", "y", "namespaces"},
		{"CONFIG_PID_NS", "y", "namespaces"},
		{"CONFIG_NET_NS", "y", "namespaces"},
		{"CONFIG_USER_NS", "y", "namespaces"},
		{"CONFIG_OVERLAY_FS", "y", "container images in the guest"},
		{"CONFIG_SECCOMP", "y", "sandboxed runtimes"},
		{"CONFIG_SECCOMP_FILTER", "y", "sandboxed runtimes"},
		{"CONFIG_INOTIFY_USER", "y", "filesystem watch"},
		{"CONFIG_PCI", "n", "microVMs have no PCI"},
		{"CONFIG_ACPI", "n", "microvm runs with acpi=off"},
		{"CONFIG_MODULES", "n", "everything built in"},
	}
	for _, tc := range tests {
		t.Run(tc.option, func(t *testing.T) {
			g, ok := got[tc.option]
			if !ok {
				g = "n"
			}
			if g != tc.want {
				t.Errorf("%s = %s, want %s (%s)", tc.option, g, tc.want, tc.why)
			}
		})
	}
	if err := CheckKernel(k.path); err != nil {
		t.Fatal(err)
	}
}
