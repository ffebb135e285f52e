//go:build linux

package devmapper

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/emberhq/ember/internal/rootfs/loop"
)

// LoopRegistry shares one read-only loop device per base image between
// every disk made from it, counting the disks (holders) that use it. The
// registry holds the device open while any holder is registered; the device
// carries the autoclear flag, so once the last holder is released and the
// last device-mapper table over it is gone the kernel unbinds it. After a
// restart the registry adopts a device still bound to the same image
// (read-only) instead of binding another, so nothing accumulates.
type LoopRegistry struct {
	// mu guards loops and each entry's holders; it is never held across
	// binding or closing a device. An entry being bound is in loops
	// already, so two disks over a new image never bind it twice: the
	// second waits on the entry's ready, and disks over other images do
	// not wait at all.
	mu    sync.Mutex
	loops map[string]*shared
}

// shared is one base image's device and the disks holding it.
type shared struct {
	// ready is closed once dev is bound or err says why not.
	ready   chan struct{}
	dev     *loop.Device
	err     error
	holders map[string]bool
}

// NewLoopRegistry returns an empty registry.
func NewLoopRegistry() *LoopRegistry {
	return &LoopRegistry{loops: map[string]*shared{}}
}

// canonical is the path the kernel reports for a loop device's backing
// file: absolute, symlinks resolved.
func canonical(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// Acquire registers holder on base's loop device, binding or adopting the
// device if base has none yet, and returns the device's path. Acquiring
// twice for one holder counts once.
func (r *LoopRegistry) Acquire(base, holder string) (string, error) {
	base, err := canonical(base)
	if err != nil {
		return "", fmt.Errorf("acquire loop device for %s: %w", base, err)
	}
	for {
		r.mu.Lock()
		s := r.loops[base]
		if s == nil {
			s = &shared{ready: make(chan struct{}), holders: map[string]bool{holder: true}}
			r.loops[base] = s
			r.mu.Unlock()
			return r.bind(base, s)
		}
		r.mu.Unlock()
		<-s.ready
		r.mu.Lock()
		if r.loops[base] == s {
			// Bound (a failed bind leaves the map), and not released
			// meanwhile.
			s.holders[holder] = true
			path := s.dev.Path
			r.mu.Unlock()
			return path, nil
		}
		r.mu.Unlock()
		if s.err != nil {
			return "", s.err
		}
		// Released while we waited: bind or adopt afresh.
	}
}

// bind binds or adopts base's device for the new entry s, outside the lock.
func (r *LoopRegistry) bind(base string, s *shared) (string, error) {
	dev, err := adopt(base)
	if err == nil && dev == nil {
		dev, err = loop.Attach(base, true)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s.dev, s.err = dev, err
	if err != nil {
		delete(r.loops, base)
	}
	close(s.ready)
	if err != nil {
		return "", err
	}
	return dev.Path, nil
}

// adopt opens a read-only loop device already bound to base, or returns
// nil when there is none.
func adopt(base string) (*loop.Device, error) {
	ns, err := loop.Bound(func(b string) bool { return b == base })
	if err != nil {
		return nil, fmt.Errorf("find loop devices over %s: %w", base, err)
	}
	for _, n := range ns {
		ro, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/ro", n))
		if err != nil || strings.TrimSpace(string(ro)) != "1" {
			continue
		}
		if d, err := loop.Open(n, base); err == nil {
			return d, nil
		}
	}
	return nil, nil
}

// Release drops holder's registration on base's device; releasing a holder
// that is not registered does nothing. The last release closes the
// registry's hold on the device.
func (r *LoopRegistry) Release(base, holder string) error {
	base, err := canonical(base)
	if err != nil {
		// A base that is gone cannot be registered.
		return nil
	}
	r.mu.Lock()
	s := r.loops[base]
	if s == nil || !s.holders[holder] {
		r.mu.Unlock()
		return nil
	}
	delete(s.holders, holder)
	last := len(s.holders) == 0
	if last {
		delete(r.loops, base)
	}
	r.mu.Unlock()
	if !last {
		return nil
	}
	if err := s.dev.Close(); err != nil {
		return fmt.Errorf("release loop device %s for %s: %w", s.dev.Path, base, err)
	}
	return nil
}

// Holders returns how many disks hold base's device.
func (r *LoopRegistry) Holders(base string) int {
	base, err := canonical(base)
	if err != nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.loops[base]; s != nil {
		return len(s.holders)
	}
	return 0
}
