package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

// soakFigures are what must not grow with the sandboxes a daemon has
// made and destroyed.
type soakFigures struct {
	FDs, Goroutines, Netns int
	RSSKiB, DiskKiB        int64
	// files are the KiB each file under the data directory takes, to
	// name what grew.
	files map[string]int64
}

// soakSlack is how much a figure may grow beyond 5% before the soak
// fails: noise of the Go runtime and the slot pool, far below what a leak
// of one object per cycle adds over the run.
var soakSlack = soakFigures{FDs: 4, Goroutines: 10, Netns: 0, RSSKiB: 16 << 10, DiskKiB: 2 << 10}

// TestSoak runs create → exec → destroy cycles ($EMBER_SOAK_CYCLES, 50 by
// default; `make soak` runs 1000) and prints the daemon's open fds, RSS,
// goroutines, disk used under its data directory and its netns count at
// the start (after a warm-up of a tenth of the cycles), middle and end,
// with BENCH soak_<figure>_growth lines (end over start; the target is at
// most 1.05). A figure that grows past that and past its slack fails.
func TestSoak(t *testing.T) {
	cycles := 50
	if s := os.Getenv("EMBER_SOAK_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 10 {
			t.Fatalf("EMBER_SOAK_CYCLES=%q: want a number of at least 10", s)
		}
		cycles = n
	}
	d := startWith(t, harness.Options{SlotFirst: 5720, SlotCount: 30})
	ctx := context.Background()
	warm, mid := max(cycles/10, 3), cycles/2
	var at [3]soakFigures
	begin := time.Now()
	for i := 1; i <= cycles; i++ {
		sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
		if err != nil {
			t.Fatalf("cycle %d: create: %v", i, err)
		}
		res, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo cycle " + strconv.Itoa(i)}})
		if err != nil || string(res.Stdout) != fmt.Sprintf("cycle %d\n", i) {
			t.Fatalf("cycle %d: exec: %+v %v", i, res, err)
		}
		if err := d.Client.DeleteSandbox(ctx, sb.ID); err != nil {
			t.Fatalf("cycle %d: destroy: %v", i, err)
		}
		for k, c := range []int{warm, mid, cycles} {
			if i == c {
				at[k] = measure(t, d)
				t.Logf("after %d cycles (%s): %+v", i, time.Since(begin).Round(time.Second), at[k])
			}
		}
	}
	t.Logf("%d cycles in %s (%.0f ms per cycle)", cycles, time.Since(begin).Round(time.Second),
		float64(time.Since(begin).Milliseconds())/float64(cycles))
	for _, f := range []struct {
		name                    string
		start, middle, end, max int64
	}{
		{"fds", int64(at[0].FDs), int64(at[1].FDs), int64(at[2].FDs), int64(soakSlack.FDs)},
		{"rss", at[0].RSSKiB, at[1].RSSKiB, at[2].RSSKiB, soakSlack.RSSKiB},
		{"goroutines", int64(at[0].Goroutines), int64(at[1].Goroutines), int64(at[2].Goroutines), int64(soakSlack.Goroutines)},
		{"disk", at[0].DiskKiB, at[1].DiskKiB, at[2].DiskKiB, soakSlack.DiskKiB},
		{"netns", int64(at[0].Netns), int64(at[1].Netns), int64(at[2].Netns), int64(soakSlack.Netns)},
	} {
		growth := 1.0
		if f.start > 0 {
			growth = float64(f.end) / float64(f.start)
		} else if f.end > 0 {
			growth = float64(f.end + 1)
		}
		fmt.Printf("BENCH soak_%s_growth %.3f x (start %d, middle %d, end %d; target <= 1.05)\n", f.name, growth, f.start, f.middle, f.end)
		if growth > 1.05 && f.end-f.start > f.max {
			t.Errorf("%s grew from %d to %d over %d cycles (%.3f x)", f.name, f.start, f.end, cycles-warm, growth)
			if f.name == "disk" {
				for p, kib := range at[2].files {
					if kib != at[0].files[p] {
						t.Logf("%s: %d KiB, was %d", p, kib, at[0].files[p])
					}
				}
			}
		}
	}
}

// measure reads the soak's figures of a running daemon.
func measure(t *testing.T, d *harness.Daemon) soakFigures {
	t.Helper()
	var f soakFigures
	pid := d.PID()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	f.FDs = len(fds)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f.RSSKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	info, err := d.Client.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.Goroutines = info.Goroutines
	f.files = map[string]int64{}
	filepath.WalkDir(d.DataDir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if fi, err := e.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					f.DiskKiB += st.Blocks / 2
					f.files[strings.TrimPrefix(p, d.DataDir)] = st.Blocks / 2
				}
			}
		}
		return nil
	})
	for i := d.SlotFirst; i < d.SlotFirst+slotSpan; i++ {
		if _, err := os.Stat(fmt.Sprintf("/run/netns/ember-ns-%d", i)); err == nil {
			f.Netns++
		}
	}
	return f
}
