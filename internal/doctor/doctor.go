//go:build linux

// Package doctor checks a host the way the daemon will use it, before it
// matters: root, the kernel, KVM (with the daemon's own accelerator probe),
// QEMU, Firecracker, the disk backends the data directory allows, /dev/shm
// against the memory the configured capacity commits, cgroups, nftables, IP
// forwarding, the uplink, userfaultfd, KSM, free disk and the API's port.
// Each check gives a status, what it found and, when not ok, the fix.
// `ember doctor` prints the report; `ember serve` runs the same checks at
// start and refuses to start on a failing one.
//
// The checks read the host through the Host interface only, so a test can
// stand up any host, and every fail and warn line, with a fake.
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/usage"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/accel"
	vmmauto "github.com/emberhq/ember/internal/vmm/auto"
)

// Status is a check's verdict.
type Status string

// Statuses: ok is fine, warn works with a cost the finding names, fail
// stops the daemon from serving.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Check is one finding about the host.
type Check struct {
	// Name is stable, for scripts: "root", "kvm", "disk", ...
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Finding says what the check found, in one line.
	Finding string `json:"finding"`
	// Fix says what to do about a warn or a fail.
	Fix string `json:"fix,omitempty"`
}

// Report is every check's result.
type Report struct {
	// CanServe is false when a check failed: the daemon would refuse to
	// start.
	CanServe bool    `json:"can_serve"`
	Checks   []Check `json:"checks"`
}

// ErrNotReady is what a report with a failing check gives as its error.
var ErrNotReady = errors.New("this host cannot run ember")

// Err returns nil when the daemon can serve, else an error wrapping
// ErrNotReady that names every failing check with its fix.
func (r Report) Err() error {
	var fails []string
	for _, c := range r.Checks {
		if c.Status == Fail {
			fails = append(fails, fmt.Sprintf("%s: %s (fix: %s)", c.Name, c.Finding, c.Fix))
		}
	}
	if len(fails) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNotReady, strings.Join(fails, "; "))
}

