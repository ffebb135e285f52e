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
	// mu guards loops and is held across binding a device, so two disks
	// over a new image never bind it twice.
	mu    sync.Mutex
	loops map[string]*shared
}

// shared is one base image's device and the disks holding it.
type shared struct {
	dev     *loop.Device
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
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.loops[base]
	if s == nil {
		dev, err := adopt(base)
		if err != nil {
			return "", err
		}
		if dev == nil {
			if dev, err = loop.Attach(base, true); err != nil {
				return "", err
			}
		}
		s = &shared{dev: dev, holders: map[string]bool{}}
		r.loops[base] = s
	}
	s.holders[holder] = true
	return s.dev.Path, nil
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
	defer r.mu.Unlock()
	s := r.loops[base]
	if s == nil || !s.holders[holder] {
		return nil
	}
	delete(s.holders, holder)
	if len(s.holders) > 0 {
		return nil
	}
	delete(r.loops, base)
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
