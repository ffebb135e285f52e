//go:build linux

// Package netns creates, enters and removes named network namespaces, as
// iproute2's "ip netns" does: a namespace called NAME is bind-mounted at
// /run/netns/NAME. It is the one place ember touches namespaces from, shared
// by the network slots and the VMM drivers that start processes inside them.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces are bind-mounted.
const Dir = "/run/netns"

// Path returns the mount point of the namespace called name.
func Path(name string) string { return Dir + "/" + name }

// Do runs fn on an OS thread that is inside the network namespace at path.
// Processes started by fn (os/exec) and sockets or devices it creates belong
// to that namespace. fn runs on a goroutine of its own whose thread is
// locked for the whole call; if the thread cannot be moved back to the
// namespace it started in, it is never unlocked, so the Go runtime retires
// it instead of reusing it in the wrong namespace.
func Do(path string, fn func() error) error {
	return onThread(func() error {
		target, err := vnetns.GetFromPath(path)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", path, err)
		}
		defer target.Close()
		if err := vnetns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// onThread runs fn on a fresh goroutine locked to its OS thread; fn may move
// the thread to another network namespace. Afterwards the thread is moved
// back to the namespace it started in and unlocked only if that worked;
// otherwise the goroutine ends still locked and the runtime retires the
// thread.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		fnErr := fn()
		if err := vnetns.Set(orig); err != nil {
			errc <- fmt.Errorf("return to original netns: %w (after: %v)", err, fnErr)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// Create makes the named namespace and bind-mounts it at Path(name). It
// returns an error wrapping os.ErrExist when the name is taken. Dir is made
// a shared mount of its own first (ShareDir), so the namespace stays
// visible and removable whatever else mounts there later. The caller's
// thread never changes namespace.
func Create(name string) error {
	if err := ShareDir(); err != nil {
		return err
	}
	path := Path(name)
	err := onThread(func() error {
		h, err := vnetns.NewNamed(name)
		if err != nil {
			return err
		}
		return h.Close()
	})
	if err == nil || errors.Is(err, os.ErrExist) {
		return err
	}
	// NewNamed leaves its mount point file behind when the bind mount
	// fails; the name did not exist before (else the error is ErrExist),
	// so the file is ours to remove unless a namespace is mounted on it
	// after all.
	if !IsMounted(path) {
		_ = os.Remove(path)
	}
	return fmt.Errorf("create netns %s: %w", name, err)
}

// Delete unmounts and removes the named namespace's bind mount. A namespace
// that is already gone is success. The kernel destroys the namespace, and
// the devices in it, once nothing else holds it.
func Delete(name string) error {
	err := vnetns.DeleteNamed(name)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, unix.EINVAL):
		// Not a mount point: a leftover file from a creation that failed
		// half-way.
		if err := os.Remove(Path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete netns %s: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("delete netns %s: %w", name, err)
}

// Exists reports whether anything is at the namespace's mount point.
func Exists(name string) bool {
	_, err := os.Lstat(Path(name))
	return err == nil
}

// IsMounted reports whether a network namespace is mounted at path.
func IsMounted(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// shareMu serialises ShareDir within the process; a flock on Dir itself
// serialises it across processes.
var shareMu sync.Mutex

// ShareDir makes Dir a shared mount of its own, as iproute2's "ip netns
// add" does the first time it runs. A namespace bind-mounted on a plain
// directory is shadowed when ip (or anyone) later bind-mounts the directory
// over itself: its file can then be neither unmounted nor removed. With the
// directory already a mount, ip leaves it alone and every namespace mount
// lands on it, visible and removable. Calling it again is cheap and
// harmless.
func ShareDir() error {
	shareMu.Lock()
	defer shareMu.Unlock()
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	// Two processes that both find a plain directory must not both
	// bind-mount it, or the second mount would shadow what the first
	// process creates in between.
	d, err := os.Open(Dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", Dir, err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", Dir, err)
	}
	err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", Dir, err)
		}
		err = unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", Dir, err)
	}
	return nil
}