// Get returns the check called name.
func (r Report) Get(name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// WriteText prints one line per check (status, name, finding and fix),
// then a line saying whether the daemon can serve.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	warns := 0
	fails := 0
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-5s %-12s %s", c.Status, c.Name, c.Finding)
		if c.Fix != "" {
			fmt.Fprintf(&b, " -- fix: %s", c.Fix)
		}
		b.WriteByte('\n')
		switch c.Status {
		case Warn:
			warns++
		case Fail:
			fails++
		}
	}
	switch {
	case fails > 0:
		fmt.Fprintf(&b, "ember cannot serve on this host: %d check(s) failed, %d warning(s)\n", fails, warns)
	case warns > 0:
		fmt.Fprintf(&b, "ember can serve on this host, with %d warning(s)\n", warns)
	default:
		b.WriteString("ember can serve on this host\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON prints the report as JSON, for scripts.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Space is a filesystem's size and room, in bytes.
type Space struct {
	Total, Free uint64
	// Type names the filesystem ("ext4", "tmpfs"), when known.
	Type string
}

// Host is the machine as the checks read it. System is the real one.
type Host interface {
	// Euid is the effective user id the daemon would run as.
	Euid() int
	// ReadFile reads a file of the host by its absolute path (/proc/...,
	// /sys/...).
	ReadFile(path string) ([]byte, error)
	// LookPath finds a program as exec.LookPath does.
	LookPath(file string) (string, error)
	// Output runs a program and returns its standard output.
	Output(ctx context.Context, name string, args ...string) (string, error)
	// KVM describes /dev/kvm.
	KVM() accel.Host
	// Accel is the daemon's accelerator probe's verdict for kernel.
	Accel(ctx context.Context, kernel string) (accel.Verdict, error)
	// Template looks a template up in the registry at dir.
	Template(dir, name string) (template.Template, error)
	// Firecracker says whether the firecracker binary (binary, or
	// firecracker on PATH) exists, and why, as the daemon decides it.
	Firecracker(binary string) (ok bool, why string)
	// Disks reports every disk backend for the data directory, in the
	// order automatic selection tries them.
	Disks(dataDir string) []auto.Availability
	// Space describes the filesystem holding path (or, when path does not
	// exist yet, its nearest existing parent).
	Space(path string) (Space, error)
	// Uplink resolves the egress interface as the daemon does: name, or
	// the default route's ("" when there is none).
	Uplink(name string) (string, error)
	// NFTables says whether nf_tables answers.
	NFTables() error
	// Userfaultfd says whether a userfaultfd opens.
	Userfaultfd() error
	// Listen binds addr and lets it go at once.
	Listen(addr string) error
	// Locked says whether a daemon holds the data directory's lock file.
	Locked(lockFile string) bool
}

// Options adjust the checks.
type Options struct {
	// Starting is set by the daemon checking the host before it starts:
	// it holds the data directory's lock itself, and the API's address
	// must be free.
	Starting bool
	// MemoryMiB is the memory of a sandbox that asks for none (the
	// capacity check's unit); 0 means 256.
	MemoryMiB int
}

// Minimum versions, and the versions ember is developed with.
var (
	// pidfd_open, which re-adopting VMMs after a restart relies on, came
	// in Linux 5.3; ember is tested on 6.1 (Debian bookworm's) and newer.
	minKernel, testedKernel = version{5, 3}, version{6, 1}
	// QEMU's microvm machine came in 4.2; ember is tested with 7.2.
	minQEMU, testedQEMU = version{4, 2}, version{7, 2}
)

// Thresholds of the free disk check.
const (
	failFreeBytes = 2 << 30
	warnFreeBytes = 10 << 30
)

// Run checks the host h for a daemon configured as cfg. The probe of the
// default template's kernel (Host.Accel) is the one long step; its verdict
// is cached on disk, as the daemon's is.
func Run(ctx context.Context, cfg *config.Config, h Host, o Options) Report {
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 256
	}
	r := &run{ctx: ctx, cfg: cfg, h: h, o: o}
	tpl, tplErr := h.Template(cfg.Templates(), cfg.DefaultTemplate)
	if tplErr == nil {
		r.kernel = tpl.Kernel
	}
	checks := []Check{
		r.root(),
		r.hostKernel(),
		r.template(tpl, tplErr),
		r.kvm(),
		r.qemu(),
		r.firecracker(),
		r.disk(),
		r.shm(),
		r.cgroup(),
		r.nftables(),
		r.ipForward(),
		r.uplink(),
		r.userfaultfd(),
		r.ksm(),
		r.diskSpace(),
		r.port(),
	}
	rep := Report{CanServe: true, Checks: checks}
	for _, c := range checks {
		if c.Status == Fail {
			rep.CanServe = false
		}
	}
	return rep
}

// run holds what several checks share: the default template's kernel, the
// probe's verdict and the VMM the daemon would choose.
type run struct {
	ctx context.Context
	cfg *config.Config
	h   Host
	o   Options

	kernel   string
	verdict  *accel.Verdict
	probeErr error
	vmm      string
}

func ok(name, format string, args ...any) Check {
	return Check{Name: name, Status: OK, Finding: fmt.Sprintf(format, args...)}
}

func warn(name, fix, format string, args ...any) Check {
	return Check{Name: name, Status: Warn, Finding: fmt.Sprintf(format, args...), Fix: fix}
}

func fail(name, fix, format string, args ...any) Check {
	return Check{Name: name, Status: Fail, Finding: fmt.Sprintf(format, args...), Fix: fix}
}

func (r *run) root() Check {
	if uid := r.h.Euid(); uid != 0 {
		return fail("root", "run it as root: sudo ember serve, or the systemd unit `make install` puts in place",
			"running as uid %d: the daemon creates network namespaces, nftables rules, TAP and loop devices, which needs root", uid)
	}
	return ok("root", "running as root")
}

func (r *run) hostKernel() Check {
	b, err := r.h.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return warn("kernel", "check that /proc is mounted", "cannot read the kernel release: %v", err)
	}
	rel := strings.TrimSpace(string(b))
	v, okv := parseVersion(rel)
	switch {
	case !okv:
		return warn("kernel", "run a Linux 6.1 or newer kernel", "Linux %s: cannot tell its version", rel)
	case v.less(minKernel):
		return fail("kernel", "run a Linux 6.1 or newer kernel (Debian bookworm's)",
			"Linux %s is older than %s: re-adopting sandboxes after a restart needs pidfd_open", rel, minKernel)
	case v.less(testedKernel):
		return warn("kernel", "run a Linux 6.1 or newer kernel (Debian bookworm's)",
			"Linux %s is older than %s, the oldest kernel ember is tested on", rel, testedKernel)
	}
	return ok("kernel", "Linux %s", rel)
}

