//go:build linux

package usage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// ReadProcess reads process pid's use. A process in a cgroup of its own
// (one the reading process is not in) is measured by that cgroup, which
// counts everything charged to it; any other by its /proc entry.
func ReadProcess(pid int) (Process, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return Process{}, fmt.Errorf("open process %d: %w", pid, err)
	}
	st, err := p.Stat()
	if err != nil {
		return Process{}, fmt.Errorf("read stat of process %d: %w", pid, err)
	}
	out := Process{CPUSeconds: st.CPUTime(), MemBytes: int64(st.ResidentMemory()), Source: SourceProcess}
	if start, err := st.StartTime(); err == nil {
		out.Started = time.Unix(0, int64(start*float64(time.Second)))
	}
	if cpu, mem, ok := ownCgroup(p); ok {
		out.CPUSeconds, out.MemBytes, out.Source = cpu, mem, SourceCgroup
	}
	return out, nil
}

// ownCgroup reads the CPU time and memory charge of p's cgroup when p has
// one of its own: in the unified hierarchy (cgroup v2), else the v1
// cpuacct and memory controllers'.
func ownCgroup(p procfs.Proc) (cpu float64, mem int64, ok bool) {
	theirs, err := p.Cgroups()
	if err != nil {
		return 0, 0, false
	}
	self, err := procfs.Self()
	if err != nil {
		return 0, 0, false
	}
	ours, err := self.Cgroups()
	if err != nil {
		return 0, 0, false
	}
	mounts, err := self.MountInfo()
	if err != nil {
		return 0, 0, false
	}
	// own returns the directory of p's cgroup in the hierarchy that holds
	// controller ("" for the unified one), if it is not ours.
	own := func(controller string) (string, bool) {
		path, found := cgroupPath(theirs, controller)
		if mine, _ := cgroupPath(ours, controller); !found || path == mine || path == "/" {
			return "", false
		}
		return cgroupDir(mounts, controller, path)
	}
	if dir, found := own(""); found {
		usec, err1 := keyed(filepath.Join(dir, "cpu.stat"), "usage_usec")
		current, err2 := number(filepath.Join(dir, "memory.current"))
		if err1 == nil && err2 == nil {
			return float64(usec) / 1e6, current, true
		}
	}
	cpuDir, found1 := own("cpuacct")
	memDir, found2 := own("memory")
	if !found1 || !found2 {
		return 0, 0, false
	}
	nsec, err1 := number(filepath.Join(cpuDir, "cpuacct.usage"))
	usage, err2 := number(filepath.Join(memDir, "memory.usage_in_bytes"))
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return float64(nsec) / 1e9, usage, true
}

// cgroupPath finds the path of the cgroup in the hierarchy holding
// controller; "" names the unified (v2) hierarchy.
func cgroupPath(cgs []procfs.Cgroup, controller string) (string, bool) {
	for _, c := range cgs {
		if controller == "" && c.HierarchyID == 0 && len(c.Controllers) == 0 {
			return c.Path, true
		}
		for _, name := range c.Controllers {
			if controller != "" && name == controller {
				return c.Path, true
			}
		}
	}
	return "", false
}

// cgroupDir maps a cgroup path to its directory under the mount of its
// hierarchy (a container sees its hierarchy from a root below the top).
func cgroupDir(mounts []*procfs.MountInfo, controller, path string) (string, bool) {
	for _, m := range mounts {
		switch {
		case controller == "" && m.FSType == "cgroup2":
		case controller != "" && m.FSType == "cgroup":
			if _, ok := m.SuperOptions[controller]; !ok {
				continue
			}
		default:
			continue
		}
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.Root, "/"))
		if !ok || rel != "" && !strings.HasPrefix(rel, "/") {
			continue
		}
		dir := filepath.Join(m.MountPoint, rel)
		if _, err := os.Stat(dir); err == nil {
			return dir, true
		}
	}
	return "", false
}

// number reads a file holding one decimal integer.
func number(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// keyed reads the value of key from a flat keyed file ("key value" lines).
func keyed(path, key string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok && k == key {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New(path + ": no " + key)
}
