//go:build linux

package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// ErrSnapshotMismatch is returned by Restore when the spec or the QEMU at
// hand cannot take the snapshot (other vCPU count, memory size, devices,
// accelerator or QEMU build than at the save).
var ErrSnapshotMismatch = errors.New("snapshot does not match the machine")

// Files in a snapshot directory.
const (
	// vmstateFile is QEMU's migration stream: device and vCPU state, and
	// guest memory when the machine's RAM was not in a file.
	vmstateFile = "vmstate"
	// memoryFile is a sparse copy of the guest RAM file, when the machine
	// had one of its own, or a link to the saved memory its RAM mapped
	// privately.
	memoryFile = "memory"
	// manifestFile describes the machine the snapshot was taken of. It is
	// written last: a directory without it holds no usable snapshot.
	manifestFile = "manifest.json"
)

// manifestVersion changes whenever the snapshot layout does. Version 2
// added memoryPrivate; a version 1 snapshot reads the same.
const manifestVersion = 2

// Where a snapshot keeps guest memory (manifest.Memory).
const (
	// memoryInFile: in memoryFile; the stream holds device state only.
	memoryInFile = "file"
	// memoryInStream: inside the migration stream.
	memoryInStream = "stream"
	// memoryPrivate: memoryFile is the saved memory the machine's RAM
	// mapped privately, and the stream holds the pages it changed (see
	// private.go).
	memoryPrivate = "private"
)

// memoryBacking is how a machine's RAM is set up for a snapshot's memory
// mode: QEMU names the RAM block after its backend, so a stream loads only
// into a machine whose RAM is a file when the saved one's was.
func memoryBacking(mode string) string {
	if mode == memoryPrivate {
		return memoryInFile
	}
	return mode
}

// maxBandwidth is the migration bandwidth cap set before a save, in bytes per
// second: in effect none. QEMU's default cap (128 MiB/s) made saving a
// 256 MiB guest take a second.
const maxBandwidth = 1 << 40

// exitGrace is how long a failed restore waits for QEMU to exit, to tell
// a stream QEMU refused (it exits) from other failures.
const exitGrace = 200 * time.Millisecond

// migratePoll is how often a save or restore asks QEMU for progress.
const migratePoll = 2 * time.Millisecond

// manifest records what a snapshot was taken of, so that Restore can refuse a
// machine the migration stream would not load into, with a clear reason
// instead of QEMU's.
type manifest struct {
	Version int `json:"version"`
	// QEMU is the version of the QEMU that wrote the stream; only the same
	// build is trusted to read it.
	QEMU    string `json:"qemu"`
	Machine string `json:"machine"`
	Accel   string `json:"accel"`
	CPU     string `json:"cpu"`
	VCPUs   int    `json:"vcpus"`
	// MemoryMiB is the guest's memory size.
	MemoryMiB int `json:"memory_mib"`
	// Memory says where guest memory is: memoryInFile or memoryInStream.
	// QEMU names the RAM block after its backend, so a stream loads only
	// into a machine whose RAM is set up the same way.
	Memory     string `json:"memory"`
	Kernel     string `json:"kernel"`
	Initrd     string `json:"initrd,omitempty"`
	DiskFormat string `json:"disk_format"`
	// Network tells whether the machine had a network device; MAC is the
	// address it had, which the guest keeps after a restore.
	Network bool   `json:"network"`
	MAC     string `json:"mac,omitempty"`
	// Created is when the save completed.
	Created time.Time `json:"created"`
}

// manifestFor describes a machine started by d from spec under accel, its
// memory saved the way a machine with its own RAM file (or anonymous RAM)
// saves it.
func (d *Driver) manifestFor(spec vmm.Spec, version, accel string) manifest {
	spec = withDefaults(spec)
	memory := memoryInStream
	if d.memDir != "" {
		memory = memoryInFile
	}
	return manifest{
		Version:    manifestVersion,
		QEMU:       version,
		Machine:    machineOpts,
		Accel:      accel,
		CPU:        cpuModel(accel),
		VCPUs:      spec.VCPUs,
		MemoryMiB:  spec.MemoryMiB,
		Memory:     memory,
		Kernel:     spec.Kernel,
		Initrd:     spec.Initrd,
		DiskFormat: spec.DiskFormat,
		Network:    spec.TAP != "",
		MAC:        spec.MAC,
	}
}

