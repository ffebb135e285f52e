//go:build linux

// Package firecracker runs ember's microVMs under Firecracker, directly or
// through its jailer. A machine is configured through the API socket in the
// order Firecracker documents (logger, metrics, machine-config, boot-source,
// drives, network-interfaces, entropy, optional balloon and vsock, then
// InstanceStart), paused and resumed with PATCH /vm, snapshotted with PUT
// /snapshot/create, and restored in a fresh process with PUT /snapshot/load
// whose memory is served by ember's userfaultfd page server
// (internal/memory/uffd).
//
// The API contract is Firecracker v1.16.1's swagger document; the package's
// tests check every request against it.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// BaseBootArgs is the kernel command line every machine gets before
// Spec.BootArgs (which carries the ip= argument for the slot).
const BaseBootArgs = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw init=/sbin/init"

// startTimeout bounds how long Start waits for the API socket.
const startTimeout = 10 * time.Second

// Names of the files a machine keeps in its directory (or its jail).
const (
	apiSocketName  = "firecracker.sock"
	logName        = "firecracker.log"
	metricsName    = "firecracker.metrics"
	uffdSocketName = "uffd.sock"
	vsockName      = "vsock.sock"
	// In a snapshot directory.
	stateFile  = "vmstate"
	memoryFile = "memory"
)

// Interface and drive ids used in the API.
const (
	rootDriveID = "rootfs"
	ifaceID     = "eth0"
)

// ErrDiskFormat is returned for a root disk Firecracker cannot use.
var ErrDiskFormat = errors.New("firecracker takes raw disks only")

// Config configures the driver.
type Config struct {
	// Binary is the firecracker executable; empty means firecracker from
	// PATH.
	Binary string
	// Jailer, when set, runs every machine through the jailer.
	Jailer *JailerConfig
	// TrackDirtyPages turns on dirty page tracking so that snapshots after
	// the first can be Diff snapshots.
	TrackDirtyPages bool
	// BalloonMiB, when positive, adds a balloon device inflated to that
	// size (deflated on guest OOM).
	BalloonMiB int
	// VsockCID, when at least 3, adds a vsock device with that guest CID,
	// its host socket in the machine's directory.
	VsockCID uint32
	// StopWait is how long Stop waits for the guest to shut down after
	// SendCtrlAltDel before it ends the process (SIGTERM, then SIGKILL);
	// zero means 3 seconds.
	StopWait time.Duration
	// UFFDReadahead is the page server's readahead for restored machines
	// (zero: its default).
	UFFDReadahead int
	// PageServer, when set, is the command that runs a restored
	// machine's page server as a process of its own: the ember binary
	// (and any arguments of its own), to which the driver appends
	// uffd.HelperArgs, the subcommand and its flags. The process lives outside the daemon, in
	// the machine's cgroup, so a daemon that stops or dies loses no
	// guest, and a restarted daemon re-adopts it (Attach). Unset, the
	// page server is a goroutine of the daemon, which takes the guest's
	// memory with it.
	PageServer []string
	// Prober, when set, checks that KVM boots a machine's kernel before
	// Firecracker is started for it (AccelFor).
	Prober *accel.Prober
}

// JailerConfig configures the jailer.
type JailerConfig struct {
	// Binary is the jailer executable; empty means jailer from PATH.
	Binary string
	// ChrootBase is the directory jails are made under
	// (<ChrootBase>/<file name of Binary>/<id>/root, as the jailer lays
	// them out).
	ChrootBase string
	// UID and GID run Firecracker inside the jail.
	UID, GID int
	// CPUMax and MemoryMax are cgroup v2 limits written as cpu.max and
	// memory.max (for example "200000 100000" and "1073741824"); empty
	// leaves a limit unset.
	CPUMax, MemoryMax string
}

