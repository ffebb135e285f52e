//go:build linux

// Package vmmproc is the process plumbing every VMM driver needs, in one
// place so that each driver owns only what is its own (its command line,
// its control protocol, its identity rule): starting the VMM in a process
// group of its own inside the machine's network namespace, watching its
// exit through a pidfd the Go runtime's poller waits on (no thread and no
// timer per machine), stopping it with SIGTERM then SIGKILL after
// deadlines, adopting a VMM an earlier daemon started once its command line
// proves it is that machine's, ending the orphans nobody adopted, and the
// spec checks and log tails the drivers' errors carry.
package vmmproc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/vmm"
)

// Deadlines of Terminate and Kill.
const (
	// TermWait is how long a VMM gets to exit after SIGTERM before it is
	// sent SIGKILL, where its driver sets no other.
	TermWait = 2 * time.Second
	// KillWait bounds the wait for the exit after SIGKILL: the kernel
	// ends a killed process at once, but freeing gigabytes of guest
	// memory takes a moment.
	KillWait = 5 * time.Second
)

// Process is one VMM process: a child the daemon started (Start) or one
// adopted by pid (Adopt), typically started by an earlier daemon. Its exit
// is watched through a pidfd, and every signal goes through that pidfd, so
// a recycled pid is never hit.
type Process struct {
	pid  int
	args []string
	// group is set when the process leads its own process group: signals
	// go to the whole group.
	group bool
	pidfd *os.File
	// cmd is set for a child, which is reaped once it has exited.
	cmd *exec.Cmd
	// exited runs after the exit, before done closes.
	exited func(status string)
	done   chan struct{}
	// released is set by Release: the watcher then ends without running
	// exited or closing done.
	released atomic.Bool
}

// Start starts cmd in a process group of its own, with its thread inside
// the network namespace at netnsPath ("" for the current one). Its own
// group keeps the daemon's signals (a ^C) from reaching the VMM, which
// outlives the daemon, and lets Terminate reach whatever the VMM starts.
// exited, when set, runs once the process has exited and been reaped, with
// how it ended ("exit status 1", "signal: killed"), before Done closes.
func Start(cmd *exec.Cmd, netnsPath string, exited func(status string)) (*Process, error) {
	attr := &syscall.SysProcAttr{}
	if cmd.SysProcAttr != nil {
		a := *cmd.SysProcAttr
		attr = &a
	}
	pidfd := -1
	attr.Setpgid, attr.PidFD = true, &pidfd
	cmd.SysProcAttr = attr
	var err error
	if netnsPath == "" {
		err = cmd.Start()
	} else {
		err = netns.Do(netnsPath, cmd.Start)
	}
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	// abandon ends a child that cannot be watched.
	abandon := func() {
		unix.Kill(-pid, unix.SIGKILL)
		cmd.Wait()
	}
	if pidfd < 0 {
		// No CLONE_PIDFD. A child stays ours until we reap it, so its
		// pid cannot be recycled before this opens it.
		if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
			abandon()
			return nil, fmt.Errorf("open pidfd of %s (pid %d): %w", cmd.Path, pid, err)
		}
	}
	p, err := watch(pid, pidfd, cmd.Args, true, exited)
	if err != nil {
		abandon()
		return nil, err
	}
	p.cmd = cmd
	go p.wait()
	return p, nil
}

// Adopt takes over pid, a VMM started earlier (usually by an earlier
// daemon), once its command line carries id. It opens a pidfd first, which
// pins the process, then reads the command line, then checks through the
// pidfd that the process is still there, so the command line it read
// cannot have been a recycled pid's. It fails with vmm.ErrNotRunning when
// pid is gone or is not that VMM. exited is as for Start (the status of a
// process that is not our child is not known: "exited"). A caller that does
// not keep the process calls Release.
func Adopt(pid int, id Identity, exited func(status string)) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, vmm.ErrNotRunning)
	}
	pidfd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("pid %d: %w", pid, vmm.ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("open pidfd of %d: %w", pid, err)
	}
	args, err := Cmdline(pid)
	if err == nil && !id.In(args) {
		err = fmt.Errorf("pid %d does not carry %s: %w", pid, id, vmm.ErrNotRunning)
	}
	pgid, gerr := unix.Getpgid(pid)
	if err == nil && (gerr != nil || unix.PidfdSendSignal(pidfd, 0, nil, 0) != nil) {
		err = fmt.Errorf("pid %d exited while adopted: %w", pid, vmm.ErrNotRunning)
	}
	if err != nil {
		unix.Close(pidfd)
		return nil, err
	}
	p, err := watch(pid, pidfd, args, pgid == pid, exited)
	if err != nil {
		return nil, err
	}
	go p.wait()
	return p, nil
}

// watch wraps an open pidfd, which it takes over, in a Process.
func watch(pid, pidfd int, args []string, group bool, exited func(string)) (*Process, error) {
	// Non-blocking, the file goes to the runtime's poller.
	if err := unix.SetNonblock(pidfd, true); err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("set pidfd of %d non-blocking: %w", pid, err)
	}
	return &Process{
		pid: pid, args: args, group: group, exited: exited, done: make(chan struct{}),
		pidfd: os.NewFile(uintptr(pidfd), fmt.Sprintf("pidfd:%d", pid)),
	}, nil
}

