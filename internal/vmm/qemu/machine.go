//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// Stop's escalation deadlines: how long QEMU gets to quit after QMP quit,
// then after SIGTERM (then vmmproc.Terminate sends SIGKILL).
const (
	quitWait = 2 * time.Second
	termWait = vmmproc.TermWait
)

// qmpTimeout bounds one QMP exchange (connect, negotiate, command) when the
// caller's context has no earlier deadline.
const qmpTimeout = 5 * time.Second

// Machine is a QEMU process, started by this driver or attached to by pid.
// It talks QMP over a fresh connection for every request: QEMU serves one
// QMP client at a time, and a connection held open would lock out the
// daemon that attaches after a restart.
type Machine struct {
	log *slog.Logger
	// driver made the machine; snapshots record its configuration.
	driver *Driver
	// ram is where guest RAM lives.
	ram guestRAM
	// accel is the accelerator the machine runs under.
	accel string
	spec  vmm.Spec
	// proc is the QEMU process; its exit deletes the guest RAM file
	// (onExit) before its Done closes.
	proc *vmmproc.Process

	// Stop's deadlines, shortened by tests.
	quitWait, termWait time.Duration

	// mu serialises QMP requests and Stop.
	mu      sync.Mutex
	stopped bool
}

var _ vmm.Machine = (*Machine)(nil)
var _ vmm.Stater = (*Machine)(nil)
var _ vmm.Snapshotter = (*Machine)(nil)

// newMachine wraps the QEMU process of spec, whose guest RAM is ram.
func newMachine(d *Driver, spec vmm.Spec, proc *vmmproc.Process, ram guestRAM) *Machine {
	return &Machine{
		log:      d.log.With("sandbox", spec.ID, "pid", proc.PID()),
		driver:   d,
		ram:      ram,
		spec:     spec,
		proc:     proc,
		quitWait: quitWait,
		termWait: termWait,
	}
}

// onExit is what runs when the QEMU of spec exits, whoever started it: its
// guest RAM file is deleted, or the link to the saved memory it mapped
// privately (the saved memory stays with its snapshot). It runs before the
// process's Done closes, so a new machine for the same directory, which can
// start only after that, never loses its file to it.
func (d *Driver) onExit(spec vmm.Spec) func(status string) {
	log, mem, link := d.log.With("sandbox", spec.ID), d.memPath(spec), ramLinkPath(spec.Dir)
	return func(status string) {
		log.Debug("qemu exited", "status", status)
		removeMemory(log, mem)
		removeMemory(log, link)
	}
}

// PID returns the QEMU process id.
func (m *Machine) PID() int { return m.proc.PID() }

// Done is closed when the QEMU process has exited.
func (m *Machine) Done() <-chan struct{} { return m.proc.Done() }

// Pause stops the guest's vCPUs.
func (m *Machine) Pause(ctx context.Context) error {
	if err := m.qmp(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("pause %s: %w", m.spec.ID, err)
	}
	return nil
}

// Resume starts the guest's vCPUs again.
func (m *Machine) Resume(ctx context.Context) error {
	if err := m.qmp(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume %s: %w", m.spec.ID, err)
	}
	return nil
}

// State reports QEMU's run state: vmm.StateRunning, vmm.StatePaused or
// QEMU's own name for any other state ("shutdown", "guest-panicked", ...).
// A machine that has been snapshotted ("postmigrate" to QEMU) is paused.
func (m *Machine) State(ctx context.Context) (vmm.State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st, err := m.stateLocked(ctx)
	if err != nil {
		return "", fmt.Errorf("query state of %s: %w", m.spec.ID, err)
	}
	return st, nil
}

func (m *Machine) stateLocked(ctx context.Context) (vmm.State, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := m.qmpLocked(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	if st.Status == "postmigrate" {
		return vmm.StatePaused, nil
	}
	return vmm.State(st.Status), nil
}

// qmp runs one command over a fresh QMP connection. It fails with
// vmm.ErrNotRunning once the process has exited, and gives up as soon as
// the process exits mid-request.
func (m *Machine) qmp(ctx context.Context, command string, args, out any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.qmpLocked(ctx, command, args, out)
}

func (m *Machine) qmpLocked(ctx context.Context, command string, args, out any) error {
	return m.qmpFileLocked(ctx, command, args, out, nil)
}

// qmpFileLocked is qmpLocked that passes f's descriptor along with the
// command.
func (m *Machine) qmpFileLocked(ctx context.Context, command string, args, out any, f *os.File) error {
	if m.proc.Exited() {
		return vmm.ErrNotRunning
	}
	ctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	stop := m.cancelOnExit(ctx, cancel)
	defer stop()
	conn, err := dialQMP(ctx, qmpPath(m.spec.Dir))
	if err == nil {
		err = conn.executeFile(ctx, command, args, out, f)
		conn.Close()
	}
	if err != nil && m.proc.Exited() {
		return fmt.Errorf("qmp %s: %w", command, vmm.ErrNotRunning)
	}
	return err
}

// cancelOnExit calls cancel when the process exits before ctx ends; the
// returned func stops watching.
func (m *Machine) cancelOnExit(ctx context.Context, cancel func()) (stop func()) {
	quit := make(chan struct{})
	go func() {
		select {
		case <-m.proc.Done():
			cancel()
		case <-ctx.Done():
		case <-quit:
		}
	}()
	return func() { close(quit) }
}

// Stop ends QEMU: QMP quit, then SIGTERM, then SIGKILL, each after a
// deadline. It always runs to the end, whatever ctx says (a stop is a
// release, and releases are not cancelled). Stopping a stopped machine
// returns nil.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	begin := time.Now()
	how, err := m.stopLocked(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("stop %s: %w", m.spec.ID, err)
	}
	m.stopped = true
	m.removeFiles()
	m.log.Info("vmm stopped", "how", how, "duration", time.Since(begin))
	return nil
}

func (m *Machine) stopLocked(ctx context.Context) (how string, err error) {
	if m.proc.Exited() {
		return "already exited", nil
	}
	qctx, cancel := context.WithTimeout(ctx, m.quitWait)
	qerr := m.qmpLocked(qctx, "quit", nil, nil)
	cancel()
	if qerr != nil {
		m.log.Debug("qmp quit", "err", qerr)
	}
	if m.proc.Wait(m.quitWait) {
		return "quit", nil
	}
	return m.proc.Terminate(m.termWait)
}

// kill ends the process at once; Start uses it to unwind.
func (m *Machine) kill() {
	if err := m.proc.Kill(); err != nil {
		m.log.Warn("kill qemu", "err", err)
	}
	m.removeFiles()
}

// removeMemory deletes the guest RAM file of an exited QEMU: without the
// process's device state it is of no use, and it holds host memory.
func removeMemory(log *slog.Logger, path string) {
	if path == "" {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("remove guest memory", "path", path, "err", err)
	}
}

// removeFiles deletes the control socket and pid file of an exited QEMU,
// so nothing mistakes them for a live machine's. Logs stay.
func (m *Machine) removeFiles() {
	for _, p := range []string{qmpPath(m.spec.Dir), pidPath(m.spec.Dir)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("remove vmm file", "path", p, "err", err)
		}
	}
}
