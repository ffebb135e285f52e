//go:build linux

// Package loop binds files to loop block devices with the loop driver's
// ioctls (no losetup). Every device is made with the autoclear flag: it
// unbinds itself once its last opener is gone (the Device's own file, a
// device-mapper table, a mount), so a crashed process leaves no loop device
// that is not still in use by something reclaim can see.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Device is a bound loop device held open by this process.
type Device struct {
	// Path is the device node, /dev/loopN.
	Path string
	// Number is N.
	Number int
	f      *os.File
}

// busyRetries bounds how often Attach retries when another process took
// the free device it was given.
const busyRetries = 20

// Attach binds the file at path to a free loop device, read-only or not,
// and returns it held open. Close drops that hold; the device unbinds when
// nothing else holds it either.
func Attach(path string, readOnly bool) (*Device, error) {
	mode := os.O_RDWR
	flags := uint32(unix.LO_FLAGS_AUTOCLEAR)
	if readOnly {
		mode = os.O_RDONLY
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	backing, err := os.OpenFile(path, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach loop device to %s: %w", path, err)
	}
	defer backing.Close() // the loop driver keeps its own reference
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach loop device to %s: %w", path, err)
	}
	defer ctl.Close()
	for range busyRetries {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("attach loop device to %s: get free device: %w", path, err)
		}
		d, err := bind(n, backing, mode, flags)
		if errors.Is(err, unix.EBUSY) {
			continue // another process bound it first
		}
		if err != nil {
			return nil, fmt.Errorf("attach loop device to %s: %w", path, err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("attach loop device to %s: every free device was taken: %w", path, unix.EBUSY)
}

// bind configures loop device n over backing.
func bind(n int, backing *os.File, mode int, flags uint32) (*Device, error) {
	p := "/dev/loop" + strconv.Itoa(n)
	f, err := openNode(p, mode)
	if err != nil {
		return nil, err
	}
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
	cfg.Info.Flags = flags
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], backing.Name())
	err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
		// Kernels before 5.8 lack LOOP_CONFIGURE.
		err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_FD, int(backing.Fd()))
		if err == nil {
			if err = unix.IoctlLoopSetStatus64(int(f.Fd()), &cfg.Info); err != nil {
				unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
			}
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("configure %s: %w", p, err)
	}
	return &Device{Path: p, Number: n, f: f}, nil
}

// openNode opens a loop device node, waiting briefly for devtmpfs to make
// a node the driver has just added.
func openNode(p string, mode int) (*os.File, error) {
	for i := 0; ; i++ {
		f, err := os.OpenFile(p, mode|unix.O_CLOEXEC, 0)
		if err == nil || !errors.Is(err, os.ErrNotExist) || i == 50 {
			return f, err
		}
		time.Sleep(time.Millisecond)
	}
}

// Open holds the bound loop device n, which must be bound to backing
// (compared by path as the kernel reports it); it is how a restarted
// process adopts a device it made before.
func Open(n int, backing string) (*Device, error) {
	p := "/dev/loop" + strconv.Itoa(n)
	f, err := openNode(p, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	// Check after opening: from here on the device cannot unbind.
	if got, err := Backing(n); err != nil || got != backing {
		f.Close()
		if err == nil {
			err = fmt.Errorf("bound to %q, not %q", got, backing)
		}
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	return &Device{Path: p, Number: n, f: f}, nil
}

// Close drops this process's hold on the device.
func (d *Device) Close() error {
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}

// Backing returns the file loop device n is bound to, or "" when it is
// not bound.
func Backing(n int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/loop/backing_file", n))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read backing file of loop%d: %w", n, err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// Bound returns the numbers of the loop devices bound to files for which
// match returns true.
func Bound(match func(backing string) bool) ([]int, error) {
	ents, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var ns []int
	for _, e := range ents {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(filepath.Dir(e))), "loop"))
		if err != nil {
			continue
		}
		b, err := Backing(n)
		if err != nil {
			return nil, err
		}
		if b != "" && match(b) {
			ns = append(ns, n)
		}
	}
	return ns, nil
}

// Clear unbinds loop device n now, whoever holds it; with autoclear set
// the kernel defers that until the last holder closes it. It is for
// reclaim of devices nothing should hold any more.
func Clear(n int) error {
	p := "/dev/loop" + strconv.Itoa(n)
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("clear %s: %w", p, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("clear %s: %w", p, err)
	}
	return nil
}

// Refresh makes loop device n pick up its backing file's new size (after
// the file grew), as a guest's disk grows.
func Refresh(n int) error {
	p := "/dev/loop" + strconv.Itoa(n)
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("refresh %s: %w", p, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("refresh %s: %w", p, err)
	}
	return nil
}
