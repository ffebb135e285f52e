//go:build linux

package vmmproc

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/netns"
)

// Handed collects the files the daemon opens for a VMM and hands it as
// inherited descriptors, so that a VMM running as an unprivileged user,
// chrooted, needs to open nothing by path: its TAP, disk, console log and
// control socket. Add returns the descriptor number the file has in the
// VMM (exec.Cmd.ExtraFiles start at 3). The daemon's copies are closed by
// Close once the VMM has started (it holds its own).
type Handed struct {
	files []*os.File
}

// Add hands f to the VMM and returns its descriptor number there.
func (h *Handed) Add(f *os.File) int {
	h.files = append(h.files, f)
	return 2 + len(h.files)
}

// Files returns the files in descriptor order, for exec.Cmd.ExtraFiles.
func (h *Handed) Files() []*os.File { return h.files }

// Close closes the daemon's copies.
func (h *Handed) Close() {
	for _, f := range h.files {
		f.Close()
	}
	h.files = nil
}

// Open opens path with flags (and perm for a new file) and hands it over.
func (h *Handed) Open(path string, flags int, perm os.FileMode) (int, error) {
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, perm)
	if err != nil {
		return -1, err
	}
	return h.Add(f), nil
}

// Listen creates a listening Unix socket at path and hands it over: the
// VMM serves its control socket on it, and the daemon (or its successor
// after a restart) connects to path. The socket file outlives the
// daemon's copy of the listener.
func (h *Handed) Listen(path string) (int, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return -1, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	l.Close()
	if err != nil {
		os.Remove(path)
		return -1, fmt.Errorf("hand over socket %s: %w", path, err)
	}
	return h.Add(f), nil
}

// OpenTAP attaches to the TAP device name inside the network namespace at
// netnsPath ("" for the current one), as QEMU would (IFF_TAP, no packet
// information, with virtio-net headers), and hands the queue over: the VMM
// then needs no CAP_NET_ADMIN and no /dev/net/tun.
func (h *Handed) OpenTAP(netnsPath, name string) (int, error) {
	var f *os.File
	open := func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("attach to tap %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	}
	var err error
	if netnsPath == "" {
		err = open()
	} else {
		err = netns.Do(netnsPath, open)
	}
	if err != nil {
		return -1, err
	}
	return h.Add(f), nil
}