// wait waits for the exit, reaps a child, runs exited and closes done.
func (p *Process) wait() {
	waitPidfd(p.pidfd)
	if p.released.Load() {
		return
	}
	status := "exited"
	if p.cmd != nil {
		err := p.cmd.Wait()
		if p.cmd.ProcessState != nil {
			status = p.cmd.ProcessState.String()
		} else if err != nil {
			status = err.Error()
		}
	}
	// Signal sees the closed file as the exit it is.
	p.pidfd.Close()
	if p.exited != nil {
		p.exited(status)
	}
	close(p.done)
}

// waitPidfd blocks until the process behind the pidfd has exited or the
// file is closed. A pidfd turns readable at the exit, and the runtime's
// poller waits for that without holding a thread; should the file not be
// pollable, a blocking poll(2) waits on a thread of its own.
func waitPidfd(f *os.File) {
	exited := func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	if rc.Read(exited) == nil {
		return
	}
	// Not pollable, or closed by Release; Control fails on a closed
	// file, which leaves nothing to wait for.
	_ = rc.Control(func(fd uintptr) {
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
				return
			}
		}
	})
}

// PID returns the process id.
func (p *Process) PID() int { return p.pid }

// Args returns the process's command line: the one it was started with,
// or, adopted, the one Adopt read.
func (p *Process) Args() []string { return p.args }

// Done is closed once the process has exited (and, a child, been reaped)
// and exited has run.
func (p *Process) Done() <-chan struct{} { return p.done }

// Unanswered turns an adopted process's failure to answer its control
// socket into Attach's error: vmm.ErrNotRunning when it exited meanwhile,
// vmm.ErrUnresponsive when it is still there. The process is released
// either way.
func (p *Process) Unanswered(err error) error {
	defer p.Release()
	// A VMM that is exiting stops answering first: give its exit a moment
	// to show.
	select {
	case <-p.done:
		return fmt.Errorf("pid %d: %w: %w", p.PID(), vmm.ErrNotRunning, err)
	case <-time.After(unansweredGrace):
		return fmt.Errorf("pid %d: %w: %w", p.PID(), vmm.ErrUnresponsive, err)
	}
}

// unansweredGrace is how long Unanswered waits for an exit.
const unansweredGrace = 200 * time.Millisecond

// Exited reports whether Done is closed.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits up to d for the exit and reports whether it came.
func (p *Process) Wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// Signal sends sig to the process and, where it leads one, to its process
// group. It returns os.ErrProcessDone once the process has exited.
func (p *Process) Signal(sig syscall.Signal) error {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return os.ErrProcessDone
	}
	var sigErr error
	if err := rc.Control(func(fd uintptr) { sigErr = send(int(fd), p.pid, sig, p.group) }); err != nil {
		return os.ErrProcessDone // the watcher closed the pidfd at the exit
	}
	if errors.Is(sigErr, unix.ESRCH) {
		return os.ErrProcessDone
	}
	return sigErr
}

// send sends sig through pidfd, to the process group the process leads
// when group is set.
func send(pidfd, pid int, sig syscall.Signal, group bool) error {
	if !group {
		return unix.PidfdSendSignal(pidfd, sig, nil, 0)
	}
	err := unix.PidfdSendSignal(pidfd, sig, nil, unix.PIDFD_SIGNAL_PROCESS_GROUP)
	if !errors.Is(err, unix.EINVAL) {
		return err
	}
	// Before Linux 6.9: the leader through its pidfd, then the group by
	// number, which cannot have been reused while its leader was there a
	// moment ago.
	if err := unix.PidfdSendSignal(pidfd, sig, nil, 0); err != nil {
		return err
	}
	if err := unix.Kill(-pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// Terminate ends the process: SIGTERM, then SIGKILL when it has not exited
// within term, both to its process group where it leads one, then a wait
// of up to KillWait for the exit. how says which signal ended it
// ("sigterm", "sigkill"), or "exited" when it had exited already.
func (p *Process) Terminate(term time.Duration) (how string, err error) {
	if p.Exited() {
		return "exited", nil
	}
	termErr := p.Signal(syscall.SIGTERM)
	if errors.Is(termErr, os.ErrProcessDone) {
		termErr = nil
	} else if termErr != nil {
		termErr = fmt.Errorf("sigterm pid %d: %w", p.pid, termErr)
	}
	if p.Wait(term) {
		return "sigterm", nil
	}
	if err := p.Kill(); err != nil {
		return "", errors.Join(termErr, err)
	}
	return "sigkill", nil
}

// Kill sends SIGKILL (to the process group where the process leads one)
// and waits up to KillWait for the exit. Killing an exited process is
// success.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sigkill pid %d: %w", p.pid, err)
	}
	if !p.Wait(KillWait) {
		return fmt.Errorf("pid %d still running %s after sigkill", p.pid, KillWait)
	}
	return nil
}

// Release stops watching an adopted process the caller does not keep (an
// Attach whose VMM does not answer): it closes the pidfd, and Done never
// closes. The process itself is left alone. A child is never released: it
// must be reaped.
func (p *Process) Release() {
	if p.cmd != nil {
		return
	}
	p.released.Store(true)
	p.pidfd.Close()
}
