//go:build linux

package sandbox

import (
	"io/fs"
	"syscall"
)

// blocks returns the bytes a file occupies on disk, not its apparent size.
func blocks(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
