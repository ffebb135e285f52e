package testutil

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// ProcStatus reads /proc/PID/status into key → value: what the kernel
// says of a process's user, capabilities and seccomp mode.
func ProcStatus(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}
