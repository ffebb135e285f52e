//go:build linux

package usage

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/testutil"
)

func TestReadSystemOfThisMachine(t *testing.T) {
	s, err := ReadSystem("/proc", "/")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case s.CPUCount < 1:
		t.Errorf("cpu count %d", s.CPUCount)
	case s.CPUTotal <= 0 || s.CPUBusy < 0 || s.CPUBusy > s.CPUTotal:
		t.Errorf("cpu busy %f of %f s", s.CPUBusy, s.CPUTotal)
	case s.MemTotal <= 0 || s.MemUsed <= 0 || s.MemUsed > s.MemTotal || s.MemCache < 0:
		t.Errorf("memory %d used, %d cache of %d", s.MemUsed, s.MemCache, s.MemTotal)
	case s.DiskTotal <= 0 || s.DiskUsed <= 0 || s.DiskUsed > s.DiskTotal:
		t.Errorf("disk %d used of %d", s.DiskUsed, s.DiskTotal)
	}
	if _, err := ReadSystem("/nonexistent", "/"); err == nil {
		t.Error("reading a missing proc file system succeeded")
	}
}

func TestSystemCPUPercent(t *testing.T) {
	cases := []struct {
		name      string
		prev, cur System
		want      float64
	}{
		{"half busy", System{CPUBusy: 10, CPUTotal: 100}, System{CPUBusy: 15, CPUTotal: 110}, 50},
		{"idle", System{CPUBusy: 10, CPUTotal: 100}, System{CPUBusy: 10, CPUTotal: 110}, 0},
		{"all busy", System{CPUBusy: 10, CPUTotal: 100}, System{CPUBusy: 20, CPUTotal: 110}, 100},
		{"no time passed", System{CPUBusy: 10, CPUTotal: 100}, System{CPUBusy: 10, CPUTotal: 100}, 0},
		{"since boot", System{}, System{CPUBusy: 1, CPUTotal: 4}, 25},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cur.CPUPercent(tc.prev); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestProcessCPUPercent(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	p := Process{CPUSeconds: 4, Started: start, Source: SourceProcess}
	cases := []struct {
		name       string
		prev       *Process
		cur        Process
		at, prevAt time.Time
		want       float64
	}{
		{"since the previous reading", &p, Process{CPUSeconds: 9, Started: start, Source: SourceProcess},
			start.Add(20 * time.Second), start.Add(10 * time.Second), 50},
		{"two CPUs busy", &p, Process{CPUSeconds: 24, Started: start, Source: SourceProcess},
			start.Add(20 * time.Second), start.Add(10 * time.Second), 200},
		{"first reading: since start", nil, p, start.Add(8 * time.Second), time.Time{}, 50},
		{"another process: since its start", &p, Process{CPUSeconds: 1, Started: start.Add(time.Minute), Source: SourceProcess},
			start.Add(70 * time.Second), start.Add(10 * time.Second), 10},
		{"no start time known", nil, Process{CPUSeconds: 1}, start, time.Time{}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cur.CPUPercent(tc.prev, tc.at, tc.prevAt); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReadProcessOfItself(t *testing.T) {
	// Burn a little CPU so there is some to see.
	for deadline := time.Now().Add(50 * time.Millisecond); time.Now().Before(deadline); {
	}
	p, err := ReadProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.CPUSeconds <= 0 || p.MemBytes <= 0 || p.Started.IsZero() || time.Since(p.Started) < 0 {
		t.Fatalf("read %+v", p)
	}
	// The test is in its own cgroup, not one of its own apart from ours.
	if p.Source != SourceProcess {
		t.Fatalf("source %s, want %s", p.Source, SourceProcess)
	}
	if _, err := ReadProcess(1 << 30); err == nil {
		t.Fatal("reading a process that does not exist succeeded")
	}
}

// TestReadProcessInItsOwnCgroup puts a child into cgroups of its own and
// checks that it is measured by them.
func TestReadProcessInItsOwnCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	name := fmt.Sprintf("ember-usage-test-%d", os.Getpid())
	var dirs []string
	if _, err := os.Stat("/sys/fs/cgroup/cpuacct"); err == nil {
		dirs = []string{filepath.Join("/sys/fs/cgroup/cpuacct", name), filepath.Join("/sys/fs/cgroup/memory", name)}
	} else {
		dirs = []string{filepath.Join("/sys/fs/cgroup", name)}
	}
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		child.Process.Kill()
		child.Wait()
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
				t.Errorf("remove cgroup: %v", err)
			}
		}
	})
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Skipf("cannot create a cgroup here: %v", err)
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(child.Process.Pid)), 0o644); err != nil {
			t.Skipf("cannot move a process into a cgroup here: %v", err)
		}
	}
	p, err := ReadProcess(child.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if p.Source != SourceCgroup || p.CPUSeconds < 0 {
		t.Fatalf("read %+v, want figures from its cgroup", p)
	}
}
