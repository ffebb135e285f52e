//go:build linux

package network

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread that is inside the network namespace at path.
// Processes started by fn (os/exec) and sockets or devices it creates belong to
// that namespace. fn runs on a goroutine of its own whose thread is locked for
// the whole call; if the thread cannot be moved back to the host namespace it
// is never unlocked, so the Go runtime retires it instead of reusing it in the
// wrong namespace.
func Do(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- doLocked(path, fn)
	}()
	return <-errc
}

// doLocked runs on a locked thread and unlocks it only once it is back home.
func doLocked(path string, fn func() error) error {
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return from netns %s: %w (after: %v)", path, err, fnErr)
	}
	runtime.UnlockOSThread()
	return fnErr
}
