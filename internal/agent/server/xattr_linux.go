//go:build linux

package server

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// setMetadata keeps md on f as user.e2b.<key> extended attributes. A file
// system without user attributes (tmpfs before Linux 6.6) refuses it as an
// invalid request, not silently.
func setMetadata(f *os.File, md map[string]string) error {
	for k, v := range md {
		if err := unix.Fsetxattr(int(f.Fd()), metadataXattr+k, []byte(v), 0); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("%w: keep metadata %q: the file system has no user extended attributes", errInvalid, k)
			}
			return fmt.Errorf("keep metadata %q: %w", k, err)
		}
	}
	return nil
}

// metadata reads back what setMetadata kept; nil when there is none or the
// attributes cannot be read.
func metadata(p string) map[string]string {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return nil
	}
	names := make([]byte, size)
	if size, err = unix.Llistxattr(p, names); err != nil {
		return nil
	}
	var md map[string]string
	for _, name := range bytes.Split(names[:size], []byte{0}) {
		key, ok := strings.CutPrefix(string(name), metadataXattr)
		if !ok || key == "" {
			continue
		}
		buf := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, string(name), buf)
		if err != nil {
			continue // gone since listed, or larger than setMetadata keeps
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = string(buf[:n])
	}
	return md
}
