//go:build linux

package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
)

// daemonEnv turns the test binary into a daemon that restores one machine
// with its page server as a process of its own, prints "pid <vmm pid>",
// and waits to be killed. Its value is a daemonJob.
const daemonEnv = "EMBER_TEST_FC_DAEMON"

type daemonJob struct {
	Spec     vmm.Spec
	Snapshot string
}

func runDaemon(v string) int {
	// The processes it starts are no daemons.
	os.Unsetenv(daemonEnv)
	var job daemonJob
	if err := json.Unmarshal([]byte(v), &job); err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 2
	}
	d, err := New(Config{Binary: os.Args[0], PageServer: []string{os.Args[0]}, StopWait: time.Second}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 2
	}
	m, err := d.Restore(context.Background(), job.Spec, job.Snapshot)
	if err != nil {
		fmt.Fprintln(os.Stderr, "daemon:", err)
		return 1
	}
	fmt.Printf("pid %d\n", m.PID())
	select {}
}

// readStatus returns what a restored fake last reported of its reads.
func readStatus(path string) (string, int) {
	b, _ := os.ReadFile(path)
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return string(b), 0
	}
	n, _ := strconv.Atoi(f[1])
	return f[0], n
}

// waitStatus waits until the fake has read more than n pages, or is done.
func waitStatus(t *testing.T, path string, n int) (string, int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		word, got := readStatus(path)
		if word == "bad" {
			b, _ := os.ReadFile(path)
			t.Fatalf("guest memory reads wrong: %s", b)
		}
		if got > n || word == "ok" {
			return word, got
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest read %d pages (%s), waited for more than %d", got, word, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPageServerOutlivesDaemon kills the daemon while a restored machine's
// guest is faulting its memory in: the page server, a process of its own
// in the machine's cgroup, goes on serving; a new daemon re-adopts the VMM
// and its page server; every page reads what the snapshot holds; stopping
// the machine ends both.
func TestPageServerOutlivesDaemon(t *testing.T) {
	testutil.RequireRoot(t) // userfaultfd for a process that is not root's needs a sysctl
	d, _ := fakeDriver(t, Config{PageServer: []string{os.Args[0]}})
	status := t.TempDir() + "/touch"
	t.Setenv(touchEnv, status)
	ctx := t.Context()
	_, snap := snapshotOf(t, d)

	spec2 := testSpec(t, "")
	job, err := json.Marshal(daemonJob{Spec: spec2, Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), daemonEnv+"="+string(job))
	daemon.Stderr = os.Stderr
	out, err := daemon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { daemon.Process.Kill(); daemon.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	var pid int
	if _, serr := fmt.Sscanf(line, "pid %d", &pid); err != nil || serr != nil {
		t.Fatalf("daemon: %q %v %v", line, err, serr)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })

	// Kill the daemon mid-way through the guest's faults.
	_, before := waitStatus(t, status, 64)
	if err := daemon.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	daemon.Wait()
	if word, n := waitStatus(t, status, before+64); word != "ok" && n <= before {
		t.Fatalf("guest stopped reading its memory with the daemon: %d pages then %d", before, n)
	}

	// A new daemon re-adopts the machine and its page server.
	d2, err := New(Config{Binary: os.Args[0], PageServer: []string{os.Args[0]}, StopWait: time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r, err := d2.Attach(ctx, spec2, pid)
	if err != nil {
		t.Fatal(err)
	}
	helpers := r.(vmm.HelperProcs).Helpers()
	if len(helpers) != 1 {
		t.Fatalf("re-adopted machine has page servers %v", helpers)
	}
	if word, n := waitStatus(t, status, fakeMemSize/fakePage); word != "ok" || n != fakeMemSize/fakePage {
		t.Fatalf("guest read %d pages (%s), want all %d", n, word, fakeMemSize/fakePage)
	}
	t.Logf("the guest read %d pages before the daemon died and all %d correctly after, page server pid %d", before, fakeMemSize/fakePage, helpers[0])
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{pid, helpers[0]} {
		if err := syscall.Kill(p, 0); err == nil {
			deadline := time.Now().Add(3 * time.Second)
			for syscall.Kill(p, 0) == nil && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if syscall.Kill(p, 0) == nil {
				t.Errorf("pid %d runs on after the machine's stop", p)
			}
		}
	}
}
