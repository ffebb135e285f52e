package reclaim

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Processes kills every process whose command line mentions a path under
// dir (every VMM ember starts names its sandbox directory: disk, sockets,
// console log) unless its pid is in keep. It returns how many it killed.
func Processes(dir string, keep map[int]bool, log *slog.Logger) (int, error) {
	prefix := strings.TrimRight(dir, "/") + "/"
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("read /proc: %w", err)
	}
	self := os.Getpid()
	var killed []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || keep[pid] {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), prefix) {
			continue
		}
		log.Warn("killing orphaned vmm process", "pid", pid, "cmdline", strings.ReplaceAll(string(cmdline), "\x00", " "))
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed = append(killed, pid)
		}
	}
	// Give the kernel a moment to release what they held (disk files, TAPs).
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range killed {
		for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return len(killed), nil
}
