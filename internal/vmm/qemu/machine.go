//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/vmm"
)

// Stop's escalation deadlines: how long QEMU gets to quit after QMP quit,
// then after SIGTERM; after SIGKILL Stop waits up to killWait for the exit.
const (
	quitWait = 2 * time.Second
	termWait = 2 * time.Second
	killWait = 5 * time.Second
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
	// memPath is the file holding guest RAM, "" when RAM is anonymous.
	memPath string
	// accel is the accelerator the machine runs under.
	accel string
	spec  vmm.Spec
	pid   int
	// signal sends a signal to the process (through a pidfd where the
	// process is not our child, so a recycled pid is never hit).
	signal func(syscall.Signal) error
	// done is closed once the process has exited.
	done chan struct{}

	// Stop's deadlines, shortened by tests.
	quitWait, termWait time.Duration

	// mu serialises QMP requests and Stop.
	mu      sync.Mutex
	stopped bool
}

var _ vmm.Machine = (*Machine)(nil)
var _ vmm.Stater = (*Machine)(nil)
var _ vmm.Snapshotter = (*Machine)(nil)

// newChildMachine wraps a QEMU process d started; a goroutine reaps it,
// deletes its guest RAM and closes done.
func newChildMachine(d *Driver, spec vmm.Spec, cmd *exec.Cmd) *Machine {
	m := newMachine(d, spec, cmd.Process.Pid)
	m.signal = func(sig syscall.Signal) error { return cmd.Process.Signal(sig) }
	go func() {
		err := cmd.Wait()
		m.log.Debug("qemu exited", "pid", m.pid, "status", exitStatus(cmd, err))
		m.removeMemory()
		close(m.done)
	}()
	return m
}

// newAttachedMachine wraps a QEMU process that is not necessarily our child
// (a daemon restart reparents it), given an open pidfd of it, which it takes
// over. Its exit is observed through the pidfd (then its guest RAM is
// deleted); release stops that.
func newAttachedMachine(d *Driver, spec vmm.Spec, pid, pidfd int) (m *Machine, release func()) {
	f := os.NewFile(uintptr(pidfd), fmt.Sprintf("pidfd:%d", pid))
	m = newMachine(d, spec, pid)
	m.signal = func(sig syscall.Signal) error {
		rc, err := f.SyscallConn()
		if err != nil {
			return err
		}
		var sigErr error
		if err := rc.Control(func(fd uintptr) {
			sigErr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
		}); err != nil {
			return os.ErrProcessDone // the watcher closed the pidfd: exited
		}
		if errors.Is(sigErr, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return sigErr
	}
	var released atomic.Bool
	go func() {
		waitPidfd(f, &released)
		if !released.Load() {
			f.Close()
			m.removeMemory()
			close(m.done)
		}
	}()
	return m, func() {
		released.Store(true)
		f.Close()
	}
}

func newMachine(d *Driver, spec vmm.Spec, pid int) *Machine {
	return &Machine{
		log:      d.log.With("sandbox", spec.ID, "pid", pid),
		driver:   d,
		memPath:  d.memPath(spec),
		spec:     spec,
		pid:      pid,
		done:     make(chan struct{}),
		quitWait: quitWait,
		termWait: termWait,
	}
}

// waitPidfd blocks until the process behind the pidfd has exited or the
// file is released. A pidfd turns readable at exit; the runtime's poller
// waits for that without holding a thread. Should the file not be pollable,
// a blocking poll(2) does the same on a thread of its own.
func waitPidfd(f *os.File, released *atomic.Bool) {
	exited := func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	}
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Read(exited)
	}
	if err == nil || released.Load() {
		return
	}
	rc.Control(func(fd uintptr) {
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				return
			}
		}
	})
}

// PID returns the QEMU process id.
func (m *Machine) PID() int { return m.pid }

// Done is closed when the QEMU process has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

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
	if m.exited() {
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
	if err != nil && m.exited() {
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
		case <-m.done:
			cancel()
		case <-ctx.Done():
		case <-quit:
		}
	}()
	return func() { close(quit) }
}

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
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
	if m.exited() {
		return "already exited", nil
	}
	qctx, cancel := context.WithTimeout(ctx, m.quitWait)
	qerr := m.qmpLocked(qctx, "quit", nil, nil)
	cancel()
	if qerr != nil {
		m.log.Debug("qmp quit", "err", qerr)
	}
	if m.waitExit(m.quitWait) {
		return "quit", nil
	}
	if err := m.signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		m.log.Warn("sigterm qemu", "err", err)
	}
	if m.waitExit(m.termWait) {
		return "sigterm", nil
	}
	if err := m.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return "", fmt.Errorf("sigkill pid %d: %w", m.pid, err)
	}
	if m.waitExit(killWait) {
		return "sigkill", nil
	}
	return "", fmt.Errorf("pid %d still running %s after sigkill", m.pid, killWait)
}

// kill ends the process at once; Start uses it to unwind.
func (m *Machine) kill() {
	if err := m.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		m.log.Warn("sigkill qemu", "err", err)
	}
	m.waitExit(killWait)
	m.removeFiles()
}

// waitExit waits up to d for the process to exit and reports whether it did.
func (m *Machine) waitExit(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.done:
		return true
	case <-t.C:
		return false
	}
}

// removeMemory deletes the guest RAM file of an exited QEMU: without the
// process's device state it is of no use, and it holds host memory. It
// runs before done closes, so a new machine for the same directory, which
// can start only after that, never loses its file to it.
func (m *Machine) removeMemory() {
	if m.memPath == "" {
		return
	}
	if err := os.Remove(m.memPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("remove guest memory", "path", m.memPath, "err", err)
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

// exitStatus describes how a reaped child ended.
func exitStatus(cmd *exec.Cmd, err error) string {
	if cmd.ProcessState != nil {
		return cmd.ProcessState.String()
	}
	return err.Error()
}
