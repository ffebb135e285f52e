//go:build linux

// Package qemu runs ember's microVMs under qemu-system-x86_64: the microvm
// machine type, a PVH boot of an uncompressed vmlinux, virtio-mmio disk,
// network and entropy devices, and QMP over a Unix socket for control. It
// uses KVM when /dev/kvm is usable and software emulation (TCG) otherwise.
//
// A booted guest's RAM lives in a file on tmpfs, mapped shared, so that a
// snapshot (snapshot.go) is QEMU's migration stream of device state,
// written to a descriptor the daemon opens, plus a sparse copy of that
// file. A restore does not copy it back: the new guest's RAM maps the
// snapshot's file privately (private.go), so every guest restored from one
// snapshot shares its clean pages through the page cache and owns only the
// pages it writes; saving such a guest keeps in the stream only the pages
// that differ from the file (filter.go). A restore loads the stream into a
// QEMU started with -incoming.
//
// No maintained QMP library is available to ember, so the package speaks the
// protocol itself (qmp.go); it needs only a handful of commands.
package qemu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// startTimeout bounds how long Start waits for QMP to answer when the
// caller's context has no earlier deadline.
const startTimeout = 30 * time.Second

// Config configures the driver.
type Config struct {
	// Binary is the QEMU executable; empty means qemu-system-x86_64 from
	// PATH.
	Binary string
	// Accel is "kvm", "tcg" or empty. Empty decides per guest kernel: KVM
	// where a probe boot shows the kernel boots under it, TCG otherwise
	// (see package accel). "kvm" insists, and a machine whose kernel does
	// not boot under KVM fails to start with the probe's reason.
	Accel string
	// ProbeCache holds the probe's verdicts; empty means
	// accel.DefaultCacheDir(). ProbeTimeout bounds a probe boot (0:
	// accel.DefaultTimeout).
	ProbeCache   string
	ProbeTimeout time.Duration
	// Prober, when set, is used instead of one made from the fields
	// above, so that the daemon's VMM choice and the driver share verdicts.
	Prober *accel.Prober
	// MemoryDir holds the files of running machines' guest RAM; empty means
	// /dev/shm. See StreamMemory.
	MemoryDir string
	// StreamMemory keeps guest RAM in anonymous memory and saves it inside
	// the migration stream. By default guest RAM is a file in MemoryDir,
	// mapped shared, so that a snapshot writes only device state and
	// copies the file, and a restore copies it back.
	StreamMemory bool
	// Confine, when set, confines every QEMU the driver runs for a
	// machine (confine.go).
	Confine *Confinement
	// Helper, when set, is the ember binary (and arguments of its own):
	// a restore copies guest RAM by running its CopyCommand in the
	// machine's cgroup, so the pages count against the sandbox.
	Helper []string
}

// defaultMemoryDir is where guest RAM files live unless configured: tmpfs,
// so a running guest's memory is never written back to a disk.
const defaultMemoryDir = "/dev/shm"

// Driver starts and attaches to QEMU microVMs. It implements vmm.Driver.
type Driver struct {
	log    *slog.Logger
	binary string
	// accel is the configured accelerator, "" to decide per kernel with
	// prober.
	accel  string
	prober *accel.Prober
	// tscKHz is the host TSC frequency handed to TCG guests; tscErr says
	// why it is unknown (a TCG start then fails).
	tscKHz int64
	tscErr error
	// memDir holds guest RAM files; empty when RAM is anonymous and
	// snapshots stream it.
	memDir string
	// reclaimWait is how long ReclaimProcesses gives an orphaned QEMU
	// after SIGTERM; tests shorten it.
	reclaimWait time.Duration
	// confine confines the machines' QEMU; nil runs it as the daemon's
	// user, unfiltered.
	confine *Confinement
	// helper runs the memory copy of a restore (Config.Helper).
	helper []string
	// sealed holds the sealed copies of saved memory that restored
	// machines map (sealed.go).
	sealed sealedRAM
}

var _ vmm.Driver = (*Driver)(nil)
var _ vmm.Restorer = (*Driver)(nil)
var _ vmm.DiskFormats = (*Driver)(nil)

