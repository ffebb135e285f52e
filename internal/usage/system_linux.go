//go:build linux

package usage

import (
	"fmt"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// ReadSystem reads the counters of the system whose proc file system is
// mounted at proc (normally /proc), and the usage of the file system at
// root.
func ReadSystem(proc, root string) (System, error) {
	fs, err := procfs.NewFS(proc)
	if err != nil {
		return System{}, fmt.Errorf("open %s: %w", proc, err)
	}
	st, err := fs.Stat()
	if err != nil {
		return System{}, fmt.Errorf("read %s/stat: %w", proc, err)
	}
	c := st.CPUTotal
	total := c.User + c.Nice + c.System + c.Idle + c.Iowait + c.IRQ + c.SoftIRQ + c.Steal
	s := System{CPUCount: len(st.CPU), CPUTotal: total, CPUBusy: total - c.Idle - c.Iowait}
	mi, err := fs.Meminfo()
	if err != nil {
		return System{}, fmt.Errorf("read %s/meminfo: %w", proc, err)
	}
	s.MemTotal = bytesOf(mi.MemTotalBytes)
	s.MemCache = bytesOf(mi.CachedBytes) + bytesOf(mi.SReclaimableBytes)
	s.MemUsed = max(s.MemTotal-bytesOf(mi.MemFreeBytes)-bytesOf(mi.BuffersBytes)-s.MemCache, 0)
	var sf unix.Statfs_t
	if err := unix.Statfs(root, &sf); err != nil {
		return System{}, fmt.Errorf("statfs %s: %w", root, err)
	}
	bsize := int64(sf.Bsize)
	s.DiskTotal = int64(sf.Blocks) * bsize
	s.DiskUsed = int64(sf.Blocks-sf.Bfree) * bsize
	return s, nil
}

func bytesOf(v *uint64) int64 {
	if v == nil {
		return 0
	}
	return int64(*v)
}
