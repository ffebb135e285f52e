//go:build linux

package sandbox

import (
	"io/fs"
	"syscall"
)

// blocks returns the bytes a file occupies on disk, not its apparent size,
// shared out among its hard links: a saved machine's memory file linked
// into every sandbox paused or snapshotted from it (see the QEMU driver)
// costs each of them its share, not the whole file.
func blocks(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512 / max(int64(st.Nlink), 1)
	}
	return info.Size()
}