// New returns a driver for cfg. It fails when the binary is missing or the
// accelerator is unknown; whether KVM boots a kernel is known only per
// kernel (AccelFor).
func New(cfg Config, log *slog.Logger) (*Driver, error) {
	bin := cfg.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("find qemu binary %q: %w", bin, err)
	}
	d := &Driver{log: log.With("vmm", "qemu"), binary: path, reclaimWait: vmmproc.TermWait, confine: cfg.Confine, helper: cfg.Helper}
	if !cfg.StreamMemory {
		d.memDir = cfg.MemoryDir
		if d.memDir == "" {
			d.memDir = defaultMemoryDir
		}
		if st, err := os.Stat(d.memDir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("use memory directory %q: not a directory: %v", d.memDir, err)
		}
	}
	switch cfg.Accel {
	case "", AccelKVM, AccelTCG:
		d.accel = cfg.Accel
	default:
		return nil, fmt.Errorf("use accel %q: unknown (want kvm, tcg or empty)", cfg.Accel)
	}
	d.prober = cfg.Prober
	if d.prober == nil {
		d.prober = NewProber(path, cfg.ProbeCache, cfg.ProbeTimeout, d.log)
	}
	d.tscKHz, d.tscErr = hostTSCKHz()
	return d, nil
}

// AccelFor returns the accelerator a machine booting kernel runs under, and
// why. A configured "kvm" is an error for a kernel KVM does not boot.
func (d *Driver) AccelFor(ctx context.Context, kernel string) (accel.Verdict, error) {
	if d.accel == AccelTCG {
		return accel.Verdict{Accel: AccelTCG, Reason: "tcg: chosen by configuration"}, nil
	}
	v, err := d.prober.Choose(ctx, kernel)
	if err != nil {
		return accel.Verdict{}, err
	}
	if d.accel == AccelKVM {
		if v.Accel != AccelKVM {
			return accel.Verdict{}, fmt.Errorf("use accel kvm: %s: %w", v.Reason, ErrAccel)
		}
		v.Reason = "kvm: chosen by configuration; " + strings.TrimPrefix(v.Reason, "kvm: ")
	}
	return v, nil
}

// ErrAccel is returned when the configured accelerator cannot run a
// machine's kernel.
var ErrAccel = errors.New("accelerator cannot boot the kernel")

// NewProber returns an accelerator prober that boots kernels with the QEMU
// at binary in the machine shape this driver runs. cacheDir "" means
// accel.DefaultCacheDir().
func NewProber(binary, cacheDir string, timeout time.Duration, log *slog.Logger) *accel.Prober {
	if cacheDir == "" {
		cacheDir = accel.DefaultCacheDir()
	}
	return &accel.Prober{QEMU: binary, Args: probeArgs, CacheDir: cacheDir, Timeout: timeout, Log: log}
}

// MemoryDir returns the directory that holds running machines' guest RAM
// files, "" when RAM is anonymous: what the daemon's admission control
// counts room in.
func (d *Driver) MemoryDir() string { return d.memDir }

// Prober returns the driver's accelerator prober.
func (d *Driver) Prober() *accel.Prober { return d.prober }

// Name returns "qemu".
func (d *Driver) Name() string { return "qemu" }

// Start launches QEMU for spec inside spec.Netns (the host namespace when
// empty), in a process group of its own so it outlives the daemon, and
// returns once QMP answers: the guest is booting. On error no QEMU process
// is left.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	begin := time.Now()
	m, err := d.launch(ctx, spec, "")
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.ID, err)
	}
	m.log.Info("vmm started", "accel", m.accel, "duration", time.Since(begin))
	return m, nil
}

// memPath is the file that holds the guest RAM of the machine in spec.Dir,
// or "" when RAM is anonymous. The name carries the ember prefix and the
// machine's id, for reclaim and for people, and a digest of its directory,
// so two machines never share one.
func (d *Driver) memPath(spec vmm.Spec) string {
	if d.memDir == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(spec.Dir))
	id := strings.Map(func(r rune) rune {
		if r == '/' || r == 0 {
			return '_'
		}
		return r
	}, spec.ID)
	return filepath.Join(d.memDir, fmt.Sprintf("ember-%s-%x.mem", id, sum[:6]))
}

