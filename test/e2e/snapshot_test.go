package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

// counterScript counts in a shell variable (memory) and appends each value
// to a file (disk), forever, detached from the exec; it prints its pid.
const counterScript = `sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; echo $i >> /home/user/log; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $!`

// guestSh runs a shell command in a sandbox and returns its trimmed stdout,
// failing the test on an error or a non-zero exit.
func guestSh(t *testing.T, d *harness.Daemon, id, script string) string {
	t.Helper()
	res, err := d.Client.Exec(context.Background(), id, client.ExecRequest{Cmd: "sh", Args: []string{"-c", script}, TimeoutS: 30})
	if err != nil {
		t.Fatalf("exec %q in %s: %v", script, id, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q in %s: exit %d: %s", script, id, res.ExitCode, res.Stderr)
	}
	return strings.TrimSpace(string(res.Stdout))
}

func shInt(t *testing.T, d *harness.Daemon, id, script string) int {
	t.Helper()
	out := guestSh(t, d, id, script)
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("%q in %s printed %q, not a number", script, id, out)
	}
	return n
}

// startCounter starts the counter and waits until it has counted.
func startCounter(t *testing.T, d *harness.Daemon, id string) int {
	t.Helper()
	pid := shInt(t, d, id, counterScript)
	waitCount(t, d, id, 2)
	return pid
}

// waitCount waits until the counter in a sandbox is past n and returns it.
func waitCount(t *testing.T, d *harness.Daemon, id string, n int) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := shInt(t, d, id, "cat /tmp/count 2>/dev/null || echo 0")
		if c > n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter in %s stuck at %d, want past %d", id, c, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// assertCounterContinues checks that the same process still counts from
// where it was (at least from) and that its log holds every value in order.
func assertCounterContinues(t *testing.T, d *harness.Daemon, id string, pid, from int) {
	t.Helper()
	if got := guestSh(t, d, id, "kill -0 "+strconv.Itoa(pid)+" && echo alive"); got != "alive" {
		t.Fatalf("counter pid %d gone from %s", pid, id)
	}
	now := shInt(t, d, id, "cat /tmp/count")
	if now < from {
		t.Fatalf("counter in %s went back from %d to %d", id, from, now)
	}
	waitCount(t, d, id, now+1)
	// The log is 1, 2, 3, ... with nothing lost or repeated.
	if bad := guestSh(t, d, id, `awk 'NR != $1 { print NR": "$0; exit }' /home/user/log`); bad != "" {
		t.Fatalf("log in %s broken at line %s", id, bad)
	}
}

