//go:build linux

package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm/accel"
)

// fakeHost is a host made of fields: newHost gives one where every check
// is ok, and each test case breaks one thing.
type fakeHost struct {
	euid     int
	files    map[string]string
	paths    map[string]string
	versions map[string]string
	kvm      accel.Host
	verdict  accel.Verdict
	probeErr error
	tpls     map[string]template.Template
	fcOK     bool
	fcWhy    string
	disks    []auto.Availability
	spaces   map[string]Space
	uplink   string
	upErr    error
	nftErr   error
	uffdErr  error
	listen   error
	locked   bool
}

func newHost() *fakeHost {
	return &fakeHost{
		files: map[string]string{
			"/proc/sys/kernel/osrelease":        "6.1.0-18-amd64\n",
			"/proc/self/mounts":                 "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
			"/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
			"/proc/sys/net/ipv4/ip_forward":     "1\n",
			"/sys/kernel/mm/ksm/run":            "0\n",
		},
		paths:    map[string]string{"qemu-system-x86_64": "/usr/bin/qemu-system-x86_64"},
		versions: map[string]string{"/usr/bin/qemu-system-x86_64": "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright\n"},
		kvm:      accel.Host{KVM: true, Kind: accel.KindIntel, Module: "kvm_intel"},
		verdict:  accel.Verdict{Accel: accel.KVM, Reason: "kvm: kernel 8f1c8f73 boots under KVM (kvm_intel) (start-up done in 300 ms)"},
		tpls:     map[string]template.Template{"base": {Name: "base", Kernel: "/t/base/vmlinux", BuiltAt: time.Unix(0, 0)}},
		fcWhy:    `firecracker unavailable: find firecracker binary "firecracker": executable file not found in $PATH`,
		disks: []auto.Availability{
			{Name: "devmapper", Err: errors.New("no device-mapper in this kernel")},
			{Name: "reflink", Err: errors.New("/var/lib/ember cannot clone files")},
			{Name: "qcow2"}, {Name: "copy"},
		},
		spaces: map[string]Space{"/dev/shm": {Total: 24 << 30, Free: 24 << 30, Type: "tmpfs"}, config.DefaultDataDir: {Total: 250 << 30, Free: 80 << 30, Type: "ext4"}},
		uplink: "eth0",
	}
}

