//go:build linux

package server

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// credential is what a child process of this user runs with.
func (a *account) credential() *syscall.Credential {
	if os.Geteuid() != 0 {
		return nil // the agent's own user (account refuses others)
	}
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}

// as runs fn with the kernel checking every file system access against the
// user's identity, and making new files theirs: on a thread of its own
// whose filesystem uid, gid and groups are the user's. Those are
// per-thread attributes on Linux (the raw syscalls, not Go's all-threads
// wrappers), so the thread is never unlocked: it exits with the goroutine
// instead of going back to the runtime with another user's identity.
func (a *account) as(fn func() error) error {
	if os.Geteuid() != 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		groups := make([]int, 0, len(a.groups)+1)
		groups = append(groups, int(a.gid))
		for _, g := range a.groups {
			groups = append(groups, int(g))
		}
		// unix.Setgroups is the raw, per-thread syscall.
		if err := unix.Setgroups(groups); err != nil {
			errc <- fmt.Errorf("set groups of user %q: %w", a.name, err)
			return
		}
		// setfsgid and setfsuid report the previous id, not errors; the
		// values are checked by reading them back.
		_, _ = unix.SetfsgidRetGid(int(a.gid))
		_, _ = unix.SetfsuidRetUid(int(a.uid))
		if got, _ := unix.SetfsuidRetUid(-1); got != int(a.uid) {
			errc <- fmt.Errorf("set filesystem uid to %d for user %q: still %d", a.uid, a.name, got)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
