package reclaim

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

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