func (h *fakeHost) Euid() int { return h.euid }
func (h *fakeHost) ReadFile(path string) ([]byte, error) {
	s, ok := h.files[path]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
	}
	return []byte(s), nil
}
func (h *fakeHost) LookPath(file string) (string, error) {
	if p, ok := h.paths[file]; ok {
		return p, nil
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", file)
}
func (h *fakeHost) Output(_ context.Context, name string, _ ...string) (string, error) {
	if v, ok := h.versions[name]; ok {
		return v, nil
	}
	return "", fmt.Errorf("run %s: exit status 1", name)
}
func (h *fakeHost) KVM() accel.Host { return h.kvm }
func (h *fakeHost) Accel(_ context.Context, kernel string) (accel.Verdict, error) {
	return h.verdict, h.probeErr
}
func (h *fakeHost) Template(_, name string) (template.Template, error) {
	if t, ok := h.tpls[name]; ok {
		return t, nil
	}
	return template.Template{}, template.ErrNotFound
}
func (h *fakeHost) Firecracker(string) (bool, string)  { return h.fcOK, h.fcWhy }
func (h *fakeHost) Disks(string) []auto.Availability   { return h.disks }
func (h *fakeHost) Uplink(name string) (string, error) { return h.uplink, h.upErr }
func (h *fakeHost) NFTables() error                    { return h.nftErr }
func (h *fakeHost) Userfaultfd() error                 { return h.uffdErr }
func (h *fakeHost) Listen(string) error                { return h.listen }
func (h *fakeHost) Locked(string) bool                 { return h.locked }
func (h *fakeHost) Space(path string) (Space, error) {
	if s, ok := h.spaces[path]; ok {
		return s, nil
	}
	return Space{}, fmt.Errorf("statfs %s: %w", path, fs.ErrNotExist)
}

// names are the checks in the order every report gives them.
var names = []string{"root", "kernel", "template", "kvm", "qemu", "firecracker", "disk", "shm", "cgroup",
	"nftables", "ip-forward", "uplink", "userfaultfd", "ksm", "disk-space", "port"}

// configure returns a configuration from a file's content and flags.
func configure(t *testing.T, doc string, args ...string) *config.Config {
	t.Helper()
	c, err := config.Parse("ember.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(args) == 0 {
		return c
	}
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	flagged := config.Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/ember.toml"
	if err := writeFile(path, doc); err != nil {
		t.Fatal(err)
	}
	c, err = config.Load(path, fs, flagged, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGoodHostIsAllOK(t *testing.T) {
	rep := Run(context.Background(), configure(t, ""), newHost(), Options{})
	if !rep.CanServe || rep.Err() != nil {
		t.Fatalf("a good host cannot serve: %v", rep.Err())
	}
	if len(rep.Checks) != len(names) {
		t.Fatalf("%d checks, want %d", len(rep.Checks), len(names))
	}
	for i, c := range rep.Checks {
		if c.Name != names[i] {
			t.Errorf("check %d is %s, want %s", i, c.Name, names[i])
		}
		if c.Status != OK || c.Fix != "" {
			t.Errorf("%s: %s %q (fix %q) on a good host", c.Name, c.Status, c.Finding, c.Fix)
		}
	}
}

func TestEachFailAndWarn(t *testing.T) {
	cases := []struct {
		name   string
		doc    string
		args   []string
		opts   Options
		break_ func(h *fakeHost)
		check  string
		status Status
		// finding and fix are substrings of what the check must say.
		finding, fix string
	}{
		{name: "not root", break_: func(h *fakeHost) { h.euid = 1000 },
			check: "root", status: Fail, finding: "running as uid 1000", fix: "run it as root"},

		{name: "ancient kernel", break_: func(h *fakeHost) { h.files["/proc/sys/kernel/osrelease"] = "4.19.0-26-amd64" },
			check: "kernel", status: Fail, finding: "older than 5.3: re-adopting sandboxes after a restart needs pidfd_open", fix: "6.1 or newer"},
		{name: "old kernel", break_: func(h *fakeHost) { h.files["/proc/sys/kernel/osrelease"] = "5.10.0-30-amd64" },
			check: "kernel", status: Warn, finding: "older than 6.1", fix: "6.1 or newer"},
		{name: "no kernel release", break_: func(h *fakeHost) { delete(h.files, "/proc/sys/kernel/osrelease") },
			check: "kernel", status: Warn, finding: "cannot read the kernel release", fix: "/proc"},

		{name: "base not built", break_: func(h *fakeHost) { delete(h.tpls, "base") },
			check: "template", status: Warn, finding: "base is not built yet", fix: "ember template build"},
		{name: "missing default template", doc: "default-template = \"pvm\"\n",
			check: "template", status: Fail, finding: `default-template = "pvm" (ember.toml:1) names no template`, fix: "ember template build pvm --kernel PATH"},

		{name: "pvm", break_: func(h *fakeHost) {
			h.kvm = accel.Host{KVM: true, Kind: accel.KindPVM, Module: "kvm_pvm"}
			h.verdict = accel.Verdict{Accel: accel.TCG, Reason: "tcg: /dev/kvm is PVM (kvm_pvm) and kernel 8f1c8f73 does not boot under it (qemu exited)"}
		}, check: "kvm", status: Warn, finding: "/dev/kvm is PVM (kvm_pvm) and kernel 8f1c8f73 does not boot under it (qemu exited): guests run under TCG",
			fix: "PVM guest (CONFIG_PVM_GUEST=y)"},
		{name: "accel kvm on pvm", args: []string{"--accel", "kvm"}, break_: func(h *fakeHost) {
			h.kvm = accel.Host{KVM: true, Kind: accel.KindPVM, Module: "kvm_pvm"}
			h.verdict = accel.Verdict{Accel: accel.TCG, Reason: "tcg: /dev/kvm is PVM (kvm_pvm) and kernel 8f1c8f73 does not boot under it"}
		}, check: "kvm", status: Fail, finding: "--accel kvm insists on KVM, but the probe says tcg: /dev/kvm is PVM", fix: "or drop --accel kvm"},
		{name: "no kvm", break_: func(h *fakeHost) {
			h.kvm = accel.Host{Err: errors.New("open /dev/kvm: no such file or directory")}
			h.verdict = accel.Verdict{Accel: accel.TCG, Reason: "tcg: no usable /dev/kvm (open /dev/kvm: no such file or directory)"}
		}, check: "kvm", status: Warn, finding: "no usable /dev/kvm", fix: "kvm_intel or kvm_amd"},
		{name: "no kvm, accel kvm, no template", doc: "accel = \"kvm\"\n", break_: func(h *fakeHost) {
			h.kvm = accel.Host{Err: errors.New("open /dev/kvm: no such file or directory")}
			delete(h.tpls, "base")
		}, check: "kvm", status: Fail, finding: `accel = "kvm" (ember.toml:1) insists on KVM, but there is no usable /dev/kvm`, fix: "kvm_intel"},
		{name: "kvm not yet probed", break_: func(h *fakeHost) { delete(h.tpls, "base") },
			check: "kvm", status: Warn, finding: "probed once the default template is built"},
		{name: "probe fails", break_: func(h *fakeHost) { h.probeErr = errors.New("read kernel /t/base/vmlinux: permission denied") },
			check: "kvm", status: Fail, finding: "permission denied", fix: "readable"},

		{name: "no qemu", break_: func(h *fakeHost) { delete(h.paths, "qemu-system-x86_64") },
			check: "qemu", status: Fail, finding: "qemu-system-x86_64 not on PATH", fix: "apt-get install qemu-system-x86"},
		{name: "qemu too old", break_: func(h *fakeHost) { h.versions["/usr/bin/qemu-system-x86_64"] = "QEMU emulator version 4.1.1\n" },
			check: "qemu", status: Fail, finding: "QEMU 4.1 at /usr/bin/qemu-system-x86_64 is older than 4.2: it has no microvm machine", fix: "7.2 or newer"},
		{name: "qemu older than tested", break_: func(h *fakeHost) { h.versions["/usr/bin/qemu-system-x86_64"] = "QEMU emulator version 6.2.0\n" },
			check: "qemu", status: Warn, finding: "older than 7.2, the version ember is tested with", fix: "7.2 or newer"},
		{name: "qemu does not run", break_: func(h *fakeHost) { delete(h.versions, "/usr/bin/qemu-system-x86_64") },
			check: "qemu", status: Fail, finding: "-version: run /usr/bin/qemu-system-x86_64: exit status 1"},

		{name: "firecracker configured, missing", doc: "vmm = \"firecracker\"\n",
			check: "firecracker", status: Fail, finding: `vmm = "firecracker" (ember.toml:1): vmm firecracker: firecracker unavailable`, fix: "install firecracker"},
		{name: "firecracker configured, no kvm", args: []string{"--vmm", "firecracker"}, break_: func(h *fakeHost) {
			h.fcOK, h.fcWhy = true, "firecracker /usr/local/bin/firecracker"
			h.verdict = accel.Verdict{Accel: accel.TCG, Reason: "tcg: /dev/kvm is PVM (kvm_pvm) and kernel 8f1c8f73 does not boot under it"}
		}, check: "firecracker", status: Fail, finding: "--vmm firecracker: vmm firecracker: tcg: /dev/kvm is PVM"},

		{name: "copy only", break_: func(h *fakeHost) { h.disks[2].Err = errors.New("qemu-img not on PATH") },
			check: "disk", status: Warn, finding: "every sandbox copies its template's image", fix: "xfs (reflink=1) or btrfs"},
		{name: "firecracker passes over qcow2", break_: func(h *fakeHost) { h.fcOK, h.fcWhy = true, "firecracker /usr/local/bin/firecracker" },
			check: "disk", status: Warn, finding: "qcow2: the vmm does not open this backend's disks: its disks are qcow2 and the vmm opens raw only"},
		{name: "configured backend missing", doc: "rootfs = \"devmapper\"\n",
			check: "disk", status: Fail, finding: `rootfs = "devmapper" (ember.toml:1): rootfs backend devmapper: no device-mapper in this kernel`, fix: "qcow2, copy"},

		{name: "shm full", break_: func(h *fakeHost) { h.spaces["/dev/shm"] = Space{Total: 64 << 20, Free: 100 << 20} },
			check: "shm", status: Fail, finding: "not room for one 256 MiB sandbox", fix: "remount,size="},
		{name: "shm smaller than the capacity", doc: "slot-count = 200\n", break_: func(h *fakeHost) { h.spaces["/dev/shm"] = Space{Total: 10 << 30, Free: 10 << 30} },
			check: "shm", status: Warn, finding: "room for 40 sandboxes of 256 MiB, but slot-count allows 200", fix: "to 50 GiB, or lower slot-count = 200 (ember.toml:1)"},
		{name: "bigger sandboxes", opts: Options{MemoryMiB: 1024}, doc: "slot-count = 20\n", break_: func(h *fakeHost) { h.spaces["/dev/shm"] = Space{Total: 10 << 30, Free: 10 << 30} },
			check: "shm", status: Warn, finding: "room for 10 sandboxes of 1024 MiB"},
		{name: "no shm", break_: func(h *fakeHost) { delete(h.spaces, "/dev/shm") },
			check: "shm", status: Fail, finding: "QEMU keeps guest RAM in files on /dev/shm", fix: "tmpfs"},

		{name: "hybrid cgroups", break_: func(h *fakeHost) {
			h.files["/proc/self/mounts"] = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n" +
				"cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
			h.files["/sys/fs/cgroup/unified/cgroup.controllers"] = ""
		}, check: "cgroup", status: Warn, finding: "hybrid hierarchy: v1 controllers cpu memory; v2 at /sys/fs/cgroup/unified with no controllers", fix: "systemd.unified_cgroup_hierarchy=1"},
		{name: "v2 without memory", break_: func(h *fakeHost) { h.files["/sys/fs/cgroup/cgroup.controllers"] = "cpu pids" },
			check: "cgroup", status: Warn, finding: "controllers cpu pids", fix: "cgroup.subtree_control"},
		{name: "no cgroups", break_: func(h *fakeHost) { h.files["/proc/self/mounts"] = "proc /proc proc rw 0 0\n" },
			check: "cgroup", status: Warn, finding: "no cgroup filesystem mounted"},

		{name: "no nftables", break_: func(h *fakeHost) { h.nftErr = errors.New("open nftables: protocol not supported") },
			check: "nftables", status: Fail, finding: "protocol not supported", fix: "modprobe nf_tables"},

		{name: "forwarding off", break_: func(h *fakeHost) { h.files["/proc/sys/net/ipv4/ip_forward"] = "0\n" },
			check: "ip-forward", status: Warn, finding: "the daemon turns it on at start", fix: "net.ipv4.ip_forward = 1 in /etc/sysctl.d/"},

		{name: "configured uplink missing", doc: "uplink = \"eth9\"\n", break_: func(h *fakeHost) { h.uplink, h.upErr = "", errors.New(`uplink "eth9": Link not found`) },
			check: "uplink", status: Fail, finding: `uplink = "eth9" (ember.toml:1): uplink "eth9": Link not found`, fix: "ip link"},
		{name: "no default route", break_: func(h *fakeHost) { h.uplink = "" },
			check: "uplink", status: Warn, finding: "no default route: sandboxes get no egress", fix: "default route"},
		{name: "routes unreadable", break_: func(h *fakeHost) { h.uplink, h.upErr = "", errors.New("list routes: permission denied") },
			check: "uplink", status: Fail, finding: "permission denied", fix: "ip route"},

		{name: "no userfaultfd for firecracker", break_: func(h *fakeHost) {
			h.fcOK, h.fcWhy = true, "firecracker /usr/local/bin/firecracker"
			h.uffdErr = errors.New("userfaultfd: function not implemented")
		}, check: "userfaultfd", status: Fail, finding: "every Firecracker restore", fix: "CONFIG_USERFAULTFD=y"},

		{name: "disk nearly full", break_: func(h *fakeHost) {
			h.spaces[config.DefaultDataDir] = Space{Total: 100 << 30, Free: 1 << 30, Type: "ext4"}
		},
			check: "disk-space", status: Fail, finding: "1.0 GiB free of 100 GiB under /var/lib/ember (ext4)", fix: "free space"},
		{name: "disk low", break_: func(h *fakeHost) { h.spaces[config.DefaultDataDir] = Space{Total: 100 << 30, Free: 5 << 30} },
			check: "disk-space", status: Warn, finding: "5.0 GiB free", fix: "larger filesystem"},
		{name: "data dir unreadable", break_: func(h *fakeHost) { delete(h.spaces, config.DefaultDataDir) },
			check: "disk-space", status: Fail, finding: "statfs /var/lib/ember"},

		{name: "port taken", break_: func(h *fakeHost) { h.listen = errors.New("bind: address already in use") },
			check: "port", status: Fail, finding: "listen on 127.0.0.1:7070: bind: address already in use", fix: "ss -ltnp 'sport = :7070'"},
		{name: "port taken at start, though locked", opts: Options{Starting: true}, break_: func(h *fakeHost) {
			h.locked, h.listen = true, errors.New("bind: address already in use")
		}, check: "port", status: Fail, finding: "address already in use"},
		{name: "open to the network", doc: "listen = \"0.0.0.0:7070\"\n",
			check: "port", status: Warn, finding: "reachable from other hosts", fix: "TLS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost()
			if tc.break_ != nil {
				tc.break_(h)
			}
			rep := Run(context.Background(), configure(t, tc.doc, tc.args...), h, tc.opts)
			c, found := rep.Get(tc.check)
			if !found {
				t.Fatalf("no %s check", tc.check)
			}
			if c.Status != tc.status || !strings.Contains(c.Finding, tc.finding) || !strings.Contains(c.Fix, tc.fix) {
				t.Fatalf("%s: %s %q (fix %q)\nwant %s with %q (fix %q)", c.Name, c.Status, c.Finding, c.Fix, tc.status, tc.finding, tc.fix)
			}
			if c.Status != OK && c.Fix == "" {
				t.Errorf("%s is %s without a fix", c.Name, c.Status)
			}
			if rep.CanServe != (tc.status != Fail) {
				t.Errorf("can serve = %v with %s %s", rep.CanServe, c.Name, c.Status)
			}
			err := rep.Err()
			if tc.status == Fail && (!errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), tc.check+": "+c.Finding+" (fix: "+c.Fix+")")) {
				t.Errorf("Err() = %v, want the failing check with its fix", err)
			}
			if tc.status != Fail && err != nil {
				t.Errorf("Err() = %v on a host that can serve", err)
			}
			// Whatever broke, every check still reports, in order.
			for i, c := range rep.Checks {
				if i >= len(names) || c.Name != names[i] {
					t.Fatalf("check %d is %s: the report lost its order", i, c.Name)
				}
			}
		})
	}
}

