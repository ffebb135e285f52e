//go:build linux

package cgroup

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/resource"
	"github.com/emberhq/ember/internal/testutil"
)

// testManager returns a manager under a parent of the test's own,
// removed at the end.
func testManager(t *testing.T) *Manager {
	t.Helper()
	testutil.RequireRoot(t)
	m, err := New(fmt.Sprintf("ember-test/%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Skipf("no cgroups to test: %v", err)
	}
	t.Cleanup(func() {
		for _, dir := range m.dirs("") {
			os.Remove(dir)
			os.Remove(filepath.Dir(dir))
		}
	})
	return m
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestLimitsUsageAndRemove makes a group, checks that its files hold the
// limits, places a process in it, reads its usage, and removes the group
// once the process is gone (not before).
func TestLimitsUsageAndRemove(t *testing.T) {
	m := testManager(t)
	const id = "sb1"
	l := resource.Limits{CPUs: 1.5, MemoryMiB: 320, Pids: 64, IOWeight: 50}
	if err := m.Create(id, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Remove(id) })
	for _, x := range m.Measures() {
		t.Logf("%s on=%v: %s", x.Name, x.On, x.Detail)
	}
	if m.v2 {
		dir := m.Path(id, "")
		for file, want := range map[string]string{"cpu.max": "150000 100000", "memory.max": fmt.Sprint(320 << 20), "pids.max": "64"} {
			if got := readFile(t, filepath.Join(dir, file)); got != want {
				t.Errorf("%s = %q, want %q", file, got, want)
			}
		}
	} else {
		for _, c := range []struct{ ctrl, file, want string }{
			{CPU, "cpu.cfs_quota_us", "150000"},
			{CPU, "cpu.cfs_period_us", "100000"},
			{Memory, "memory.limit_in_bytes", fmt.Sprint(320 << 20)},
			{Pids, "pids.max", "64"},
		} {
			if m.disabled(c.ctrl) {
				t.Logf("%s: off: %s", c.ctrl, m.off[c.ctrl])
				continue
			}
			if got := readFile(t, filepath.Join(m.Path(id, c.ctrl), c.file)); got != c.want {
				t.Errorf("%s/%s = %q, want %q", c.ctrl, c.file, got, c.want)
			}
		}
		if m.blkioWeight {
			if got := readFile(t, filepath.Join(m.Path(id, Blkio), "blkio.weight")); got != "50" {
				t.Errorf("blkio.weight = %q", got)
			}
		}
	}

	cmd := exec.Command("sh", "-c", "x=$(head -c 8000000 /dev/zero | tr '\\0' a); while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := m.Place(id, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	u, err := m.Usage(id)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("usage: %+v", u)
	if u.Pids < 1 || u.CPUNanos == 0 || u.MemoryBytes == 0 {
		t.Errorf("usage of a busy process: %+v", u)
	}
	if err := m.Remove(id); err == nil {
		t.Fatal("removed a group a process is in")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := m.Remove(id); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(id); err != nil {
		t.Fatalf("remove again: %v", err)
	}
	for _, dir := range m.dirs(id) {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", dir, err)
		}
	}
}

// TestMemoryLimitHolds: a process that allocates past the limit is
// killed by the kernel, not let through.
func TestMemoryLimitHolds(t *testing.T) {
	m := testManager(t)
	if m.disabled(Memory) {
		t.Skipf("memory controller off: %s", m.off[Memory])
	}
	const id = "sbmem"
	if err := m.Create(id, resource.Limits{MemoryMiB: 32}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Remove(id) })
	// The shell waits on a pipe until it is placed, then fills 64 MiB.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "read go; x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived")
	cmd.Stdin = r
	out := &strings.Builder{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := m.Place(id, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("go\n"))
	w.Close()
	cmd.Wait()
	if strings.Contains(out.String(), "survived") {
		t.Fatalf("a shell holding 64 MiB survived a 32 MiB limit")
	}
	u, err := m.Usage(id)
	if err != nil {
		t.Fatal(err)
	}
	if u.MemoryPeakBytes > 32<<20 {
		t.Errorf("peak %d bytes, over the 32 MiB limit", u.MemoryPeakBytes)
	}
}

// TestReclaim removes the groups no kept sandbox owns, and only those.
func TestReclaim(t *testing.T) {
	m := testManager(t)
	for _, id := range []string{"kept", "orphan"} {
		if err := m.Create(id, resource.Limits{Pids: 10}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Remove(id) })
	}
	res, err := m.Reclaim(context.Background(), reclaim.Keep{Sandboxes: map[string]bool{"kept": true}})
	if err != nil || res.Found != 1 || res.Removed != 1 {
		t.Fatalf("reclaim: %+v %v", res, err)
	}
	for _, dir := range m.dirs("kept") {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("kept group gone: %v", err)
		}
	}
	for _, dir := range m.dirs("orphan") {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("orphan %s left: %v", dir, err)
		}
	}
}

func TestParentFor(t *testing.T) {
	a, b := ParentFor("/var/lib/ember"), ParentFor("/tmp/x")
	if a == b || !strings.HasPrefix(a, "ember/") || ParentFor("/var/lib/ember/") != a {
		t.Fatalf("parents %q %q", a, b)
	}
}

// TestCloseRemovesEmptyParents: a daemon that stops leaves no empty group
// of its own, and keeps one a sandbox still runs in.
func TestCloseRemovesEmptyParents(t *testing.T) {
	m := testManager(t)
	if err := m.Create("running", resource.Limits{Pids: 10}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	for _, dir := range m.dirs("running") {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("group of a sandbox still there went: %v", err)
		}
	}
	if err := m.Remove("running"); err != nil {
		t.Fatal(err)
	}
	m.Close()
	for _, dir := range m.dirs("") {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("parent %s left: %v", dir, err)
		}
	}
}
