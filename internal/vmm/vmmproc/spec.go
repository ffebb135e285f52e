//go:build linux

package vmmproc

import (
	"errors"
	"fmt"
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

// LogTail returns, for an error message, the end of the log at path
// (vmm.ReadTail, its lines joined by "; "), introduced by name: "qemu log:
// ...", or "empty qemu log", or "no qemu log: <why>".
func LogTail(name, path string) string {
	s, err := vmm.ReadTail(path)
	switch {
	case err != nil:
		return "no " + name + ": " + err.Error()
	case s == "":
		return "empty " + name
	}
	return name + ": " + strings.ReplaceAll(s, "\n", "; ")
}
