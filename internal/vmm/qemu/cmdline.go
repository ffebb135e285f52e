package qemu

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/vmm"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Defaults for a spec that leaves sizes at zero.
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 256
)

// guestHZ is the timer frequency the guest kernel is built with; lpj (loops
// per jiffy) handed to a TCG guest derives from it.
const guestHZ = 250

// machineOpts is the -machine value. microvm without ACPI finds its
// virtio-mmio devices through the kernel command line QEMU appends. The
// legacy PIT, PIC and RTC stay: with the APIC timer off (noapictimer, which
// boots faster under TCG) the PIT is the guest's clock event device, and
// measured under TCG, pit=off,pic=off,rtc=off,isa-serial=on took 7–11 s to
// the guest's ready line against 1.8–2.5 s without (same busy host, with or
// without noapictimer).
const machineOpts = "microvm,acpi=off"

// Files the driver keeps in a machine's directory.
func qmpPath(dir string) string { return filepath.Join(dir, "qmp.sock") }
func pidPath(dir string) string { return filepath.Join(dir, "vmm.pid") }
func logPath(dir string) string { return filepath.Join(dir, "vmm.log") }

// nameArg is the -name value: the guest is named after its QMP socket,
// which the daemon creates and hands to QEMU as a descriptor. Attach looks
// for it in a process's command line to tell our QEMU from any other
// process.
func nameArg(dir string) string { return "guest=" + optEscape(qmpPath(dir)) }

// argAfter returns the value following the n-th occurrence (from 0) of flag
// in a command line, or "".
func argAfter(args []string, flag string, n int) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			if n == 0 {
				return args[i+1]
			}
			n--
		}
	}
	return ""
}

// accelOf returns the accelerator a QEMU command line runs under, without
// its options ("tcg" of "tcg,tb-size=64"): what a snapshot's manifest
// records and a restore compares.
func accelOf(args []string) string {
	name, _, _ := strings.Cut(argAfter(args, "-accel", 0), ",")
	return name
}

// optEscape doubles commas, QEMU's escape for a comma inside an option value.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// kernelArgs is the guest kernel command line: the driver's own part, the
// TCG timing arguments when tscKHz is set, then the spec's extra arguments.
func kernelArgs(tscKHz int64, extra string) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=1", "root=/dev/vda", "rw", "init=/sbin/init", "quiet"}
	if tscKHz > 0 {
		// Without a known TSC frequency about 30% of TCG boots hang
		// calibrating against the PIT; noapictimer spares TCG the cost of
		// emulating the local APIC timer.
		args = append(args,
			"tsc_early_khz="+strconv.FormatInt(tscKHz, 10),
			"lpj="+strconv.FormatInt(tscKHz*1000/guestHZ, 10),
			"no_timer_check", "noapictimer")
	}
	if extra = strings.TrimSpace(extra); extra != "" {
		args = append(args, extra)
	}
	return strings.Join(args, " ")
}

// withDefaults fills the sizes and disk format a spec leaves empty.
func withDefaults(spec vmm.Spec) vmm.Spec {
	if spec.VCPUs <= 0 {
		spec.VCPUs = defaultVCPUs
	}
	if spec.MemoryMiB <= 0 {
		spec.MemoryMiB = defaultMemoryMiB
	}
	if spec.DiskFormat == "" {
		spec.DiskFormat = "raw"
	}
	return spec
}

// tcgCacheMiB bounds TCG's translation cache (QEMU's tb-size), within
// the VMM overhead a sandbox's cgroup allows beyond guest RAM
// (sandbox.DefaultOverheadMiB, 192).
const tcgCacheMiB = 64

// cpuModel is the guest CPU model for an accelerator: the host's under KVM,
// a fixed baseline under TCG.
func cpuModel(accel string) string {
	if accel == AccelTCG {
		return "qemu64"
	}
	return "host"
}

// probeArgs is the command line of an accelerator probe boot (package
// accel): the machine, CPU and kernel arguments a real start uses, with no
// disk, network or QMP, the serial console on standard output, and a guest
// that stops QEMU as soon as it panics (which, with no root disk, is where
// a kernel that boots ends up).
func probeArgs(accel, kernel string) []string {
	return []string{
		"-machine", machineOpts,
		"-accel", accel,
		"-cpu", cpuModel(accel),
		"-m", "128",
		"-smp", "1",
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-kernel", kernel,
		"-append", "console=ttyS0 reboot=k panic=-1",
		"-serial", "stdio",
	}
}

// memoryBackend is the id of the guest RAM backend when RAM lives in a file.
const memoryBackend = "mem"

// guestRAM is where a machine's guest RAM lives.
type guestRAM struct {
	// Path is the file holding it; "" means anonymous RAM, saved inside
	// the migration stream.
	Path string
	// Private maps Path copy-on-write (share=off): the file is a saved
	// machine's memory, shared by every machine restored from it through
	// the host's page cache and never written; the pages a guest writes
	// become its own anonymous memory. Otherwise the file is the machine's
	// own and mapped shared (share=on), so a save leaves RAM out of the
	// stream and copies the file.
	Private bool
}

// ramObject is the -object value of a guest RAM file. merge=on marks it
// mergeable (madvise MADV_MERGEABLE), so that where the host runs KSM the
// identical pages of private guests (a kernel's, a runtime's) are merged;
// QEMU's default already is on, spelt out so nothing depends on it.
func ramObject(ram guestRAM, memMiB int) string {
	share := "on"
	if ram.Private {
		share = "off"
	}
	return "memory-backend-file,id=" + memoryBackend + ",size=" + strconv.Itoa(memMiB) + "M" +
		",mem-path=" + optEscape(ram.Path) + ",share=" + share + ",merge=on"
}