// mismatch lists how want (a restore's machine) differs from the snapshot's
// manifest m, in the words a user can act on; empty when it does not.
func (m manifest) mismatch(want manifest) []string {
	var diffs []string
	diff := func(what string, have, got any) {
		if have != got {
			diffs = append(diffs, fmt.Sprintf("%s %v, snapshot has %v", what, got, have))
		}
	}
	diff("qemu", m.QEMU, want.QEMU)
	diff("machine", m.Machine, want.Machine)
	diff("accel", m.Accel, want.Accel)
	diff("cpu", m.CPU, want.CPU)
	diff("vcpus", m.VCPUs, want.VCPUs)
	diff("memory_mib", m.MemoryMiB, want.MemoryMiB)
	diff("memory kept in", memoryBacking(m.Memory), memoryBacking(want.Memory))
	diff("kernel", m.Kernel, want.Kernel)
	diff("initrd", m.Initrd, want.Initrd)
	diff("disk format", m.DiskFormat, want.DiskFormat)
	diff("network device", m.Network, want.Network)
	return diffs
}

// readManifest loads the manifest of the snapshot in dir.
func readManifest(dir string) (manifest, error) {
	var m manifest
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return m, fmt.Errorf("read snapshot manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("parse snapshot manifest %s: %w", filepath.Join(dir, manifestFile), err)
	}
	if m.Version < 1 || m.Version > manifestVersion {
		return m, fmt.Errorf("snapshot manifest version %d, this driver reads %d: %w", m.Version, manifestVersion, ErrSnapshotMismatch)
	}
	return m, nil
}

// migrationFD is the name under which the stream's file descriptor is
// handed to QEMU (getfd) for an fd: migration URI.
const migrationFD = "ember-vmstate"

// createState creates the file a save writes its stream into; tests swap
// it to make writes fail.
var createState = func(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

// passFDLocked hands f's descriptor to QEMU as migrationFD.
func (m *Machine) passFDLocked(ctx context.Context, f *os.File) error {
	return m.qmpFileLocked(ctx, "getfd", map[string]any{"fdname": migrationFD}, nil, f)
}

// qemuVersion asks QEMU for its version: "7.2.11 (Debian 1:7.2+dfsg-7+deb12u12)".
func (m *Machine) qemuVersionLocked(ctx context.Context) (string, error) {
	var v struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := m.qmpLocked(ctx, "query-version", nil, &v); err != nil {
		return "", err
	}
	s := fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro)
	if p := strings.TrimSpace(v.Package); p != "" {
		s += " (" + p + ")"
	}
	return s, nil
}

// migrationStatus is the part of query-migrate's reply a save or restore
// follows.
type migrationStatus struct {
	Status string `json:"status"`
	Error  string `json:"error-desc"`
}

// waitMigration polls query-migrate until the migration has completed or
// failed. When ctx ends first, an outgoing migration is cancelled.
func (m *Machine) waitMigrationLocked(ctx context.Context, outgoing bool) error {
	tick := time.NewTicker(migratePoll)
	defer tick.Stop()
	for {
		var st migrationStatus
		if err := m.qmpLocked(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			desc := st.Error
			if desc == "" {
				desc = "no reason given"
			}
			return fmt.Errorf("migration %s: %s", st.Status, desc)
		}
		select {
		case <-ctx.Done():
			if outgoing {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpTimeout)
				if err := m.qmpLocked(cctx, "migrate_cancel", nil, nil); err != nil {
					m.log.Warn("cancel migration", "err", err)
				}
				cancel()
			}
			return fmt.Errorf("migration %s: %w", st.Status, context.Cause(ctx))
		case <-m.proc.Done():
			return vmm.ErrNotRunning
		case <-tick.C:
		}
	}
}

