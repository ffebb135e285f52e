package reclaim

import (
	"context"
	"errors"
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
	res, err := Dirs.Reclaim(t.Context(), Keep{Dir: dir, Sandboxes: map[string]bool{"b": true}})
	if err != nil || res != (Result{Found: 2, Removed: 2}) {
		t.Fatalf("Dirs = %+v, %v; want 2 of 2, nil", res, err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != "b" {
		t.Fatalf("left %v", left)
	}
	if res, err := Dirs.Reclaim(t.Context(), Keep{Dir: filepath.Join(dir, "missing")}); res != (Result{}) || err != nil {
		t.Fatalf("missing dir: %+v, %v", res, err)
	}
}

// TestRunOrder runs a plan whose steps record their turn: they run in the
// fixed order whatever fails, nil steps are skipped, and the summary counts
// each.
func TestRunOrder(t *testing.T) {
	var ran []string
	step := func(name string, res Result, err error) Reclaimer {
		return Func(func(context.Context, Keep) (Result, error) {
			ran = append(ran, name)
			return res, err
		})
	}
	plan := Plan{
		Dirs:      step("dirs", Result{1, 1}, nil),
		Slots:     step("slots", Result{3, 2}, errors.New("slot 7 busy")),
		Processes: step("processes", Result{2, 2}, nil),
		Devices:   step("devices", Result{}, nil),
	}
	s, err := Run(t.Context(), plan, Keep{}, quiet())
	if got := strings.Join(ran, " "); got != "processes slots devices dirs" {
		t.Errorf("ran %q", got)
	}
	if err == nil || !strings.Contains(err.Error(), "reclaim slots: slot 7 busy") {
		t.Errorf("error %v", err)
	}
	if want := "processes 2/2, slots 2/3 (failed), devices 0/0, dirs 1/1"; s.String() != want {
		t.Errorf("summary %q, want %q", s.String(), want)
	}
}
