//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/memory/uffd"
	"github.com/emberhq/ember/internal/vmm"
)

// killWait bounds the wait for the process to exit after SIGKILL.
const killWait = 5 * time.Second

// Machine is a Firecracker process, started by this driver or attached to
// by pid. It implements vmm.Machine, vmm.Stater and vmm.Snapshotter.
type Machine struct {
	log  *slog.Logger
	spec vmm.Spec
	pid  int
	jail *jail
	api  *client
	// trackDirty says whether Diff snapshots are possible.
	trackDirty bool
	stopWait   time.Duration
	// signal sends a signal to the process (through a pidfd when it is
	// not our child, so a recycled pid is never hit).
	signal func(syscall.Signal) error
	// done is closed once the process has exited.
	done chan struct{}
	// release stops watching an attached process (a failed Attach).
	release func()

	// mu serialises API requests that change state, and Stop.
	mu      sync.Mutex
	stopped bool
	// pages is the page server of a restored machine; it goes with it.
	pages     *uffd.Server
	pagesDone chan error
}

var (
	_ vmm.Machine     = (*Machine)(nil)
	_ vmm.Stater      = (*Machine)(nil)
	_ vmm.Snapshotter = (*Machine)(nil)
)

func newMachine(d *Driver, spec vmm.Spec, j *jail, pid int) *Machine {
	return &Machine{
		log: d.log.With("sandbox", spec.ID, "pid", pid), spec: spec, pid: pid, jail: j,
		api: newClient(j.ownHost(apiSocketName)), trackDirty: d.cfg.TrackDirtyPages,
		stopWait: d.cfg.StopWait, done: make(chan struct{}), release: func() {},
	}
}

// newChildMachine wraps a process this process started; a goroutine reaps
// it and closes done.
func newChildMachine(d *Driver, spec vmm.Spec, j *jail, cmd *exec.Cmd) *Machine {
	m := newMachine(d, spec, j, cmd.Process.Pid)
	m.signal = func(sig syscall.Signal) error { return cmd.Process.Signal(sig) }
	go func() {
		err := cmd.Wait()
		m.log.Debug("firecracker exited", "err", err)
		close(m.done)
	}()
	return m
}

// newAttachedMachine wraps a process that is not necessarily our child,
// given an open pidfd of it, which it takes over.
func newAttachedMachine(d *Driver, spec vmm.Spec, j *jail, pid, pidfd int) *Machine {
	m := newMachine(d, spec, j, pid)
	f := os.NewFile(uintptr(pidfd), fmt.Sprintf("pidfd:%d", pid))
	var once sync.Once
	stop := make(chan struct{})
	m.release = func() { once.Do(func() { close(stop) }) }
	m.signal = func(sig syscall.Signal) error {
		rc, err := f.SyscallConn()
		if err != nil {
			return os.ErrProcessDone
		}
		var sigErr error
		if err := rc.Control(func(fd uintptr) { sigErr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
			return os.ErrProcessDone
		}
		if errors.Is(sigErr, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return sigErr
	}
	go func() {
		defer f.Close()
		p := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n, _ := unix.Poll(p, 100); n > 0 {
				close(m.done)
				return
			}
		}
	}()
	return m
}

// PID returns the Firecracker (or jailer-exec'd Firecracker) process id.
func (m *Machine) PID() int { return m.pid }

// Done is closed when the process has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// hostLog is the host path of Firecracker's log.
func (m *Machine) hostLog() string { return m.jail.ownHost(logName) }

// setupLogging creates the log and metrics files (Firecracker opens, but
// does not create, them) and configures both: the first two requests of
// every boot and restore.
func (m *Machine) setupLogging(ctx context.Context) error {
	for _, name := range []string{logName, metricsName} {
		p := m.jail.ownHost(name)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		f.Close()
		if m.jail.jailed {
			os.Chown(p, m.jail.uid, m.jail.gid)
		}
	}
	if err := m.api.do(ctx, "PUT", "/logger", logger{LogPath: m.jail.own(logName), Level: "Info", ShowLevel: true}, nil); err != nil {
		return err
	}
	return m.api.do(ctx, "PUT", "/metrics", metrics{MetricsPath: m.jail.own(metricsName)}, nil)
}

// waitReady waits until the API socket answers GET /.
func (m *Machine) waitReady(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var info instanceInfo
		err := m.api.do(ctx, "GET", "/", nil, &info)
		if err == nil {
			return nil
		}
		select {
		case <-m.done:
			return &vmm.ExitError{VMM: "firecracker", During: "during start", Log: vmm.LogTail(vmm.ConsoleLog(m.spec.Dir))}
		case <-ctx.Done():
			return fmt.Errorf("wait for api socket: %w (last: %v)", context.Cause(ctx), err)
		case <-tick.C:
		}
	}
}