// launch runs QEMU for spec with extra arguments appended to its command
// line and waits until QMP answers. base, when set, is a saved machine's
// memory file that the guest's RAM maps privately (a restore, see
// privateRAM); otherwise the guest starts with fresh RAM of its own. On
// error no QEMU process and no RAM file of its own is left.
func (d *Driver) launch(ctx context.Context, spec vmm.Spec, base string, extra ...string) (_ *Machine, err error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v, err := d.AccelFor(ctx, spec.Kernel)
	if err != nil {
		return nil, err
	}
	tscKHz := int64(0)
	if v.Accel == AccelTCG {
		if d.tscErr != nil {
			return nil, d.tscErr
		}
		tscKHz = d.tscKHz
	}
	if pid, ok := runningIn(spec.Dir); ok {
		return nil, fmt.Errorf("qemu pid %d already runs in %s", pid, spec.Dir)
	}
	// A stale socket or pid file from an earlier run must not pass for
	// this one's, nor its memory for this guest's.
	for _, p := range []string{qmpPath(spec.Dir), pidPath(spec.Dir), d.memPath(spec), ramLinkPath(spec.Dir)} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale %s: %w", p, err)
		}
	}
	ram := guestRAM{Path: d.memPath(spec)}
	if base != "" {
		if ram, err = privateRAM(spec.Dir, base); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				removeMemory(d.log.With("sandbox", spec.ID), ramLinkPath(spec.Dir))
			}
		}()
	}
	logFile, err := os.OpenFile(logPath(spec.Dir), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open vmm log: %w", err)
	}
	// QEMU holds its own descriptors; ours are not needed past the fork.
	defer logFile.Close()
	var files vmmproc.Handed
	defer files.Close()
	h, err := d.hand(&files, spec)
	if err != nil {
		return nil, err
	}
	exit := d.onExit(spec)
	if ram.Private {
		var release func()
		if h.ram, release, err = d.handRAM(ctx, &files, ram.Path); err != nil {
			return nil, err
		}
		// Released once the machine exits, or now if it never starts
		// (release runs once either way).
		defer func() {
			if err != nil {
				release()
			}
		}()
		onExit := exit
		exit = func(status string) {
			onExit(status)
			release()
		}
	}

	cmd := exec.Command(d.binary, append(buildArgs(v.Accel, tscKHz, ram, spec, h, d.confine), extra...)...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = files.Files()
	cmd.SysProcAttr = d.confine.procAttr()
	proc, err := vmmproc.Start(cmd, spec.Netns, exit)
	if err != nil {
		return nil, err
	}
	m := newMachine(d, spec, proc, ram)
	files.Close()
	if spec.Place != nil {
		if err := spec.Place(proc.PID()); err != nil {
			m.kill()
			return nil, err
		}
	}
	// What runningIn finds; QEMU as its own user could not write it here.
	if err := os.WriteFile(pidPath(spec.Dir), []byte(strconv.Itoa(proc.PID())+"\n"), 0o644); err != nil {
		m.kill()
		return nil, fmt.Errorf("write pid file: %w", err)
	}
	m.accel = v.Accel
	defer func() {
		if err != nil {
			m.kill()
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := m.waitReady(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// diskFormats are the root disk formats QEMU opens, the default first.
var diskFormats = []string{"raw", "qcow2"}

// DiskFormats returns "raw" and "qcow2": QEMU opens both.
func (d *Driver) DiskFormats() []string { return slices.Clone(diskFormats) }

// checkSpec rejects a spec QEMU would refuse, with a clearer message than
// QEMU's.
func checkSpec(spec vmm.Spec) error {
	if err := vmmproc.CheckSpec(spec, qmpPath(spec.Dir)); err != nil {
		return err
	}
	if spec.DiskFormat != "" && !slices.Contains(diskFormats, spec.DiskFormat) {
		return fmt.Errorf("disk format %q: unsupported (want %s)", spec.DiskFormat, strings.Join(diskFormats, " or "))
	}
	return nil
}

// waitReady waits until QEMU answers query-status over QMP. If QEMU exits
// first, the error carries the end of its log.
func (m *Machine) waitReady(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := m.qmp(ctx, "query-status", nil, nil)
		if err == nil {
			return nil
		}
		select {
		case <-m.proc.Done():
			return &vmm.ExitError{VMM: "qemu", During: "during start", Log: vmm.LogTail(logPath(m.spec.Dir))}
		case <-ctx.Done():
			return fmt.Errorf("wait for qmp: %w (last: %v)", context.Cause(ctx), err)
		case <-tick.C:
		}
	}
}

// Attach re-adopts the QEMU process pid that was started for spec. It
// returns vmm.ErrNotRunning when pid is gone, is not that QEMU (its command
// line does not name spec's QMP socket), or does not answer QMP.
func (d *Driver) Attach(ctx context.Context, spec vmm.Spec, pid int) (_ vmm.Machine, err error) {
	proc, err := vmmproc.Adopt(pid, identity(spec), d.onExit(spec))
	if errors.Is(err, vmm.ErrNotRunning) {
		// Started by an ember before QMP sockets were handed over.
		if p, lerr := vmmproc.Adopt(pid, legacyIdentity(spec), d.onExit(spec)); lerr == nil {
			proc, err = p, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", spec.ID, err)
	}
	m := newMachine(d, spec, proc, attachedRAM(proc.PID(), spec.Dir, proc.Args()))
	m.accel = accelOf(proc.Args())
	if err := m.qmp(ctx, "query-status", nil, nil); err != nil {
		return nil, fmt.Errorf("attach %s: %w", spec.ID, proc.Unanswered(err))
	}
	m.log.Info("vmm attached")
	return m, nil
}

// identity is what only the QEMU of spec carries on its command line: its
// name, which is its QMP socket in its directory.
func identity(spec vmm.Spec) vmmproc.Identity {
	return vmmproc.Identity{Flag: "-name", Value: nameArg(spec.Dir)}
}

// legacyIdentity is the identity of a QEMU an ember before this one
// started, which opened its QMP socket by path: an upgraded daemon
// re-adopts (or reclaims) it.
func legacyIdentity(spec vmm.Spec) vmmproc.Identity {
	return vmmproc.Identity{Flag: "-chardev", Value: "socket,id=qmp,path=" + optEscape(qmpPath(spec.Dir)) + ",server=on,wait=off"}
}

// hand opens what QEMU needs for spec and hands it over: the kernel, the
// root disk (read-write and read-only) and an overlay's base, the console
// log, the QMP socket, the TAP in the slot's namespace and, confined, the
// empty directory QEMU chroots into.
func (d *Driver) hand(files *vmmproc.Handed, spec vmm.Spec) (h handed, err error) {
	h = noneHanded
	// QEMU opens the kernel again through /proc/self/fd as its own user,
	// which the file's mode must let read.
	if st, err := os.Stat(spec.Kernel); err == nil && d.confine.unprivileged() && st.Mode().Perm()&0o004 == 0 {
		return h, fmt.Errorf("kernel %s (mode %o) is not readable by %s, whom qemu runs as: make it world-readable (chmod a+r)",
			spec.Kernel, st.Mode().Perm(), d.confine.User)
	}
	for _, o := range []struct {
		what  string
		path  string
		flags int
		fd    *int
	}{
		{"kernel", spec.Kernel, os.O_RDONLY, &h.kernel},
		{"root disk", spec.RootDisk, os.O_RDWR, &h.disk},
		{"root disk", spec.RootDisk, os.O_RDONLY, &h.diskRO},
		{"console log", vmm.ConsoleLog(spec.Dir), os.O_WRONLY | os.O_CREATE | os.O_TRUNC, &h.console},
	} {
		if *o.fd, err = files.Open(o.path, o.flags, 0o644); err != nil {
			return h, fmt.Errorf("open %s for qemu: %w", o.what, err)
		}
	}
	if withDefaults(spec).DiskFormat == "qcow2" {
		base, err := qcow2Backing(spec.RootDisk)
		if err != nil {
			return h, err
		}
		if base != "" {
			if h.backing, err = files.Open(base, os.O_RDONLY, 0); err != nil {
				return h, fmt.Errorf("open base image for qemu: %w", err)
			}
		}
	}
	if h.qmp, err = files.Listen(qmpPath(spec.Dir)); err != nil {
		return h, err
	}
	if spec.TAP != "" {
		if h.tap, err = files.OpenTAP(spec.Netns, spec.TAP); err != nil {
			return h, err
		}
	}
	if d.confine != nil && d.confine.Chroot {
		root := filepath.Join(spec.Dir, chrootName)
		if err := os.Mkdir(root, 0o555); err != nil && !errors.Is(err, os.ErrExist) {
			return h, fmt.Errorf("create chroot of qemu: %w", err)
		}
		// Mkdir's mode passes the umask; a root that QEMU could write
		// into would let it make a directory to chroot out through.
		if err := os.Chmod(root, 0o555); err != nil {
			return h, fmt.Errorf("create chroot of qemu: %w", err)
		}
		if h.root, err = files.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0); err != nil {
			return h, fmt.Errorf("open chroot of qemu: %w", err)
		}
	}
	return h, nil
}

// runningIn reports the QEMU still running for dir, found through the pid
// file it wrote.
func runningIn(dir string) (int, bool) {
	b, err := os.ReadFile(pidPath(dir))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	args, err := vmmproc.Cmdline(pid)
	return pid, err == nil && identity(vmm.Spec{Dir: dir}).In(args)
}