// setMigrationParams raises the bandwidth cap and says whether QEMU leaves
// guest RAM in a shared file out of the stream (x-ignore-shared). A restore
// sets what the save did (QEMU checks), so the stream is read as it was
// written; a machine restored from a shared file's snapshot saves with it
// off, its RAM being private.
func (m *Machine) setMigrationParamsLocked(ctx context.Context, ignoreShared bool) error {
	caps := []map[string]any{{"capability": "x-ignore-shared", "state": ignoreShared}}
	if err := m.qmpLocked(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return err
	}
	return m.qmpLocked(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": maxBandwidth}, nil)
}

// sharedRAM says the machine's RAM is a file of its own, mapped shared,
// which a save leaves out of the stream and copies.
func (m *Machine) sharedRAM() bool { return m.ram.Path != "" && !m.ram.Private }

// Snapshot saves the paused machine's device and vCPU state into dir as a
// QEMU migration stream (dir/vmstate) and records what the machine was in
// dir/manifest.json. Its memory goes where its RAM lives: a machine with a
// RAM file of its own saves a sparse copy of it (dir/memory); a machine
// whose RAM maps a saved memory file privately links that file (dir/memory)
// and keeps in the stream only the pages it changed; anonymous RAM goes
// inside the stream. The machine stays paused; QEMU flushes the guest's
// disk before the save completes, so the disk as it is now belongs with the
// snapshot. QEMU 7.2 has no file: migration URI; the stream goes to a
// descriptor passed over QMP. opts.Diff is ignored: all memory is saved.
func (m *Machine) Snapshot(ctx context.Context, dir string, opts vmm.SnapshotOptions) error {
	p := newPhases()
	if err := m.snapshot(ctx, dir, p); err != nil {
		return fmt.Errorf("snapshot %s into %s: %w", m.spec.ID, dir, err)
	}
	m.log.Info("vmm snapshot", append([]any{"dir", dir}, p.attrs()...)...)
	return nil
}

// phases times the steps of a save or restore for its log line.
type phases struct {
	begin, last time.Time
	steps       []any
}

func newPhases() *phases {
	now := time.Now()
	return &phases{begin: now, last: now}
}

// done records that the step named name has just finished.
func (p *phases) done(name string) {
	now := time.Now()
	p.steps = append(p.steps, name, now.Sub(p.last))
	p.last = now
}

// attrs returns the steps' durations and the total as log attributes.
func (p *phases) attrs() []any {
	return append(p.steps, "duration", time.Since(p.begin))
}

// snapshot holds the machine's lock throughout, so that no Resume runs
// the guest while its state is being saved.
func (m *Machine) snapshot(ctx context.Context, dir string, p *phases) (err error) {
	if m.driver == nil {
		return errors.New("machine was not made by a driver")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := m.stateLocked(ctx)
	if err != nil {
		return err
	}
	if st != vmm.StatePaused {
		return fmt.Errorf("machine is %s, not paused", st)
	}
	if fi, err := os.Stat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	// A failed save leaves no part of itself behind.
	defer func() {
		if err != nil {
			for _, f := range []string{vmstateFile, saveStream, memoryFile, manifestFile, manifestFile + ".tmp"} {
				os.Remove(filepath.Join(dir, f))
			}
		}
	}()
	version, err := m.qemuVersionLocked(ctx)
	if err != nil {
		return err
	}
	if err := m.setMigrationParamsLocked(ctx, m.sharedRAM()); err != nil {
		return err
	}
	// QEMU writes the stream straight into a file opened here, so that
	// a write error (a full disk) fails the migration. Through a pipe to a
	// helper process, a helper that failed after QEMU had filled the pipe
	// went unnoticed: QEMU does not check how the helper ended. A private
	// machine's whole stream is filtered afterwards.
	state := filepath.Join(dir, vmstateFile)
	written := state
	if m.ram.Private {
		written = filepath.Join(dir, saveStream)
	}
	f, err := createState(written)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := m.passFDLocked(ctx, f); err != nil {
		return err
	}
	if err := m.qmpLocked(ctx, "migrate", map[string]any{"uri": "fd:" + migrationFD}, nil); err != nil {
		return err
	}
	if err := m.waitMigrationLocked(ctx, true); err != nil {
		return err
	}
	p.done("stream")
	mem := filepath.Join(dir, memoryFile)
	switch {
	case m.sharedRAM():
		// The guest is paused: its RAM file holds still while it is
		// copied.
		if err := copyMemory(ctx, mem, m.ram.Path); err != nil {
			return fmt.Errorf("save guest memory: %w", err)
		}
		p.done("memory")
		if err := fsutil.Sync(mem); err != nil {
			return fmt.Errorf("sync %s: %w", mem, err)
		}
	case m.ram.Private:
		kept, err := filterSaved(ctx, state, written, m.ram.Path)
		if err != nil {
			return fmt.Errorf("leave unchanged memory out of the stream: %w", err)
		}
		if kept != nil {
			m.log.Warn("snapshot keeps all guest memory in its stream", "reason", kept)
		}
		p.done("filter")
		if err := keepBase(ctx, mem, m.ram.Path); err != nil {
			return fmt.Errorf("keep saved guest memory: %w", err)
		}
	}
	if err := fsutil.Sync(state); err != nil {
		return fmt.Errorf("sync %s: %w", state, err)
	}
	p.done("sync")
	man := m.driver.manifestFor(m.spec, version, m.accel)
	if m.ram.Private {
		man.Memory = memoryPrivate
	}
	man.Created = time.Now().UTC()
	b, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, manifestFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// Restore starts a machine for spec from the snapshot in snapshotDir and
// returns it running. Guest memory saved in a file is not copied: the new
// machine's RAM maps the file privately (see private.go), so every restore
// of one snapshot (a fork, a template's create) shares its clean pages and
// writes its own, and the snapshot stays as it was. spec must describe the
// machine the snapshot was taken of: the same vCPUs, memory, kernel (empty
// takes the snapshot's), initrd, disk format and whether it has a network
// device, under the same accelerator and QEMU build; otherwise Restore
// fails with ErrSnapshotMismatch before starting anything. The disk,
// directory and network slot may differ from the snapshot's; the disk must
// hold what it held at the snapshot. On error no QEMU process is left.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snapshotDir string) (vmm.Machine, error) {
	p := newPhases()
	m, err := d.restore(ctx, spec, snapshotDir, p)
	if err != nil {
		return nil, fmt.Errorf("restore %s from %s: %w", spec.ID, snapshotDir, err)
	}
	m.log.Info("vmm restored", append([]any{"snapshot", snapshotDir, "accel", m.accel}, p.attrs()...)...)
	return m, nil
}

func (d *Driver) restore(ctx context.Context, spec vmm.Spec, dir string, p *phases) (_ *Machine, err error) {
	man, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	if spec.Kernel == "" {
		spec.Kernel = man.Kernel
	}
	state := filepath.Join(dir, vmstateFile)
	if _, err := os.Stat(state); err != nil {
		return nil, fmt.Errorf("snapshot state: %w", err)
	}
	// Everything but the QEMU build is known before QEMU runs.
	v, err := d.AccelFor(ctx, spec.Kernel)
	if err != nil {
		return nil, err
	}
	want := d.manifestFor(spec, man.QEMU, v.Accel)
	if diffs := man.mismatch(want); len(diffs) > 0 {
		return nil, fmt.Errorf("%s: %w", strings.Join(diffs, "; "), ErrSnapshotMismatch)
	}
	base := ""
	if memoryBacking(man.Memory) == memoryInFile {
		base = filepath.Join(dir, memoryFile)
	}
	m, err := d.launch(ctx, spec, base, "-incoming", "defer")
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p.done("launch")
	defer func() {
		if err != nil {
			m.kill()
		}
	}()
	version, err := m.qemuVersionLocked(ctx)
	if err != nil {
		return nil, err
	}
	if version != man.QEMU {
		return nil, fmt.Errorf("qemu %s, snapshot written by %s: %w", version, man.QEMU, ErrSnapshotMismatch)
	}
	if err := m.setMigrationParamsLocked(ctx, man.Memory == memoryInFile); err != nil {
		return nil, err
	}
	f, err := os.Open(state)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := m.passFDLocked(ctx, f); err != nil {
		return nil, err
	}
	if err := m.qmpLocked(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + migrationFD}, nil); err != nil {
		return nil, err
	}
	if err := m.waitMigrationLocked(ctx, false); err != nil {
		// QEMU ends itself when it cannot load a stream; its log says why.
		if m.proc.Wait(exitGrace) {
			return nil, fmt.Errorf("load snapshot: %w", &vmm.ExitError{VMM: "qemu", Log: vmm.LogTail(logPath(spec.Dir))})
		}
		return nil, fmt.Errorf("load snapshot: %w (%s)", err, vmmproc.LogTail("qemu log", logPath(spec.Dir)))
	}
	p.done("stream")
	// The source was paused when it was saved, so QEMU leaves the restored
	// machine paused too.
	if err := m.qmpLocked(ctx, "cont", nil, nil); err != nil {
		return nil, err
	}
	if man.Network && spec.MAC != man.MAC {
		// virtio-net's saved state carries the MAC, and the guest keeps
		// the address its driver read at boot.
		m.log.Warn("restored guest keeps the snapshot's mac", "mac", man.MAC, "spec_mac", spec.MAC)
	}
	return m, nil
}