func (r *run) template(tpl template.Template, err error) Check {
	name := r.cfg.DefaultTemplate
	switch {
	case err == nil:
		return ok("template", "%s: built %s in %s", name, tpl.BuiltAt.Format("2006-01-02 15:04"), r.cfg.Templates())
	case errors.Is(err, template.ErrNotFound) && name == template.DefaultName:
		return warn("template", "let the first start build it, or build it now: ember template build --dir "+r.cfg.Templates(),
			"%s is not built yet in %s: the first start builds it from linux-source-6.1 (several minutes), and probes its kernel then",
			name, r.cfg.Templates())
	case errors.Is(err, template.ErrNotFound):
		return fail("template", fmt.Sprintf("build it (ember template build %s --kernel PATH) or change %s", name, r.cfg.Describe("default-template")),
			"%s names no template in %s", r.cfg.Describe("default-template"), r.cfg.Templates())
	}
	return fail("template", "check the template directory", "read template %s: %v", name, err)
}

// mustKVM names the setting that insists on KVM, or "".
func (r *run) mustKVM() string {
	switch {
	case r.cfg.Accel == "kvm":
		return r.cfg.Describe("accel")
	case r.cfg.VMM == "firecracker":
		return r.cfg.Describe("vmm")
	}
	return ""
}

func (r *run) kvm() Check {
	h := r.h.KVM()
	if r.kernel != "" {
		v, err := r.h.Accel(r.ctx, r.kernel)
		if err != nil {
			r.probeErr = err
			return fail("kvm", "check that the default template's kernel is readable, or rebuild it", "probe the default kernel under KVM: %v", err)
		}
		r.verdict = &v
	}
	const pvmFix = "to run under KVM, bring a kernel built as a PVM guest (CONFIG_PVM_GUEST=y): ember template build NAME --kernel PATH, then default-template = NAME"
	const kvmFix = "load kvm_intel or kvm_amd, or on a cloud VM turn nested virtualization on"
	fix := kvmFix
	if h.Kind == accel.KindPVM {
		fix = pvmFix
	}
	switch {
	case r.cfg.Accel == "tcg":
		return ok("kvm", "%s; accel = \"tcg\" is configured: guests run under software emulation", h.Describe())
	case r.verdict != nil && r.verdict.Accel == accel.KVM:
		return ok("kvm", "%s", r.verdict.Reason)
	case r.verdict != nil:
		if must := r.mustKVM(); must != "" {
			return fail("kvm", fix+"; or drop "+must, "%s insists on KVM, but the probe says %s", must, r.verdict.Reason)
		}
		return warn("kvm", fix, "%s: guests run under TCG, software emulation, several times slower", r.verdict.Reason)
	case !h.KVM:
		if must := r.mustKVM(); must != "" {
			return fail("kvm", kvmFix+"; or drop "+must, "%s insists on KVM, but there is %s", must, h.Describe())
		}
		return warn("kvm", kvmFix, "%s: guests run under TCG, software emulation, several times slower", h.Describe())
	}
	return warn("kvm", "let the first start build the default template, or build it now",
		"%s; whether it boots ember's kernel is probed once the default template is built", h.Describe())
}

