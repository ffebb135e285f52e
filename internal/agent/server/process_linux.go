//go:build linux

package server

import (
	"errors"
	"fmt"
	"syscall"
)

// groupAttr puts a child in a process group of its own, so a signal reaches
// everything it spawned and nothing of ours.
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to the process group led by pid. A group that is
// already gone counts as signalled.
func signalGroup(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal process group %d with %v: %w", pid, sig, err)
	}
	return nil
}
