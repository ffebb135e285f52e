//go:build linux

package vmmproc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/emberhq/ember/internal/vmm"
)

// MaxSocketPath is the longest path a Unix socket address holds (sun_path
// less its terminating NUL).
const MaxSocketPath = 107

// CheckSpec rejects a spec no VMM could start from, with a clearer message
// than the VMM's: one with no directory, whose control socket (socket, a
// path inside spec.Dir) is longer than a Unix socket address holds, or
// whose directory, kernel, root disk or initrd (when it has one) does not
// exist. What only one driver refuses (a disk format, a vCPU count) is
// that driver's to check.
func CheckSpec(spec vmm.Spec, socket string) error {
	if spec.Dir == "" {
		return errors.New("spec has no directory")
	}
	if n := len(socket); n > MaxSocketPath {
		return fmt.Errorf("socket path %s is %d bytes, over the %d a unix socket takes", socket, n, MaxSocketPath)
	}
	for _, p := range []struct{ what, path string }{
		{"directory", spec.Dir}, {"kernel", spec.Kernel}, {"root disk", spec.RootDisk}, {"initrd", spec.Initrd},
	} {
		if p.path == "" && p.what == "initrd" {
			continue
		}
		if _, err := os.Stat(p.path); err != nil {
			return fmt.Errorf("%s: %w", p.what, err)
		}
	}
	return nil
}

// maxTail is how much of a log LogTail returns.
const maxTail = 2048

// LogTail returns, for an error message, the end of the log at path (at
// most 2 KiB, its lines joined by "; "), introduced by name: "qemu log:
// ...", or "empty qemu log", or "no qemu log: <why>".
func LogTail(name, path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "no " + name + ": " + err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "no " + name + ": " + err.Error()
	}
	off := max(0, st.Size()-maxTail)
	b := make([]byte, st.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return "no " + name + ": " + err.Error()
	}
	s := strings.TrimSpace(string(b[:n]))
	if s == "" {
		return "empty " + name
	}
	return name + ": " + strings.ReplaceAll(s, "\n", "; ")
}