// servePages runs the page server of a restored machine until the machine
// goes away.
func (m *Machine) servePages(s *uffd.Server) {
	m.pages = s
	m.pagesDone = make(chan error, 1)
	go func() {
		err := s.Serve(context.Background())
		if err != nil && !errors.Is(err, uffd.ErrClosed) {
			m.log.Error("page server", "err", err)
		}
		m.pagesDone <- err
	}()
}

// Pause stops the vCPUs (PATCH /vm Paused).
func (m *Machine) Pause(ctx context.Context) error { return m.setState(ctx, "Paused") }

// Resume starts them again (PATCH /vm Resumed).
func (m *Machine) Resume(ctx context.Context) error { return m.setState(ctx, "Resumed") }

func (m *Machine) setState(ctx context.Context, state string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.exited() {
		return fmt.Errorf("set %s state %s: %w", m.spec.ID, state, vmm.ErrNotRunning)
	}
	if err := m.api.do(ctx, "PATCH", "/vm", vmState{State: state}, nil); err != nil {
		return fmt.Errorf("set %s state %s: %w", m.spec.ID, state, err)
	}
	return nil
}

// State reports the run state from GET /: running, paused, or "not
// started" before InstanceStart.
func (m *Machine) State(ctx context.Context) (vmm.State, error) {
	if m.exited() {
		return "", fmt.Errorf("state of %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	var info instanceInfo
	if err := m.api.do(ctx, "GET", "/", nil, &info); err != nil {
		return "", fmt.Errorf("state of %s: %w", m.spec.ID, err)
	}
	switch info.State {
	case "Running":
		return vmm.StateRunning, nil
	case "Paused":
		return vmm.StatePaused, nil
	}
	return vmm.State(info.State), nil
}

// Snapshot writes the paused machine's state (vmstate) and memory (memory)
// into dir. With opts.Diff and dirty page tracking on it writes a Diff
// snapshot, whose memory file holds only the pages dirtied since the last
// one; otherwise a Full snapshot.
func (m *Machine) Snapshot(ctx context.Context, dir string, opts vmm.SnapshotOptions) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.exited() {
		return fmt.Errorf("snapshot %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	typ := "Full"
	if opts.Diff && m.trackDirty {
		typ = "Diff"
	}
	state, mem := filepath.Join(dir, stateFile), filepath.Join(dir, memoryFile)
	req := snapshotCreate{SnapshotType: typ, SnapshotPath: state, MemFilePath: mem}
	if m.jail.jailed {
		req.SnapshotPath, req.MemFilePath = m.jail.own(stateFile), m.jail.own(memoryFile)
	}
	begin := time.Now()
	if err := m.api.do(ctx, "PUT", "/snapshot/create", req, nil); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.spec.ID, err)
	}
	if err := errors.Join(m.jail.export(stateFile, state), m.jail.export(memoryFile, mem)); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.spec.ID, err)
	}
	m.log.Info("vmm snapshot", "type", typ, "dir", dir, "duration", time.Since(begin))
	return nil
}

// Stop asks the guest to shut down (SendCtrlAltDel), kills the process if
// it has not exited within the driver's StopWait, and removes the jail and
// the page server. It is idempotent.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	var errs []error
	// A paused guest cannot act on ctrl-alt-del: kill it straight away.
	if st, err := m.State(ctx); err == nil && st == vmm.StateRunning {
		if err := m.api.do(ctx, "PUT", "/actions", action{ActionType: "SendCtrlAltDel"}, nil); err != nil {
			m.log.Debug("ctrl-alt-del refused", "err", err)
		} else {
			select {
			case <-m.done:
			case <-time.After(m.stopWait):
			}
		}
	}
	if !m.exited() {
		if err := m.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("kill firecracker %d: %w", m.pid, err))
		}
		select {
		case <-m.done:
		case <-time.After(killWait):
			errs = append(errs, fmt.Errorf("firecracker %d still running %s after SIGKILL", m.pid, killWait))
		}
	}
	if !m.stopped {
		m.stopped = true
		if m.pages != nil {
			errs = append(errs, m.pages.Close())
		}
		errs = append(errs, m.jail.remove())
		m.log.Info("vmm stopped")
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop %s: %w", m.spec.ID, err)
	}
	return nil
}

// kill ends a machine whose start failed, without asking the guest.
func (m *Machine) kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.exited() {
		m.signal(syscall.SIGKILL)
		select {
		case <-m.done:
		case <-time.After(killWait):
		}
	}
	if !m.stopped {
		m.stopped = true
		if m.pages != nil {
			m.pages.Close()
		}
		m.jail.remove()
	}
}
