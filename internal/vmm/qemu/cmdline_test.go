package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/vmm"
)

func TestBuildArgs(t *testing.T) {
	base := vmm.Spec{
		ID: "sb1", Dir: "/run/ember/sb1", Kernel: "/t/vmlinux", RootDisk: "/run/ember/sb1/rootfs.raw",
		DiskFormat: "raw", VCPUs: 2, MemoryMiB: 512,
	}
	for _, tc := range []struct {
		name    string
		accel   string
		ram     guestRAM
		spec    func(s *vmm.Spec)
		checks  map[string]string // flag (with "#n" for its n-th use) → exact value
		has     []string          // substrings of the joined command line
		hasNot  []string
		confine bool
	}{
		{
			name:  "tcg",
			accel: AccelTCG,
			checks: map[string]string{
				"-machine": "microvm,acpi=off", "-accel": "tcg,tb-size=64", "-cpu": "qemu64", "-m": "512", "-smp": "2",
				"-kernel": "/proc/self/fd/3",
				"-append": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/sbin/init quiet " +
					"tsc_early_khz=2096000 lpj=8384000 no_timer_check noapictimer",
				"-name":      "guest=/run/ember/sb1/qmp.sock",
				"-add-fd#0":  "fd=4,set=1",
				"-add-fd#1":  "fd=5,set=1",
				"-add-fd#2":  "fd=6,set=3",
				"-drive":     "id=root,if=none,file=/dev/fdset/1,file.locking=off,format=raw,cache=writeback,discard=unmap",
				"-device#0":  "virtio-blk-device,drive=root",
				"-device#1":  "virtio-rng-device",
				"-chardev":   "file,id=console,path=/dev/fdset/3",
				"-serial":    "chardev:console",
				"-chardev#1": "socket,id=qmp,fd=7,server=on,wait=off",
				"-mon":       "chardev=qmp,mode=control",
			},
			has:    []string{"-nodefaults", "-no-user-config", "-no-reboot", "-nographic"},
			hasNot: []string{"-netdev", "-initrd", "-object", "-pidfile", "-sandbox", "-chroot"},
		},
		{
			name:    "confined",
			accel:   AccelTCG,
			confine: true,
			checks: map[string]string{
				"-sandbox": "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
				"-chroot":  "/proc/self/fd/10",
			},
			hasNot: []string{"-runas"},
		},
		{
			name:  "guest ram in a shared file",
			accel: AccelTCG,
			ram:   guestRAM{Path: "/dev/shm/ember,sb1.mem"},
			checks: map[string]string{
				"-machine": "microvm,acpi=off,memory-backend=mem", "-m": "512",
				"-object": "memory-backend-file,id=mem,size=512M,mem-path=/dev/shm/ember,,sb1.mem,share=on,merge=on",
			},
		},
		{
			name:  "guest ram mapping a saved memory file privately, handed over",
			accel: AccelTCG,
			ram:   guestRAM{Path: "/run/ember/sb1/guest-ram", Private: true},
			checks: map[string]string{
				"-machine": "microvm,acpi=off,memory-backend=mem",
				"-object":  "memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/11,share=off,merge=on",
			},
		},
		{
			name:  "kvm has no tsc arguments",
			accel: AccelKVM,
			checks: map[string]string{
				"-accel": "kvm", "-cpu": "host",
				"-append": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/sbin/init quiet",
			},
		},
		{
			name:  "network, initrd, qcow2, boot args",
			accel: AccelTCG,
			spec: func(s *vmm.Spec) {
				s.TAP, s.MAC, s.Initrd, s.DiskFormat = "tap0", "06:00:ac:10:00:02", "/t/initrd", "qcow2"
				s.RootDisk = "/run/ember/sb1/rootfs.qcow2"
				s.BootArgs = "  ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off "
			},
			checks: map[string]string{
				"-netdev":   "tap,id=net0,fd=8,vhost=off",
				"-device#1": "virtio-net-device,netdev=net0,mac=06:00:ac:10:00:02",
				"-initrd":   "/t/initrd",
				"-add-fd#2": "fd=9,set=2",
				"-drive": "id=root,if=none,file=/dev/fdset/1,file.locking=off,format=qcow2," +
					"backing.driver=raw,backing.file.filename=/dev/fdset/2,cache=writeback,discard=unmap",
			},
			has: []string{"noapictimer ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"},
		},
		{
			name:  "defaults and commas in paths",
			accel: AccelTCG,
			spec: func(s *vmm.Spec) {
				s.VCPUs, s.MemoryMiB, s.DiskFormat = 0, 0, ""
				s.Dir, s.RootDisk = "/run/a,b", "/run/a,b/disk"
			},
			checks: map[string]string{
				"-m": "256", "-smp": "1",
				"-drive": "id=root,if=none,file=/dev/fdset/1,file.locking=off,format=raw,cache=writeback,discard=unmap",
				"-name":  "guest=/run/a,,b/qmp.sock",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := base
			if tc.spec != nil {
				tc.spec(&spec)
			}
			h := handed{kernel: 3, disk: 4, diskRO: 5, backing: -1, console: 6, qmp: 7, tap: -1, root: -1}
			if spec.TAP != "" {
				h.tap = 8
			}
			if spec.DiskFormat == "qcow2" {
				h.backing = 9
			}
			if tc.ram.Private {
				h.ram = 11
			}
			var c *Confinement
			if tc.confine {
				c, h.root = &Confinement{UID: 999, GID: 999, Seccomp: true, Chroot: true}, 10
			}
			args := buildArgs(tc.accel, 2096000, tc.ram, spec, h, c)
			for flag, want := range tc.checks {
				name, n := flag, 0
				if f, idx, ok := strings.Cut(flag, "#"); ok {
					name, n = f, int(idx[0]-'0')
				}
				if got := argAfter(args, name, n); got != want {
					t.Errorf("%s = %q, want %q", flag, got, want)
				}
			}
			joined := strings.Join(args, " ")
			for _, s := range tc.has {
				if !strings.Contains(joined, s) {
					t.Errorf("command line lacks %q", s)
				}
			}
			for _, s := range tc.hasNot {
				if slices.Contains(args, s) {
					t.Errorf("command line has %q", s)
				}
			}
		})
	}
}

