//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/memory/uffd"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// Machine is a Firecracker process, started by this driver or attached to
// by pid. It implements vmm.Machine, vmm.Stater and vmm.Snapshotter.
type Machine struct {
	log  *slog.Logger
	spec vmm.Spec
	jail *jail
	api  *client
	proc *vmmproc.Process
	// trackDirty says whether Diff snapshots are possible.
	trackDirty bool
	// stopWait is how long Stop waits for the guest to shut down after
	// ctrl-alt-del, termWait how long for Firecracker to exit after
	// SIGTERM.
	stopWait, termWait time.Duration

	// mu serialises API requests that change state, and Stop.
	mu      sync.Mutex
	stopped bool
	// pages is the page server of a restored machine served in the
	// daemon; helper is its process when it has one of its own. Either
	// goes with the machine.
	pages     *uffd.Server
	pagesDone chan error
	helper    *vmmproc.Process
}

var (
	_ vmm.Machine     = (*Machine)(nil)
	_ vmm.Stater      = (*Machine)(nil)
	_ vmm.Snapshotter = (*Machine)(nil)
)

// newMachine wraps the Firecracker process of spec.
func newMachine(d *Driver, spec vmm.Spec, j *jail, proc *vmmproc.Process) *Machine {
	return &Machine{
		log: d.log.With("sandbox", spec.ID, "pid", proc.PID()), spec: spec, jail: j, proc: proc,
		api: newClient(j.ownHost(apiSocketName)), trackDirty: d.cfg.TrackDirtyPages,
		stopWait: d.cfg.StopWait, termWait: vmmproc.TermWait,
	}
}

// PID returns the Firecracker (or jailer-exec'd Firecracker) process id.
func (m *Machine) PID() int { return m.proc.PID() }

// Done is closed when the process has exited.
func (m *Machine) Done() <-chan struct{} { return m.proc.Done() }

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
		if err := f.Close(); err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		// Firecracker, as the jail's user, opens them for writing.
		if err := m.jail.give(p); err != nil {
			return err
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
		case <-m.proc.Done():
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
	if m.stopped || m.proc.Exited() {
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
	if m.proc.Exited() {
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
// into dir, and its shape (machine.json), which Restore holds a spec to.
// With opts.Diff and dirty page tracking on it writes a Diff snapshot,
// whose memory file holds only the pages dirtied since the last one;
// otherwise a Full snapshot.
func (m *Machine) Snapshot(ctx context.Context, dir string, opts vmm.SnapshotOptions) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.proc.Exited() {
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
	if err := writeShape(dir, m.spec); err != nil {
		return fmt.Errorf("snapshot %s: %w", m.spec.ID, err)
	}
	m.log.Info("vmm snapshot", "type", typ, "dir", dir, "duration", time.Since(begin))
	return nil
}

// Stop asks the guest to shut down (SendCtrlAltDel), ends the process
// with SIGTERM and then SIGKILL if it has not exited within the driver's
// StopWait, and removes the jail and the page server. It is idempotent.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	how := "ctrl-alt-del"
	// A paused guest cannot act on ctrl-alt-del: terminate it straight
	// away.
	if st, err := m.State(ctx); err != nil || st != vmm.StateRunning {
		how = ""
	} else if err := m.api.do(ctx, "PUT", "/actions", action{ActionType: "SendCtrlAltDel"}, nil); err != nil {
		m.log.Debug("ctrl-alt-del refused", "err", err)
		how = ""
	} else if !m.proc.Wait(m.stopWait) {
		how = ""
	}
	var errs []error
	if how == "" {
		var err error
		if how, err = m.proc.Terminate(m.termWait); err != nil {
			errs = append(errs, err)
		}
	}
	if !m.stopped {
		m.stopped = true
		errs = append(errs, m.releaseLocked())
		m.log.Info("vmm stopped", "how", how)
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
	if err := m.proc.Kill(); err != nil {
		m.log.Warn("kill firecracker", "err", err)
	}
	if !m.stopped {
		m.stopped = true
		if err := m.releaseLocked(); err != nil {
			m.log.Warn("release firecracker", "err", err)
		}
	}
}

// releaseLocked closes the page server and removes the jail of a machine
// whose process has exited.
func (m *Machine) releaseLocked() error {
	var errs []error
	if m.pages != nil {
		if err := m.pages.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close page server: %w", err))
		}
	}
	errs = append(errs, m.stopHelper())
	return errors.Join(append(errs, m.jail.remove())...)
}