// Driver starts Firecracker microVMs. It implements vmm.Driver and
// vmm.Restorer.
type Driver struct {
	log    *slog.Logger
	cfg    Config
	binary string
	jailer string
	// reclaimWait is how long ReclaimProcesses gives an orphaned
	// Firecracker after SIGTERM; tests shorten it.
	reclaimWait time.Duration
}

var (
	_ vmm.Driver           = (*Driver)(nil)
	_ vmm.Restorer         = (*Driver)(nil)
	_ vmm.DiskFormats      = (*Driver)(nil)
	_ vmm.ProcessReclaimer = (*Driver)(nil)
)

// Available reports whether the firecracker binary (cfg.Binary, or
// firecracker on PATH) exists; reason says why in one line either way.
// Whether KVM boots a guest kernel is the accelerator probe's to say
// (AccelFor).
func Available(cfg Config) (ok bool, reason string) {
	bin, err := lookBinary(cfg.Binary, "firecracker")
	if err != nil {
		return false, "firecracker unavailable: " + err.Error()
	}
	return true, "firecracker " + bin
}

// AccelFor says whether Firecracker can run kernel here: only under KVM,
// so a kernel the probe finds does not boot under KVM is an error with the
// probe's reason. Without a Prober the driver assumes KVM boots every
// kernel.
func (d *Driver) AccelFor(ctx context.Context, kernel string) (accel.Verdict, error) {
	if d.cfg.Prober == nil {
		return accel.Verdict{Accel: accel.KVM, Reason: "kvm: firecracker (no probe configured)"}, nil
	}
	v, err := d.cfg.Prober.Choose(ctx, kernel)
	if err != nil {
		return accel.Verdict{}, err
	}
	if v.Accel != accel.KVM {
		return accel.Verdict{}, fmt.Errorf("firecracker needs KVM: %s: %w", v.Reason, ErrNoKVM)
	}
	return v, nil
}

// ErrNoKVM is returned for a kernel KVM does not boot on this host.
var ErrNoKVM = errors.New("kvm does not boot the kernel")

func lookBinary(path, name string) (string, error) {
	if path == "" {
		path = name
	}
	p, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("find %s binary %q: %w", name, path, err)
	}
	return p, nil
}

// New returns a driver for cfg. It fails when a binary is missing; it does
// not check /dev/kvm (Available does).
func New(cfg Config, log *slog.Logger) (*Driver, error) {
	bin, err := lookBinary(cfg.Binary, "firecracker")
	if err != nil {
		return nil, err
	}
	d := &Driver{log: log.With("vmm", "firecracker"), cfg: cfg, binary: bin, reclaimWait: vmmproc.TermWait}
	if cfg.StopWait <= 0 {
		d.cfg.StopWait = 3 * time.Second
	}
	if j := cfg.Jailer; j != nil {
		if d.jailer, err = lookBinary(j.Binary, "jailer"); err != nil {
			return nil, err
		}
		if j.ChrootBase == "" || !filepath.IsAbs(j.ChrootBase) {
			return nil, fmt.Errorf("jailer chroot base %q: want an absolute path", j.ChrootBase)
		}
	}
	return d, nil
}

// Name returns "firecracker".
func (d *Driver) Name() string { return "firecracker" }

// DiskFormats returns "raw": Firecracker opens raw disks only.
func (d *Driver) DiskFormats() []string { return []string{"raw"} }

// checkSpec rejects a spec Firecracker would refuse, with a clearer
// message than Firecracker's.
func checkSpec(spec vmm.Spec) error {
	if err := vmmproc.CheckSpec(spec, filepath.Join(spec.Dir, apiSocketName)); err != nil {
		return err
	}
	if spec.DiskFormat != "" && spec.DiskFormat != "raw" {
		return fmt.Errorf("disk format %q: %w", spec.DiskFormat, ErrDiskFormat)
	}
	if spec.VCPUs > 1 && spec.VCPUs%2 != 0 {
		return fmt.Errorf("%d vcpus: firecracker takes 1 or an even number", spec.VCPUs)
	}
	return nil
}

