//go:build linux

package network

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread that is inside the network namespace at path.
// Processes started by fn (os/exec) and sockets or devices it creates belong to
// that namespace. fn runs on a goroutine of its own whose thread is locked for
// the whole call; if the thread cannot be moved back to the host namespace it
// is never unlocked, so the Go runtime retires it instead of reusing it in the
// wrong namespace.
func Do(path string, fn func() error) error {
	return onThread(func() error {
		target, err := netns.GetFromPath(path)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", path, err)
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// onThread runs fn on a fresh goroutine locked to its OS thread; fn may move
// the thread to another network namespace. Afterwards the thread is moved back
// to the namespace it started in and unlocked only if that worked; otherwise
// the goroutine ends still locked and the runtime retires the thread.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("return to original netns: %w (after: %v)", err, fnErr)
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// createNetns creates the named namespace and bind-mounts it at
// /run/netns/<name>. It returns an error wrapping os.ErrExist when the name
// is taken. The caller's thread never changes namespace.
func createNetns(name string) error {
	path := netnsDir + "/" + name
	err := onThread(func() error {
		h, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		return h.Close()
	})
	if err == nil || errors.Is(err, os.ErrExist) {
		return err
	}
	// NewNamed leaves its mount point file behind when the bind mount fails;
	// the name did not exist before (else the error is ErrExist), so the file
	// is ours to remove unless a namespace is mounted on it after all.
	if !isNetnsMount(path) {
		_ = os.Remove(path)
	}
	return err
}

// deleteNetns unmounts and removes the named namespace's bind mount. A
// namespace that is already gone is success. The kernel destroys the
// namespace, and the devices in it, once nothing else holds it.
func deleteNetns(name string) error {
	err := netns.DeleteNamed(name)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, unix.EINVAL):
		// Not a mount point: a leftover file from a creation that failed
		// half-way.
		if err := os.Remove(netnsDir + "/" + name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return err
}

// netnsExists reports whether anything is at the namespace's mount point.
func netnsExists(name string) bool {
	_, err := os.Lstat(netnsDir + "/" + name)
	return err == nil
}

// isNetnsMount reports whether a network namespace is mounted at path.
func isNetnsMount(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// shareNetnsDir makes /run/netns a shared mount of its own, as iproute2's
// "ip netns add" does the first time it runs. A namespace bind-mounted on a
// plain directory is shadowed when ip later bind-mounts the directory over
// itself: its file can then be neither unmounted nor removed. With the
// directory already a mount, ip leaves it alone and every namespace mount
// lands on it, visible and removable.
func shareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	return nil
}