func TestParseCPUInfoKHz(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    int64
		wantErr bool
	}{
		{"first cpu", "processor\t: 0\ncpu MHz\t\t: 2096.002\n\nprocessor\t: 1\ncpu MHz\t\t: 1800.000\n", 2096002, false},
		{"whole", "cpu MHz : 3000\n", 3000000, false},
		{"missing", "processor\t: 0\nmodel name\t: x\n", 0, true},
		{"garbage", "cpu MHz\t\t: fast\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCPUInfoKHz([]byte(tc.in))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("got %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestKernelArgsLPJ(t *testing.T) {
	// The guest runs at HZ=250: lpj is kHz*1000/250.
	if got := kernelArgs(2096000, ""); !strings.Contains(got, " lpj=8384000 ") {
		t.Errorf("kernel args %q lack lpj=8384000", got)
	}
}

// A re-adopted QEMU's accelerator is read from its command line without
// the options, so its snapshots match the machines a restore starts.
func TestAccelOf(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"qemu", "-accel", "tcg,tb-size=64", "-cpu", "qemu64"}, "tcg"},
		{[]string{"qemu", "-accel", "kvm"}, "kvm"},
		{[]string{"qemu", "-cpu", "host"}, ""},
	} {
		if got := accelOf(tc.args); got != tc.want {
			t.Errorf("accelOf(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestRAMFromArgs(t *testing.T) {
	spec := vmm.Spec{ID: "sb1", Dir: "/d", Kernel: "/k", RootDisk: "/d/disk", MemoryMiB: 128}
	for _, ram := range []guestRAM{
		{},
		{Path: "/dev/shm/ember-sb1.mem"},
		{Path: "/d,x/guest-ram", Private: true},
	} {
		if got := ramFromArgs(buildArgs(AccelTCG, 1, ram, spec, noneHanded, nil)); got != ram {
			t.Errorf("ramFromArgs(buildArgs(%+v)) = %+v", ram, got)
		}
	}
}