// buildArgs returns QEMU's arguments for spec. tscKHz is the host's TSC
// frequency, used only under TCG. ram says where guest RAM lives: a file
// of the machine's own mapped shared, so that a snapshot can leave RAM out
// of the migration stream and copy the file instead, or a saved memory
// file mapped privately, handed over as h.ram. h names the descriptors the
// daemon hands QEMU (kernel, disk, TAP, console, QMP socket, chroot, saved
// memory); c, when set, confines it.
func buildArgs(accel string, tscKHz int64, ram guestRAM, spec vmm.Spec, h handed, c *Confinement) []string {
	spec = withDefaults(spec)
	vcpus, mem, format := spec.VCPUs, spec.MemoryMiB, spec.DiskFormat
	cpu := cpuModel(accel)
	if accel != AccelTCG {
		tscKHz = 0
	}
	machine := machineOpts
	var objects []string
	if ram.Path != "" {
		if ram.Private && h.ram >= 0 {
			ram.Path = fdPath(h.ram)
		}
		machine += ",memory-backend=" + memoryBackend
		objects = []string{"-object", ramObject(ram, mem)}
	}
	accelOpt := accel
	if accel == AccelTCG {
		// TCG's translation cache is 1 GiB unless bounded, and a busy guest
		// (a build's apt-get) fills it: past the VMM overhead its cgroup
		// allows, the kernel kills QEMU. tcgCacheMiB fits the overhead.
		accelOpt += ",tb-size=" + strconv.Itoa(tcgCacheMiB)
	}
	args := append([]string{
		"-machine", machine,
		"-accel", accelOpt,
		"-cpu", cpu,
		"-m", strconv.Itoa(mem),
	}, objects...)
	args = append(args,
		"-smp", strconv.Itoa(vcpus),
		"-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
		"-name", nameArg(spec.Dir),
		"-kernel", fdPath(h.kernel),
	)
	if spec.Initrd != "" {
		args = append(args, "-initrd", spec.Initrd)
	}
	args = append(args,
		"-append", kernelArgs(tscKHz, spec.BootArgs),
		// cache=writeback (QEMU's default, spelled out): the host page cache
		// holds the writes, so they survive QEMU's exit however it ends,
		// and a guest flush reaches the image file, so even a qcow2
		// overlay's metadata is consistent after the guest syncs.
		// cache=unsafe would drop those flushes and a SIGKILL could then
		// lose qcow2 metadata; it booted no faster. discard=unmap lets a guest fstrim give
		// blocks back, which shows in the disk's usage.
	)
	args = append(args, addFD(h.disk, fdsetDisk)...)
	args = append(args, addFD(h.diskRO, fdsetDisk)...)
	// file.locking=off: QEMU's image locks are per open file, and with
	// the disk handed over as two descriptors (read-write and read-only)
	// a re-activation after a snapshot found the other one's locks in its
	// way ("Failed to get write lock"). One QEMU per disk is the daemon's
	// rule, which the locks enforced between QEMUs.
	drive := "id=root,if=none,file=" + fdsetPath(fdsetDisk) + ",file.locking=off,format=" + format
	if h.backing >= 0 {
		// The overlay's header names its base by a path a confined QEMU
		// cannot open; the daemon hands the base over too.
		args = append(args, addFD(h.backing, fdsetBacking)...)
		drive += ",backing.driver=raw,backing.file.filename=" + fdsetPath(fdsetBacking)
	}
	args = append(args,
		"-drive", drive+",cache=writeback,discard=unmap",
		"-device", "virtio-blk-device,drive=root",
	)
	if spec.TAP != "" {
		dev := "virtio-net-device,netdev=net0"
		if spec.MAC != "" {
			dev += ",mac=" + optEscape(spec.MAC)
		}
		args = append(args,
			"-netdev", "tap,id=net0,fd="+strconv.Itoa(h.tap)+",vhost=off",
			"-device", dev,
		)
	}
	args = append(args, "-device", "virtio-rng-device")
	args = append(args, addFD(h.console, fdsetConsole)...)
	args = append(args,
		"-chardev", "file,id=console,path="+fdsetPath(fdsetConsole),
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,fd="+strconv.Itoa(h.qmp)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	)
	if c != nil && c.Seccomp {
		args = append(args, "-sandbox", sandboxArg)
	}
	if c != nil && c.Chroot && h.root >= 0 {
		args = append(args, "-chroot", fdPath(h.root))
	}
	return args
}

// hostTSCKHz returns the host's TSC frequency in kHz: from the kernel's own
// record when it exports one, else from /proc/cpuinfo's "cpu MHz", which on
// a host with a constant TSC is the TSC's frequency.
func hostTSCKHz() (int64, error) {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		khz, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err == nil && khz > 0 {
			return khz, nil
		}
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read host tsc frequency: %w", err)
	}
	return parseCPUInfoKHz(b)
}

// parseCPUInfoKHz reads the first "cpu MHz" line of /proc/cpuinfo.
func parseCPUInfoKHz(cpuinfo []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("parse cpuinfo cpu MHz %q: invalid", strings.TrimSpace(val))
		}
		return int64(math.Round(mhz * 1000)), nil
	}
	return 0, fmt.Errorf("parse cpuinfo: no cpu MHz line")
}