// OK lines that depend on what else the host has.
func TestOKFindings(t *testing.T) {
	cases := []struct {
		name    string
		doc     string
		opts    Options
		set     func(h *fakeHost)
		check   string
		finding string
	}{
		{"daemon running", "", Options{}, func(h *fakeHost) { h.locked, h.listen = true, errors.New("in use") },
			"port", "the ember daemon of /var/lib/ember is running"},
		{"tcg configured", "accel = \"tcg\"\n", Options{}, nil, "kvm", `accel = "tcg" is configured`},
		{"firecracker runs the guests", "", Options{}, func(h *fakeHost) { h.fcOK, h.fcWhy = true, "firecracker /usr/local/bin/firecracker" },
			"firecracker", "guests run under firecracker (automatic: firecracker /usr/local/bin/firecracker; kvm: kernel 8f1c8f73 boots"},
		{"firecracker has no shm", "", Options{}, func(h *fakeHost) { h.fcOK = true }, "shm", "not used"},
		{"qemu without firecracker", "", Options{}, nil, "firecracker", "not installed; guests run under qemu"},
		{"userfaultfd only for firecracker", "", Options{}, func(h *fakeHost) { h.uffdErr = errors.New("ENOSYS") }, "userfaultfd", "only Firecracker restores need"},
		{"no egress", "no-egress = true\n", Options{}, func(h *fakeHost) { h.files["/proc/sys/net/ipv4/ip_forward"] = "0"; h.uplink = "" },
			"uplink", "not needed: no-egress"},
		{"no egress, no forwarding", "no-egress = true\n", Options{}, func(h *fakeHost) { h.files["/proc/sys/net/ipv4/ip_forward"] = "0" },
			"ip-forward", "not needed"},
		{"configured uplink", "uplink = \"eth0\"\n", Options{}, nil, "uplink", `eth0 (uplink = "eth0" (ember.toml:1))`},
		{"ksm on", "", Options{}, func(h *fakeHost) {
			h.files["/sys/kernel/mm/ksm/run"] = "1"
			h.files["/sys/kernel/mm/ksm/pages_sharing"] = "42"
		}, "ksm", "on, 42 pages sharing"},
		{"no ksm", "", Options{}, func(h *fakeHost) { delete(h.files, "/sys/kernel/mm/ksm/run") }, "ksm", "not in this kernel"},
		{"configured copy is no warning", "rootfs = \"copy\"\n", Options{}, nil, "disk", "copy for /var/lib/ember (configured)"},
		{"automatic disk says why", "", Options{}, nil, "disk", "qcow2 for /var/lib/ember (automatic: qemu-img found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost()
			if tc.set != nil {
				tc.set(h)
			}
			c, _ := Run(context.Background(), configure(t, tc.doc), h, tc.opts).Get(tc.check)
			if c.Status != OK || !strings.Contains(c.Finding, tc.finding) {
				t.Fatalf("%s: %s %q, want ok with %q", tc.check, c.Status, c.Finding, tc.finding)
			}
		})
	}
}

