//go:build unix

package apikey

import (
	"io/fs"
	"syscall"
)

// inode returns the file's inode number: a rename over the file changes
// it even when size and time do not.
func inode(st fs.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(s.Ino)
	}
	return 0
}
