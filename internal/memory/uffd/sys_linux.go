//go:build linux

package uffd

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The userfaultfd ABI from linux/userfaultfd.h; golang.org/x/sys does not
// carry it. The ioctl numbers are _IOWR/_IOR(0xAA, nr, struct) spelled out
// for the struct sizes below (amd64 and arm64 share them).
const (
	uffdAPI = 0xAA

	ioctlAPI       = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	ioctlRegister  = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	ioctlWake      = 0x8010aa02 // _IOR(0xAA, 0x02, struct uffdio_range)
	ioctlCopy      = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)
	ioctlZeropage  = 0xc020aa04 // _IOWR(0xAA, 0x04, struct uffdio_zeropage)
	registerMissng = 1          // UFFDIO_REGISTER_MODE_MISSING
	userModeOnly   = 1          // UFFD_USER_MODE_ONLY, a userfaultfd(2) flag

	eventPagefault = 0x12
	eventFork      = 0x13
	eventRemap     = 0x14
	eventRemove    = 0x15
	eventUnmap     = 0x16

	// FeatureEventRemove asks the kernel for UFFD_EVENT_REMOVE on
	// madvise(MADV_DONTNEED/MADV_REMOVE): Firecracker's balloon.
	FeatureEventRemove = 1 << 3

	msgSize = 32 // sizeof(struct uffd_msg)
)

type uffdioAPI struct {
	api      uint64
	features uint64
	ioctls   uint64
}

type uffdioRange struct {
	start uint64
	len   uint64
}

type uffdioRegister struct {
	rng    uffdioRange
	mode   uint64
	ioctls uint64
}

type uffdioCopy struct {
	dst  uint64
	src  uint64
	len  uint64
	mode uint64
	copy int64
}

type uffdioZeropage struct {
	rng      uffdioRange
	mode     uint64
	zeropage int64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// errExist and errAgain are what UFFDIO_COPY and UFFDIO_ZEROPAGE return
// when a page is already mapped and when a range was only partly filled
// (or the address space is changing under a pending event).
var (
	errExist = unix.EEXIST
	errAgain = unix.EAGAIN
)

// fill resolves [dst, dst+n) of the faulting process: with a copy of src
// when src is not nil, else with the zero page. It returns how many bytes
// were mapped before an error; EEXIST means the page at dst+done is
// already there.
func fill(fd int, dst uint64, src unsafe.Pointer, n uint64) (uint64, error) {
	if src != nil {
		c := uffdioCopy{dst: dst, src: uint64(uintptr(src)), len: n}
		err := ioctl(fd, ioctlCopy, unsafe.Pointer(&c))
		return partial(c.copy, n, err)
	}
	z := uffdioZeropage{rng: uffdioRange{start: dst, len: n}}
	err := ioctl(fd, ioctlZeropage, unsafe.Pointer(&z))
	return partial(z.zeropage, n, err)
}

// partial turns the kernel's (result, errno) pair into bytes done and an
// error: a positive result with EAGAIN is a partial fill.
func partial(res int64, n uint64, err error) (uint64, error) {
	if err == nil {
		return n, nil
	}
	if res > 0 {
		return uint64(res), err
	}
	return 0, err
}

// wake wakes threads waiting on faults in [start, start+n).
func wake(fd int, start, n uint64) error {
	r := uffdioRange{start: start, len: n}
	return ioctl(fd, ioctlWake, unsafe.Pointer(&r))
}

// message is one decoded struct uffd_msg.
type message struct {
	event uint8
	// addr is the faulting address (pagefault) or the start of the range
	// (remove, unmap); end closes a remove or unmap range.
	addr, end uint64
}

func decode(b []byte) message {
	m := message{event: b[0]}
	switch m.event {
	case eventPagefault:
		m.addr = le64(b[16:]) // arg.pagefault.flags at 8, address at 16
	case eventRemove, eventUnmap:
		m.addr, m.end = le64(b[8:]), le64(b[16:])
	}
	return m
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// Register is the faulting side of the protocol, what Firecracker does
// before it hands the descriptor over: it opens a userfaultfd with the
// given features (for user-mode faults only when the caller lacks the
// privilege for more), negotiates the API, and registers [addr, addr+n) for
// missing-page faults. It is exported for tests and benchmarks that play
// the VMM.
func Register(addr, n uint64, features uint64) (fd int, err error) {
	fd, err = open(features)
	if err != nil {
		return -1, err
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	reg := uffdioRegister{rng: uffdioRange{start: addr, len: n}, mode: registerMissng}
	if err := ioctl(fd, ioctlRegister, unsafe.Pointer(&reg)); err != nil {
		return -1, fmt.Errorf("uffdio_register %#x+%#x: %w", addr, n, err)
	}
	return fd, nil
}

// open opens a userfaultfd and negotiates the API with features.
func open(features uint64) (int, error) {
	flags := uintptr(unix.O_CLOEXEC | unix.O_NONBLOCK)
	r, _, e := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if e == unix.EPERM {
		// Without CAP_SYS_PTRACE (and vm.unprivileged_userfaultfd=0) only
		// faults from user mode can be handled, as in a jailed VMM.
		r, _, e = unix.Syscall(unix.SYS_USERFAULTFD, flags|userModeOnly, 0, 0)
	}
	if e != 0 {
		return -1, fmt.Errorf("userfaultfd: %w", e)
	}
	fd := int(r)
	api := uffdioAPI{api: uffdAPI, features: features}
	if err := ioctl(fd, ioctlAPI, unsafe.Pointer(&api)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("uffdio_api features %#x: %w", features, err)
	}
	return fd, nil
}

// Available reports whether this host gives the daemon a userfaultfd, which
// serving a restored Firecracker machine's memory needs: it opens one,
// negotiates the API and closes it.
func Available() error {
	fd, err := open(0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// Addr returns the address of the first byte of b, for the handshake's
// base_host_virt_addr.
func Addr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// isInvalid reports EINVAL: UFFDIO_ZEROPAGE on hugetlbfs memory.
func isInvalid(err error) bool { return errors.Is(err, unix.EINVAL) }
