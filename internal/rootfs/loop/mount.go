//go:build linux

package loop

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Mount mounts the filesystem image img at dir through a loop device and
// returns the unmount. The mount holds the device, so unmounting unbinds
// it; nothing else is left to clean up.
func Mount(img, fstype, dir string) (unmount func() error, err error) {
	d, err := Attach(img, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if err := unix.Mount(d.Path, dir, fstype, 0, ""); err != nil {
		return nil, fmt.Errorf("mount %s (%s on %s) at %s: %w", img, fstype, d.Path, dir, err)
	}
	return func() error {
		if err := unix.Unmount(dir, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		return nil
	}, nil
}