// Start launches Firecracker for spec and boots the guest. On error no
// process and no jail is left.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (_ vmm.Machine, err error) {
	begin := time.Now()
	if _, err := d.AccelFor(ctx, spec.Kernel); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.ID, err)
	}
	m, err := d.launch(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			m.kill()
		}
	}()
	if err := d.configure(ctx, m, spec); err != nil {
		return nil, fmt.Errorf("start %s: %w: %s", spec.ID, err, vmmproc.LogTail("firecracker log", m.hostLog()))
	}
	m.log.Info("vmm started", "duration", time.Since(begin))
	return m, nil
}

// configure sends the boot configuration in Firecracker's documented order
// and starts the instance.
func (d *Driver) configure(ctx context.Context, m *Machine, spec vmm.Spec) error {
	kernel, err := m.jail.inside(spec.Kernel, false)
	if err != nil {
		return err
	}
	disk, err := m.jail.rootDrive(spec.RootDisk)
	if err != nil {
		return err
	}
	boot := bootSource{KernelImagePath: kernel, BootArgs: strings.TrimSpace(BaseBootArgs + " " + spec.BootArgs)}
	if spec.Initrd != "" {
		if boot.InitrdPath, err = m.jail.inside(spec.Initrd, false); err != nil {
			return err
		}
	}
	sh := shapeOf(spec)
	type step struct {
		method, path string
		body         any
	}
	steps := []step{
		{"PUT", "/machine-config", machineConfig{VCPUCount: sh.VCPUs, MemSizeMiB: sh.MemoryMiB, TrackDirtyPages: d.cfg.TrackDirtyPages}},
		{"PUT", "/boot-source", boot},
		{"PUT", "/drives/" + rootDriveID, drive{DriveID: rootDriveID, PathOnHost: disk, IsRootDevice: true}},
	}
	if spec.TAP != "" {
		steps = append(steps, step{"PUT", "/network-interfaces/" + ifaceID, networkInterface{IfaceID: ifaceID, HostDevName: spec.TAP, GuestMAC: spec.MAC}})
	}
	steps = append(steps, step{"PUT", "/entropy", entropyDevice{}})
	if d.cfg.BalloonMiB > 0 {
		steps = append(steps, step{"PUT", "/balloon", balloon{AmountMiB: d.cfg.BalloonMiB, DeflateOnOOM: true}})
	}
	if d.cfg.VsockCID >= 3 {
		steps = append(steps, step{"PUT", "/vsock", vsock{GuestCID: d.cfg.VsockCID, UDSPath: m.jail.own(vsockName)}})
	}
	if err := m.setupLogging(ctx); err != nil {
		return err
	}
	for _, s := range steps {
		if err := m.api.do(ctx, s.method, s.path, s.body, nil); err != nil {
			return err
		}
	}
	return m.api.do(ctx, "PUT", "/actions", action{ActionType: "InstanceStart"}, nil)
}