func TestPauseResumeKeepsGuestState(t *testing.T) {
	url := outside(t)
	d := startWith(t, harness.Options{SlotFirst: 3700, Uplink: uplinkLink})
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pid := startCounter(t, d, sb.ID)
	guestSh(t, d, sb.ID, "echo kept > /home/user/file")

	count := shInt(t, d, sb.ID, "cat /tmp/count")
	p, err := d.Client.PauseSandbox(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != "paused" || p.MemoryBytes <= 0 || p.DiskBytes <= 0 {
		t.Fatalf("paused sandbox %+v", p)
	}
	t.Logf("pause took %.0f ms; saved memory %d KiB, disk %d KiB", p.TimingsMS["pause"], p.MemoryBytes>>10, p.DiskBytes>>10)
	if _, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); !client.IsCode(err, "invalid_state") {
		t.Fatalf("exec in paused sandbox: %v", err)
	}
	if _, err := d.Client.PauseSandbox(ctx, sb.ID); !client.IsCode(err, "invalid_state") {
		t.Fatalf("pause twice: %v", err)
	}
	time.Sleep(3 * time.Second) // the guest's clock stands still meanwhile

	r, err := d.Client.ResumeSandbox(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != "running" {
		t.Fatalf("resumed sandbox %+v", r)
	}
	t.Logf("resume took %.0f ms", r.TimingsMS["resume"])
	if _, err := d.Client.ResumeSandbox(ctx, sb.ID); !client.IsCode(err, "invalid_state") {
		t.Fatalf("resume twice: %v", err)
	}
	assertCounterContinues(t, d, sb.ID, pid, count)
	if got := guestSh(t, d, sb.ID, "cat /home/user/file"); got != "kept" {
		t.Fatalf("file after resume: %q", got)
	}
	// The guest reaches the (test's) internet from its new slot.
	if got := guestSh(t, d, sb.ID, "timeout 5 wget -q -O - "+url); got == "" {
		t.Fatal("outbound request after resume returned nothing")
	}
	guest := shInt(t, d, sb.ID, "date +%s")
	if skew := time.Now().Unix() - int64(guest); skew > 2 || skew < -2 {
		t.Fatalf("guest clock off by %d s after resume", skew)
	}
	// A second round trip works the same.
	if _, err := d.Client.PauseSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.ResumeSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	assertCounterContinues(t, d, sb.ID, pid, count)
}

func TestSnapshotCreateFromAndFork(t *testing.T) {
	d := start(t, 3750)
	ctx := context.Background()
	src, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pid := startCounter(t, d, src.ID)
	guestSh(t, d, src.ID, "echo from-snapshot > /home/user/marker")
	sn, err := d.Client.CreateSnapshot(ctx, src.ID, "e2e-snap")
	if err != nil {
		t.Fatal(err)
	}
	if sn.DiskBytes <= 0 || sn.MemoryBytes <= 0 || sn.MemoryMiB != src.MemoryMiB {
		t.Fatalf("snapshot %+v", sn)
	}
	if _, err := d.Client.CreateSnapshot(ctx, src.ID, "e2e-snap"); !client.IsCode(err, "snapshot_exists") {
		t.Fatalf("same name again: %v", err)
	}
	// The source keeps running.
	assertCounterContinues(t, d, src.ID, pid, 1)
	guestSh(t, d, src.ID, "echo changed-after > /home/user/marker")

	var kids []string
	for i := range 3 {
		k, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{Snapshot: "e2e-snap"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("create from snapshot %d: %v ms", i, k.TimingsMS)
		kids = append(kids, k.ID)
	}
	for i, id := range kids {
		if got := guestSh(t, d, id, "cat /home/user/marker"); got != "from-snapshot" {
			t.Fatalf("marker in %s: %q", id, got)
		}
		assertCounterContinues(t, d, id, pid, 1)
		guestSh(t, d, id, "echo "+strconv.Itoa(i)+" > /home/user/mine")
	}
	// Each diverged on its own.
	for i, id := range kids {
		if got := guestSh(t, d, id, "cat /home/user/mine"); got != strconv.Itoa(i) {
			t.Fatalf("%s sees %q, want its own %d", id, got, i)
		}
	}
	if err := d.Client.DeleteSnapshot(ctx, "e2e-snap"); !client.IsCode(err, "snapshot_in_use") {
		t.Fatalf("delete in use: %v", err)
	}

	forks, err := d.Client.ForkSandbox(ctx, src.ID, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(forks) != 3 {
		t.Fatalf("%d forks", len(forks))
	}
	for _, f := range forks {
		if got := guestSh(t, d, f.ID, "cat /home/user/marker"); got != "changed-after" {
			t.Fatalf("marker in fork %s: %q", f.ID, got)
		}
		assertCounterContinues(t, d, f.ID, pid, 1)
	}
	if list, err := d.Client.ListSnapshots(ctx); err != nil || len(list) != 1 {
		t.Fatalf("snapshots after fork: %+v %v", list, err)
	}
	for _, id := range append(kids, forks[0].ID, forks[1].ID, forks[2].ID) {
		if err := d.Client.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Client.DeleteSnapshot(ctx, "e2e-snap"); err != nil {
		t.Fatal(err)
	}
}

func TestTimeoutDestroysOrPauses(t *testing.T) {
	d := start(t, 3800)
	ctx := context.Background()
	gone, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{TimeoutS: 5})
	if err != nil {
		t.Fatal(err)
	}
	paused, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{TimeoutS: 5, AutoPause: true})
	if err != nil {
		t.Fatal(err)
	}
	extended, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{TimeoutS: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.SetTimeout(ctx, extended.ID, 600); err != nil {
		t.Fatal(err)
	}
	guestSh(t, d, paused.ID, "echo before > /home/user/file")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, errGone := d.Client.GetSandbox(ctx, gone.ID)
		p, _ := d.Client.GetSandbox(ctx, paused.ID)
		if client.IsCode(errGone, "sandbox_not_found") && p.State == "paused" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the timeout: %v, auto-pause sandbox %s", errGone, p.State)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if got, err := d.Client.GetSandbox(ctx, extended.ID); err != nil || got.State != "running" {
		t.Fatalf("extended sandbox: %+v %v", got, err)
	}
	if _, err := d.Client.ResumeSandbox(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}
	if got := guestSh(t, d, paused.ID, "cat /home/user/file"); got != "before" {
		t.Fatalf("file after auto-pause: %q", got)
	}
}

func TestPausedSurvivesDaemonRestart(t *testing.T) {
	d := start(t, 3850)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pid := startCounter(t, d, sb.ID)
	if _, err := d.Client.PauseSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.CreateSnapshot(ctx, sb.ID, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := d.Client.GetSandbox(ctx, sb.ID)
	if err != nil || got.State != "paused" {
		t.Fatalf("after restart: %+v %v", got, err)
	}
	if _, err := d.Client.GetSnapshot(ctx, "kept"); err != nil {
		t.Fatalf("snapshot after restart: %v", err)
	}
	if _, err := d.Client.ResumeSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	assertCounterContinues(t, d, sb.ID, pid, 1)
	k, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{Snapshot: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	assertCounterContinues(t, d, k.ID, pid, 1)
}
