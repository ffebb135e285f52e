package reclaim

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestProcessesKillsOnlyOrphansUnderDir(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	start := func(arg string) *exec.Cmd {
		// sleep ignores its extra argument's meaning but carries it in its
		// command line, as a VMM carries its sandbox's paths.
		cmd := exec.Command("sh", "-c", "sleep 30", arg)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	orphan := start(filepath.Join(dir, "sb1", "disk"))
	kept := start(filepath.Join(dir, "sb2", "disk"))
	stranger := start(filepath.Join(other, "x"))

	n, err := Processes(dir, map[int]bool{kept.Process.Pid: true}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("killed %d processes, want 1", n)
	}
	done := make(chan error, 1)
	go func() { done <- orphan.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("orphan still running")
	}
	for _, c := range []*exec.Cmd{kept, stranger} {
		// A killed child stays a zombie until waited for: read its state.
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(stat)); len(f) < 3 || f[2] == "Z" {
			t.Fatalf("pid %d was killed: %s", c.Process.Pid, stat)
		}
	}
}

func TestDirsKeepsOwned(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		if err := os.MkdirAll(filepath.Join(dir, n, "x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	n, err := Dirs(dir, map[string]bool{"b": true}, quiet())
	if err != nil || n != 2 {
		t.Fatalf("Dirs = %d, %v; want 2, nil", n, err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != "b" {
		t.Fatalf("left %v", left)
	}
	if n, err := Dirs(filepath.Join(dir, "missing"), nil, quiet()); n != 0 || err != nil {
		t.Fatalf("missing dir: %d, %v", n, err)
	}
}