// Restore starts a fresh Firecracker for spec, loads the snapshot in
// snapshotDir with its memory served by a userfaultfd page server, and
// resumes it. The page server lives as long as the machine. The memory
// file must be complete: a Diff snapshot's memory is to be laid over its
// base by the caller first. A spec whose vCPU count or memory size is not
// the snapshot's is refused with ErrSnapshotMismatch.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snapshotDir string) (_ vmm.Machine, err error) {
	begin := time.Now()
	fail := func(err error) error { return fmt.Errorf("restore %s from %s: %w", spec.ID, snapshotDir, err) }
	for _, name := range []string{stateFile, memoryFile} {
		if _, err := os.Stat(filepath.Join(snapshotDir, name)); err != nil {
			return nil, fail(err)
		}
	}
	if err := checkShape(snapshotDir, spec); err != nil {
		return nil, fail(err)
	}
	m, err := d.launch(ctx, spec)
	if err != nil {
		return nil, fail(err)
	}
	defer func() {
		if err != nil {
			m.kill()
		}
	}()
	if err := d.startPages(m, spec, filepath.Join(snapshotDir, memoryFile)); err != nil {
		return nil, fail(err)
	}
	// Firecracker connects to the socket as the jail's user.
	if err := m.jail.give(m.jail.ownHost(uffdSocketName)); err != nil {
		return nil, fail(err)
	}
	state, err := m.jail.inside(filepath.Join(snapshotDir, stateFile), false)
	if err != nil {
		return nil, fail(err)
	}
	if err := m.setupLogging(ctx); err != nil {
		return nil, fail(err)
	}
	// The saved state names the root drive rootDriveName: this machine's.
	if _, err := m.jail.rootDrive(spec.RootDisk); err != nil {
		return nil, fail(err)
	}
	load := snapshotLoad{
		SnapshotPath:    state,
		MemBackend:      &memoryBackend{BackendType: "Uffd", BackendPath: m.jail.own(uffdSocketName)},
		TrackDirtyPages: d.cfg.TrackDirtyPages,
	}
	if spec.TAP != "" {
		load.NetworkOverrides = []networkOverride{{IfaceID: ifaceID, HostDevName: spec.TAP}}
	}
	if d.cfg.VsockCID >= 3 {
		// The snapshot names the old machine's socket.
		load.VsockOverride = &vsockOverride{UDSPath: m.jail.own(vsockName)}
	}
	if err := m.api.do(ctx, "PUT", "/snapshot/load", load, nil); err != nil {
		return nil, fail(fmt.Errorf("%w: %s", err, vmmproc.LogTail("firecracker log", m.hostLog())))
	}
	if err := m.Resume(ctx); err != nil {
		return nil, fail(err)
	}
	m.log.Info("vmm restored", "snapshot", snapshotDir, "duration", time.Since(begin))
	return m, nil
}