func (r *run) qemu() Check {
	const fix = "apt-get install qemu-system-x86"
	bin, err := r.h.LookPath("qemu-system-x86_64")
	if err != nil {
		return fail("qemu", fix, "qemu-system-x86_64 not on PATH: it runs the guests where Firecracker does not, and probes KVM")
	}
	out, err := r.h.Output(r.ctx, bin, "-version")
	if err != nil {
		return fail("qemu", fix, "%s -version: %v", bin, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	release := strings.TrimPrefix(line, "QEMU emulator version ")
	v, okv := parseVersion(release)
	switch {
	case !okv:
		return warn("qemu", fix, "%s: cannot tell its version from %q", bin, line)
	case v.less(minQEMU):
		return fail("qemu", "install QEMU "+testedQEMU.String()+" or newer", "QEMU %s at %s is older than %s: it has no microvm machine", v, bin, minQEMU)
	case v.less(testedQEMU):
		return warn("qemu", "install QEMU "+testedQEMU.String()+" or newer", "QEMU %s at %s is older than %s, the version ember is tested with", v, bin, testedQEMU)
	}
	return ok("qemu", "QEMU %s at %s", release, bin)
}

func (r *run) firecracker() Check {
	fcOK, fcWhy := r.h.Firecracker(r.cfg.Firecracker)
	jailer := "no jailer on PATH"
	if p, err := r.h.LookPath("jailer"); err == nil {
		jailer = "jailer at " + p
	}
	kvmBoots := func() (bool, string, error) {
		switch {
		case r.probeErr != nil:
			return false, "", r.probeErr
		case r.verdict == nil:
			return false, "whether KVM boots the default kernel is probed once the template is built", nil
		}
		return r.verdict.Accel == accel.KVM, r.verdict.Reason, nil
	}
	name, why, err := vmm.Choose(r.cfg.VMM, fcOK, fcWhy, kvmBoots)
	r.vmm = name
	if err != nil {
		r.vmm = "qemu"
		return fail("firecracker", "install firecracker (github.com/firecracker-microvm/firecracker/releases) on a host where KVM boots the kernel, or set vmm = \"\"",
			"%s: %v", r.cfg.Describe("vmm"), err)
	}
	if fcOK {
		return ok("firecracker", "%s, %s; guests run under %s (%s)", fcWhy, jailer, name, why)
	}
	return ok("firecracker", "not installed; guests run under %s (%s)", name, why)
}

func (r *run) disk() Check {
	avail := r.h.Disks(r.cfg.DataDir)
	name, reason, err := auto.Pick(avail, r.cfg.Rootfs, vmmauto.DiskFormats(r.vmm))
	if err != nil {
		return fail("disk", "choose a backend this host runs ("+availableNames(avail)+"), or leave rootfs empty", "%s: %v", r.cfg.Describe("rootfs"), err)
	}
	if name == "copy" && (r.cfg.Rootfs == "" || r.cfg.Rootfs == "auto") {
		return warn("disk", "put the data directory on xfs (reflink=1) or btrfs, load dm_mod, or install qemu-utils",
			"copy for %s: every sandbox copies its template's image (%s)", r.cfg.DataDir, reason)
	}
	return ok("disk", "%s for %s (%s)", name, r.cfg.DataDir, reason)
}

func availableNames(avail []auto.Availability) string {
	var out []string
	for _, b := range avail {
		if b.Err == nil {
			out = append(out, b.Name)
		}
	}
	return strings.Join(out, ", ")
}

func (r *run) shm() Check {
	if r.vmm == "firecracker" {
		return ok("shm", "not used: Firecracker keeps guest RAM in its own memory")
	}
	per := uint64(r.o.MemoryMiB) << 20
	sp, err := r.h.Space("/dev/shm")
	if err != nil {
		return fail("shm", "mount a tmpfs on /dev/shm", "QEMU keeps guest RAM in files on /dev/shm, which cannot be read: %v", err)
	}
	room := sp.Free / per
	const grow = "grow it (mount -o remount,size=SIZE /dev/shm, or size= in /etc/fstab)"
	switch n := uint64(r.cfg.SlotCount); {
	case room == 0:
		return fail("shm", grow, "/dev/shm has %s free: not room for one %d MiB sandbox's RAM", bytes(sp.Free), r.o.MemoryMiB)
	case n > 0 && room < n:
		return warn("shm", grow+" to "+bytes(n*per)+", or lower "+r.cfg.Describe("slot-count"),
			"/dev/shm has %s free: room for %d sandboxes of %d MiB, but slot-count allows %d", bytes(sp.Free), room, r.o.MemoryMiB, n)
	case n > 0:
		return ok("shm", "/dev/shm has %s free: room for %d sandboxes of %d MiB; slot-count allows %d", bytes(sp.Free), room, r.o.MemoryMiB, n)
	}
	return ok("shm", "/dev/shm has %s free: room for %d sandboxes of %d MiB (slot-count 0 bounds them by slots only)", bytes(sp.Free), room, r.o.MemoryMiB)
}

func (r *run) cgroup() Check {
	const fix = "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only), with the cpu and memory controllers enabled"
	b, err := r.h.ReadFile("/proc/self/mounts")
	if err != nil {
		return warn("cgroup", fix, "cannot read the mounts: %v", err)
	}
	var v2 string
	var v1 []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		switch f[2] {
		case "cgroup2":
			if v2 == "" || f[1] == "/sys/fs/cgroup" {
				v2 = f[1]
			}
		case "cgroup":
			for _, opt := range strings.Split(f[3], ",") {
				if isController(opt) {
					v1 = append(v1, opt)
				}
			}
		}
	}
	var ctrls []string
	if v2 != "" {
		if c, err := r.h.ReadFile(v2 + "/cgroup.controllers"); err == nil {
			ctrls = strings.Fields(string(c))
		}
	}
	has := func(c string) bool {
		for _, x := range ctrls {
			if x == c {
				return true
			}
		}
		return false
	}
	const limits = "the jailer's per-sandbox cpu and memory limits need cgroup v2 with the cpu and memory controllers"
	switch {
	case v2 == "" && len(v1) == 0:
		return warn("cgroup", fix, "no cgroup filesystem mounted: %s", limits)
	case len(v1) > 0:
		return warn("cgroup", fix, "hybrid hierarchy: v1 controllers %s; v2 at %s with %s: %s",
			strings.Join(v1, " "), orNone(v2), controllers(ctrls), limits)
	case !has("cpu") || !has("memory"):
		return warn("cgroup", "enable cpu and memory in the cgroup.subtree_control of the daemon's parent cgroups",
			"cgroup v2 at %s with %s: %s", v2, controllers(ctrls), limits)
	}
	return ok("cgroup", "cgroup v2 at %s with %s", v2, controllers(ctrls))
}

// isController reports a cgroup v1 mount option that names a controller.
func isController(opt string) bool {
	switch opt {
	case "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "io", "pids", "net_cls", "net_prio",
		"perf_event", "hugetlb", "rdma", "misc":
		return true
	}
	return false
}

func controllers(c []string) string {
	if len(c) == 0 {
		return "no controllers"
	}
	return "controllers " + strings.Join(c, " ")
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func (r *run) nftables() Check {
	if err := r.h.NFTables(); err != nil {
		return fail("nftables", "modprobe nf_tables (apt-get install nftables), and run as root",
			"nf_tables does not answer (%v): every NAT and egress rule ember writes goes through it", err)
	}
	return ok("nftables", "nf_tables answers")
}

func (r *run) ipForward() Check {
	if r.cfg.NoEgress {
		return ok("ip-forward", "not needed: no-egress is set")
	}
	b, err := r.h.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return warn("ip-forward", "check that /proc/sys is mounted", "cannot read net.ipv4.ip_forward: %v", err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		return warn("ip-forward", "set net.ipv4.ip_forward = 1 in /etc/sysctl.d/ so the host is configured for it from boot, or set no-egress = true",
			"net.ipv4.ip_forward is off: the daemon turns it on at start for sandbox egress, and it stays on")
	}
	return ok("ip-forward", "net.ipv4.ip_forward is on")
}

func (r *run) uplink() Check {
	if r.cfg.NoEgress {
		return ok("uplink", "not needed: no-egress is set, sandboxes reach nothing beyond the host")
	}
	up, err := r.h.Uplink(r.cfg.Uplink)
	switch {
	case err != nil && r.cfg.Uplink != "":
		return fail("uplink", "name an interface `ip link` shows, or leave uplink empty for the default route's", "%s: %v", r.cfg.Describe("uplink"), err)
	case err != nil:
		return fail("uplink", "check the host's routing table (ip route)", "find the default route: %v", err)
	case up == "":
		return warn("uplink", "add a default route, or set uplink, or set no-egress = true to say so",
			"no default route: sandboxes get no egress")
	case r.cfg.Uplink != "":
		return ok("uplink", "%s (%s)", up, r.cfg.Describe("uplink"))
	}
	return ok("uplink", "%s, the default route's", up)
}

func (r *run) userfaultfd() Check {
	err := r.h.Userfaultfd()
	switch {
	case err == nil:
		return ok("userfaultfd", "available: restored Firecracker machines' memory is served from their snapshots")
	case r.vmm == "firecracker":
		return fail("userfaultfd", "use a kernel with CONFIG_USERFAULTFD=y, and run as root",
			"unavailable (%v): every Firecracker restore (template snapshots, resumes) needs it", err)
	}
	return ok("userfaultfd", "unavailable (%v), which only Firecracker restores need", err)
}

func (r *run) ksm() Check {
	k := usage.ReadKSM(r.h.ReadFile)
	switch k.State {
	case "unavailable":
		return ok("ksm", "not in this kernel: identical guest pages are not merged")
	case "on":
		return ok("ksm", "on, %d pages sharing; restored guests' private memory is marked mergeable", k.PagesSharing)
	}
	return ok("ksm", "off; restored guests' private memory is marked mergeable and would merge with it on "+
		"(echo 1 > %s/run), which nothing depends on", usage.KSMDir)
}

func (r *run) diskSpace() Check {
	sp, err := r.h.Space(r.cfg.DataDir)
	if err != nil {
		return fail("disk-space", "create the data directory's parent, or set data-dir", "%s: %v", r.cfg.Describe("data-dir"), err)
	}
	fs := ""
	if sp.Type != "" {
		fs = " (" + sp.Type + ")"
	}
	const fix = "free space there, or set data-dir to a larger filesystem"
	switch {
	case sp.Free < failFreeBytes:
		return fail("disk-space", fix, "%s free of %s under %s%s: not room for a template and sandbox disks", bytes(sp.Free), bytes(sp.Total), r.cfg.DataDir, fs)
	case sp.Free < warnFreeBytes:
		return warn("disk-space", fix, "%s free of %s under %s%s: room for few sandbox disks", bytes(sp.Free), bytes(sp.Total), r.cfg.DataDir, fs)
	}
	return ok("disk-space", "%s free of %s under %s%s", bytes(sp.Free), bytes(sp.Total), r.cfg.DataDir, fs)
}

func (r *run) port() Check {
	addr := r.cfg.Listen
	if !r.o.Starting && r.h.Locked(r.cfg.LockFile()) {
		return ok("port", "%s: the ember daemon of %s is running", addr, r.cfg.DataDir)
	}
	if err := r.h.Listen(addr); err != nil {
		_, p, _ := net.SplitHostPort(addr)
		return fail("port", fmt.Sprintf("stop what listens there (ss -ltnp 'sport = :%s'), or set listen", p), "listen on %s: %v", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return warn("port", "put a TLS proxy in front and listen on 127.0.0.1, or firewall the port",
			"%s is free, and reachable from other hosts: the API speaks plain HTTP, guarded by the API key only", addr)
	}
	return ok("port", "%s is free", addr)
}

// version is a major.minor version.
type version struct{ major, minor int }

func (v version) less(o version) bool {
	return v.major < o.major || v.major == o.major && v.minor < o.minor
}

func (v version) String() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

// parseVersion reads the major.minor a release string starts with
// ("6.18.44-fc", "7.2.19 (Debian ...)").
func parseVersion(s string) (version, bool) {
	f := strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if len(f) < 2 || !strings.HasPrefix(s, f[0]) {
		return version{}, false
	}
	maj, err1 := strconv.Atoi(f[0])
	mnr, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return version{}, false
	}
	return version{maj, mnr}, true
}

// bytes prints a size in MiB or GiB.
func bytes(n uint64) string {
	if n >= 10<<30 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%d MiB", n>>20)
}
