//go:build linux

package uffd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// maxHandshake bounds the handshake message; a VM has a few regions.
const maxHandshake = 1 << 16

// Region is one GuestRegionUffdMapping of Firecracker's handshake: guest
// memory mapped at BaseHostVirtAddr in the VMM, Size bytes long, backed by
// the memory file from Offset, faulted in PageSize units.
type Region struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	// PageSize is in bytes. Firecracker before 1.6 sent page_size_kib
	// instead; both are accepted.
	PageSize    uint64 `json:"page_size,omitempty"`
	PageSizeKiB uint64 `json:"page_size_kib,omitempty"`
}

// pageSize returns the region's page size in bytes.
func (r Region) pageSize() uint64 {
	if r.PageSize != 0 {
		return r.PageSize
	}
	return r.PageSizeKiB * 1024
}

// maxRegion bounds the regions, one and all: the server keeps two bits
// per page, and a VMM that claims more memory than any guest has must not
// make it allocate them.
const maxRegion = 1 << 40

func (r Region) check() error {
	ps := r.pageSize()
	switch {
	case r.PageSizeKiB > 1<<20 || ps > 1<<30:
		return fmt.Errorf("region at %#x: page size %d over 1 GiB", r.BaseHostVirtAddr, ps)
	case r.Size > maxRegion:
		return fmt.Errorf("region at %#x: %d bytes, over the %d a guest may have", r.BaseHostVirtAddr, r.Size, uint64(maxRegion))
	case r.BaseHostVirtAddr+r.Size < r.BaseHostVirtAddr || r.Offset+r.Size < r.Offset:
		return fmt.Errorf("region at %#x size %#x offset %#x: wraps around", r.BaseHostVirtAddr, r.Size, r.Offset)
	case ps < 4096 || ps&(ps-1) != 0:
		return fmt.Errorf("region at %#x: page size %d is not a power of two of at least 4096", r.BaseHostVirtAddr, ps)
	case r.BaseHostVirtAddr%ps != 0 || r.Size%ps != 0 || r.Offset%4096 != 0:
		return fmt.Errorf("region at %#x size %#x offset %#x: not aligned to its %d-byte pages", r.BaseHostVirtAddr, r.Size, r.Offset, ps)
	case r.Size == 0:
		return fmt.Errorf("region at %#x: empty", r.BaseHostVirtAddr)
	}
	return nil
}

// SendHandshake sends regions and the userfaultfd over conn the way
// Firecracker does: one message, the JSON array as data and the descriptor
// as SCM_RIGHTS. It is exported for tests and benchmarks that play the VMM.
func SendHandshake(conn *net.UnixConn, regions []Region, fd int) error {
	b, err := json.Marshal(regions)
	if err != nil {
		return err
	}
	n, _, err := conn.WriteMsgUnix(b, unix.UnixRights(fd), nil)
	if err != nil {
		return fmt.Errorf("send handshake: %w", err)
	}
	if n != len(b) {
		return fmt.Errorf("send handshake: short write %d of %d", n, len(b))
	}
	return nil
}

// receiveHandshake reads the regions and the userfaultfd from conn. The
// JSON normally arrives in the same message as the descriptor; it keeps
// reading until the array is complete in case the stream split it.
func receiveHandshake(conn *net.UnixConn) (regions []Region, fd int, err error) {
	fd = -1
	defer func() {
		if err != nil && fd >= 0 {
			unix.Close(fd)
		}
	}()
	var data []byte
	buf := make([]byte, maxHandshake)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return nil, fd, fmt.Errorf("read handshake: %w", err)
		}
		if oobn > 0 {
			fds, err := parseRights(oob[:oobn])
			if err != nil {
				return nil, fd, err
			}
			for _, f := range fds {
				if fd < 0 {
					fd = f
				} else {
					unix.Close(f)
				}
			}
		}
		if n == 0 {
			return nil, fd, errors.New("read handshake: connection closed before the region list")
		}
		data = append(data, buf[:n]...)
		if len(data) > maxHandshake {
			return nil, fd, fmt.Errorf("read handshake: over %d bytes", maxHandshake)
		}
		if json.Valid(bytes.TrimSpace(data)) {
			break
		}
	}
	if fd < 0 {
		return nil, fd, errors.New("read handshake: no userfaultfd in the message")
	}
	regions, err = parseRegions(data)
	return regions, fd, err
}

// parseRegions decodes and checks the handshake's region list: what the
// VMM (which a guest may have taken over) says its guest memory is.
func parseRegions(data []byte) ([]Region, error) {
	var regions []Region
	if err := json.Unmarshal(data, &regions); err != nil {
		return nil, fmt.Errorf("decode handshake %q: %w", data, err)
	}
	if len(regions) == 0 {
		return nil, errors.New("handshake has no regions")
	}
	var total uint64
	for _, r := range regions {
		if err := r.check(); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		if total += r.Size; total > maxRegion {
			return nil, fmt.Errorf("handshake: regions of over %d bytes in all", uint64(maxRegion))
		}
	}
	return regions, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse handshake control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		f, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		fds = append(fds, f...)
	}
	return fds, nil
}