// launch starts the Firecracker process (through the jailer when
// configured) inside spec.Netns and waits for its API socket.
func (d *Driver) launch(ctx context.Context, spec vmm.Spec) (_ *Machine, err error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j, err := d.newJail(spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			j.remove()
		}
	}()
	if err := os.Remove(j.ownHost(apiSocketName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale api socket: %w", err)
	}
	console, err := os.OpenFile(vmm.ConsoleLog(spec.Dir), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	// Firecracker holds its own descriptor; ours is not needed past the fork.
	defer console.Close()

	cmd := d.command(spec, j)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = console, console
	ns := spec.Netns
	if j.jailed {
		ns = "" // the jailer joins the namespace itself (--netns)
	}
	proc, err := vmmproc.Start(cmd, ns, d.onExit(spec))
	if err != nil {
		return nil, err
	}
	m := newMachine(d, spec, j, proc)
	defer func() {
		if err != nil {
			m.kill()
		}
	}()
	// A jailed Firecracker is in the cgroup the jailer makes for it (its
	// --cgroup limits); placing it too would race the jailer. Its page
	// server still goes into the sandbox's.
	if spec.Place != nil && !j.jailed {
		if err := spec.Place(proc.PID()); err != nil {
			return nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := m.waitReady(wctx); err != nil {
		return nil, err
	}
	return m, nil
}

// onExit is what runs when the Firecracker of spec exits, whoever
// started it.
func (d *Driver) onExit(spec vmm.Spec) func(status string) {
	log := d.log.With("sandbox", spec.ID)
	return func(status string) { log.Debug("firecracker exited", "status", status) }
}

// command builds the firecracker (or jailer) command line. What identity
// says of it is how Attach and ReclaimProcesses recognise the process.
func (d *Driver) command(spec vmm.Spec, j *jail) *exec.Cmd {
	if !j.jailed {
		return exec.Command(d.binary, "--api-sock", j.ownHost(apiSocketName), "--id", jailID(spec))
	}
	c := d.cfg.Jailer
	args := []string{
		"--id", jailID(spec), "--exec-file", d.binary,
		"--uid", fmt.Sprint(c.UID), "--gid", fmt.Sprint(c.GID),
		"--chroot-base-dir", c.ChrootBase, "--cgroup-version", "2",
	}
	if spec.Netns != "" {
		args = append(args, "--netns", spec.Netns)
	}
	if c.CPUMax != "" {
		args = append(args, "--cgroup", "cpu.max="+c.CPUMax)
	}
	if c.MemoryMax != "" {
		args = append(args, "--cgroup", "memory.max="+c.MemoryMax)
	}
	args = append(args, "--", "--api-sock", "/"+apiSocketName)
	return exec.Command(d.jailer, args...)
}

// Attach re-adopts the Firecracker process pid started for spec. It
// returns vmm.ErrNotRunning when pid is gone, is not that Firecracker (its
// command line does not carry the machine's identity), or does not answer
// on the API socket. A machine restored through the page server cannot be
// re-adopted by another process once its page server is gone: its
// unserved memory is lost with it.
func (d *Driver) Attach(ctx context.Context, spec vmm.Spec, pid int) (_ vmm.Machine, err error) {
	proc, err := vmmproc.Adopt(pid, d.identity(spec), d.onExit(spec))
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", spec.ID, err)
	}
	m := newMachine(d, spec, d.existingJail(spec), proc)
	var info instanceInfo
	if err := m.api.do(ctx, "GET", "/", nil, &info); err != nil {
		return nil, fmt.Errorf("attach %s: %w", spec.ID, proc.Unanswered(err))
	}
	if err := d.adoptPages(m, spec); err != nil {
		proc.Release()
		return nil, fmt.Errorf("attach %s: %w", spec.ID, err)
	}
	m.log.Info("vmm attached", "state", info.State, "page_server", m.helperPID())
	return m, nil
}

// identity is what only the Firecracker of spec carries on its command
// line: its API socket in spec.Dir or, in a jail, where the socket is
// named inside the chroot, the jail's id, which names the jail.
func (d *Driver) identity(spec vmm.Spec) vmmproc.Identity {
	j := d.existingJail(spec)
	if j.jailed {
		return vmmproc.Identity{Flag: "--id", Value: jailID(spec)}
	}
	return vmmproc.Identity{Flag: "--api-sock", Value: j.ownHost(apiSocketName)}
}

// ReclaimProcesses ends the Firecracker processes an earlier daemon
// started for machines under keep.Dir that keep.PIDs does not hold: those
// whose command line carries the identity of a directory directly under
// keep.Dir, the identity Attach checks. Each gets SIGTERM, then SIGKILL to
// its process group after a deadline. A process that merely names such a
// directory (an admin's tail of a console log) is not one of them. The
// page servers of restored machines ran in the daemon and went with it.
// The jail of a reclaimed machine is left as it is: the machine's next
// start replaces it.
func (d *Driver) ReclaimProcesses(_ context.Context, keep reclaim.Keep) (reclaim.Result, error) {
	res, err := vmmproc.Reclaim(keep, d.identity, d.reclaimWait, d.log)
	// A page server serves a VMM that is gone now: it goes too.
	pres, perr := vmmproc.Reclaim(keep, d.pagesIdentity, d.reclaimWait, d.log)
	res.Found, res.Removed = res.Found+pres.Found, res.Removed+pres.Removed
	return res, errors.Join(err, perr)
}

// jailID is the machine's id for Firecracker and the jailer: the jailer
// takes letters, digits and hyphens, at most 64.
func jailID(spec vmm.Spec) string {
	id := []byte(spec.ID)
	for i, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			id[i] = '-'
		}
	}
	if len(id) > 64 {
		id = id[:64]
	}
	if len(id) == 0 {
		return "ember"
	}
	return string(id)
}