func TestReportOutput(t *testing.T) {
	h := newHost()
	h.euid = 1000
	h.files["/proc/sys/net/ipv4/ip_forward"] = "0"
	rep := Run(context.Background(), configure(t, ""), h, Options{})
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(text.String()), "\n")
	if len(lines) != len(names)+1 {
		t.Fatalf("%d lines, want one per check and a verdict:\n%s", len(lines), text.String())
	}
	if !strings.HasPrefix(lines[0], "fail  root         running as uid 1000") || !strings.Contains(lines[0], " -- fix: run it as root") {
		t.Errorf("root line: %q", lines[0])
	}
	if last := lines[len(lines)-1]; last != "ember cannot serve on this host: 1 check(s) failed, 1 warning(s)" {
		t.Errorf("verdict line: %q", last)
	}
	var js strings.Builder
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal([]byte(js.String()), &back); err != nil {
		t.Fatal(err)
	}
	if back.CanServe || len(back.Checks) != len(names) || back.Checks[0].Status != Fail || back.Checks[0].Fix == "" {
		t.Fatalf("JSON report: %s", js.String())
	}
}

func TestParseVersion(t *testing.T) {
	cases := []struct {
		in   string
		want version
		ok   bool
	}{
		{"6.18.44-fc-v1045", version{6, 18}, true},
		{"7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)", version{7, 2}, true},
		{"5.10", version{5, 10}, true},
		{"v6.1", version{}, false},
		{"6", version{}, false},
		{"", version{}, false},
	}
	for _, tc := range cases {
		got, ok := parseVersion(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseVersion(%q) = %v %v, want %v %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }
