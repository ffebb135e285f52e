//go:build linux

// Package growfs grows a mounted guest root filesystem to fill its block
// device. A sandbox created with a disk larger than its template's image
// gets a larger device from the host (every rootfs backend grows the disk
// in Prepare); the guest agent calls Ext4 at start to grow the filesystem
// online, which works whatever the disk's format on the host.
package growfs

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ext4ResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow a
// mounted ext4 filesystem to a new block count, online.
const ext4ResizeFS = 0x40086610

// Ext4 grows the ext4 filesystem mounted at mnt to fill its block device
// with EXT4_IOC_RESIZE_FS (which needs CAP_SYS_RESOURCE). It returns the
// filesystem's size in bytes before and after; equal when there was
// nothing to do, zero for a filesystem that is not ext4.
func Ext4(mnt string) (from, to int64, err error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(mnt, &sfs); err != nil {
		return 0, 0, fmt.Errorf("grow %s: %w", mnt, err)
	}
	if sfs.Type != unix.EXT4_SUPER_MAGIC {
		return 0, 0, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		return 0, 0, fmt.Errorf("grow %s: %w", mnt, err)
	}
	sysDev := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	devBytes, err := deviceBytes(sysDev)
	if err != nil {
		return 0, 0, fmt.Errorf("grow %s: %w", mnt, err)
	}
	blockSize := int64(sfs.Bsize)
	blocks, err := ext4Blocks(sysDev)
	if err != nil {
		return 0, 0, fmt.Errorf("grow %s: %w", mnt, err)
	}
	from = blocks * blockSize
	want := uint64(devBytes / blockSize)
	if int64(want) <= blocks {
		return from, from, nil
	}
	dir, err := os.Open(mnt)
	if err != nil {
		return 0, 0, fmt.Errorf("grow %s: %w", mnt, err)
	}
	defer dir.Close()
	// x/sys/unix has no ioctl that passes a pointer to a u64.
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, dir.Fd(), ext4ResizeFS, uintptr(unsafe.Pointer(&want)))
	if errno != 0 {
		return from, from, fmt.Errorf("grow %s from %d to %d blocks: %w", mnt, blocks, want, errno)
	}
	return from, int64(want) * blockSize, nil
}

// deviceBytes reads a block device's size from sysfs.
func deviceBytes(sysDev string) (int64, error) {
	b, err := os.ReadFile(sysDev + "/size")
	if err != nil {
		return 0, err
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", sysDev, err)
	}
	return sectors * 512, nil
}

// ext4Blocks reads the block count from the superblock of the device
// behind sysDev (its node is /dev/<DEVNAME>).
func ext4Blocks(sysDev string) (int64, error) {
	ev, err := os.ReadFile(sysDev + "/uevent")
	if err != nil {
		return 0, err
	}
	var name string
	for line := range strings.SplitSeq(string(ev), "\n") {
		if v, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			name = v
		}
	}
	if name == "" {
		return 0, fmt.Errorf("no device name in %s/uevent", sysDev)
	}
	f, err := os.Open("/dev/" + name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// The superblock starts at byte 1024: s_blocks_count_lo at 0x4,
	// s_feature_incompat at 0x60, s_blocks_count_hi at 0x150 (with the
	// 64bit feature, 0x80).
	sb := make([]byte, 0x154)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, fmt.Errorf("read superblock of /dev/%s: %w", name, err)
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xef53 {
		return 0, fmt.Errorf("/dev/%s holds no ext4 superblock", name)
	}
	n := int64(binary.LittleEndian.Uint32(sb[0x4:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 {
		n |= int64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	return n, nil
}
