//go:build linux

package vmmproc

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/vmm"
)

// The test binary plays a VMM when helperEnv names a mode; it ignores its
// arguments, which carry the identities the tests look for.
const (
	helperEnv = "EMBER_TEST_VMMPROC"
	// readyEnv names a file the helper writes once its signal handling
	// is in place, holding the pid of its child in the "stubborn" mode.
	readyEnv = "EMBER_TEST_VMMPROC_READY"
)

// Helper modes.
const (
	modeSleep    = "sleep"    // runs until a signal ends it; SIGTERM does
	modeDeaf     = "deaf"     // ignores SIGTERM
	modeStubborn = "stubborn" // ignores SIGTERM and starts a deaf child in its group
	modeExit3    = "exit3"    // exits with status 3 at once
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case modeExit3:
		os.Exit(3)
	case modeDeaf:
		signal.Ignore(syscall.SIGTERM)
		ready("")
	case modeStubborn:
		signal.Ignore(syscall.SIGTERM)
		// The child stays in this process's group: only the SIGKILL to
		// the group ends it.
		childReady := os.Getenv(readyEnv) + ".child"
		child := exec.Command(os.Args[0])
		child.Env = append(os.Environ(), helperEnv+"="+modeDeaf, readyEnv+"="+childReady)
		if err := child.Start(); err != nil {
			os.Exit(2)
		}
		for {
			if _, err := os.Stat(childReady); err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		ready(strconv.Itoa(child.Process.Pid))
	case modeSleep:
		ready("")
	}
	for {
		time.Sleep(time.Hour)
	}
}

func ready(content string) {
	if p := os.Getenv(readyEnv); p != "" {
		os.WriteFile(p+".tmp", []byte(content), 0o644)
		os.Rename(p+".tmp", p)
	}
}

// helper returns a command running the test binary in mode with args, and
// the file it writes once ready.
func helper(t *testing.T, mode string, args ...string) (*exec.Cmd, string) {
	t.Helper()
	readyFile := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, readyEnv+"="+readyFile)
	return cmd, readyFile
}

// waitReady waits for a helper's ready file and returns its content.
func waitReady(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return string(b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("helper not ready: no %s", path)
	return ""
}

// startHelper starts a helper as an earlier daemon would have started a
// VMM: leading its own process group. It is killed and reaped when the
// test ends; the returned channel yields its exit status once it has
// exited.
func startHelper(t *testing.T, mode string, args ...string) (*exec.Cmd, <-chan syscall.WaitStatus, string) {
	t.Helper()
	cmd, readyFile := helper(t, mode, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	status := make(chan syscall.WaitStatus, 1)
	go func() {
		cmd.Wait()
		status <- cmd.ProcessState.Sys().(syscall.WaitStatus)
	}()
	t.Cleanup(func() {
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		cmd.Process.Kill()
	})
	var child string
	if mode != modeExit3 {
		child = waitReady(t, readyFile)
	}
	return cmd, status, child
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still running", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIdentityIn(t *testing.T) {
	id := Identity{"--api-sock", "/srv/a/api.sock"}
	for _, tc := range []struct {
		name string
		args []string
		want bool
	}{
		{"flag then value", []string{"fc", "--id", "a", "--api-sock", "/srv/a/api.sock"}, true},
		{"value after another flag", []string{"fc", "--log", "/srv/a/api.sock"}, false},
		{"flag last", []string{"fc", "--api-sock"}, false},
		{"value of another machine", []string{"fc", "--api-sock", "/srv/b/api.sock"}, false},
		{"value inside an argument", []string{"tail", "-f", "--api-sock=/srv/a/api.sock"}, false},
		{"empty", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := id.In(tc.args); got != tc.want {
				t.Errorf("%v carries %s: %v, want %v", tc.args, id, got, tc.want)
			}
		})
	}
}

func TestCmdline(t *testing.T) {
	cmd, _, _ := startHelper(t, modeSleep, "--api-sock", "/x y/api.sock", "")
	args, err := Cmdline(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{os.Args[0], "--api-sock", "/x y/api.sock", ""}; strings.Join(args, "|") != strings.Join(want, "|") {
		t.Errorf("command line %q, want %q", args, want)
	}
	if _, err := Cmdline(1 << 30); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("command line of no process: %v, want ErrNotRunning", err)
	}
}

// TestStartReapsChild shows a child's exit closes Done after exited has
// run with how the child ended, and leaves no zombie.
func TestStartReapsChild(t *testing.T) {
	cmd, _ := helper(t, modeExit3)
	var status string
	p, err := Start(cmd, "", func(s string) { status = s })
	if err != nil {
		t.Fatal(err)
	}
	if !p.Wait(10 * time.Second) {
		t.Fatal("Done not closed after the child exited")
	}
	if status != "exit status 3" {
		t.Errorf("exited with %q, want %q", status, "exit status 3")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.PID())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("child not reaped: %v", err)
	}
	if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signal after the exit: %v, want ErrProcessDone", err)
	}
}

// TestTerminate ends children and adopted processes that obey SIGTERM and
// that ignore it; SIGKILL reaches the whole process group.
func TestTerminate(t *testing.T) {
	const term = 300 * time.Millisecond
	id := Identity{"--test-vmm", "terminate"}
	for _, tc := range []struct {
		name    string
		mode    string
		adopt   bool
		how     string
		minTime time.Duration
	}{
		{"child obeys sigterm", modeSleep, false, "sigterm", 0},
		{"child ignores sigterm", modeStubborn, false, "sigkill", term},
		{"adopted obeys sigterm", modeSleep, true, "sigterm", 0},
		{"adopted ignores sigterm", modeStubborn, true, "sigkill", term},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p *Process
			var child string
			if tc.adopt {
				var cmd *exec.Cmd
				cmd, _, child = startHelper(t, tc.mode, id.Flag, id.Value)
				var err error
				if p, err = Adopt(cmd.Process.Pid, id, nil); err != nil {
					t.Fatal(err)
				}
			} else {
				cmd, readyFile := helper(t, tc.mode, id.Flag, id.Value)
				var err error
				if p, err = Start(cmd, "", nil); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Kill() })
				child = waitReady(t, readyFile)
				if pgid, err := unix.Getpgid(p.PID()); err != nil || pgid != p.PID() {
					t.Errorf("child in process group %d (%v), want its own", pgid, err)
				}
			}
			begin := time.Now()
			how, err := p.Terminate(term)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(begin)
			if how != tc.how {
				t.Errorf("ended by %s, want %s", how, tc.how)
			}
			if took < tc.minTime || took > tc.minTime+5*time.Second {
				t.Errorf("terminate took %s, want about %s", took, tc.minTime)
			}
			if !p.Exited() {
				t.Error("Done not closed after Terminate")
			}
			if child != "" {
				pid, _ := strconv.Atoi(child)
				waitGone(t, pid)
			}
			if how, err := p.Terminate(term); how != "exited" || err != nil {
				t.Errorf("second terminate: %q, %v; want exited", how, err)
			}
		})
	}
}

func TestAdoptRejects(t *testing.T) {
	id := Identity{"--test-vmm", "mine"}
	other, _, _ := startHelper(t, modeSleep, "--test-vmm", "theirs")
	exited, status, _ := startHelper(t, modeExit3, id.Flag, id.Value)
	<-status
	for _, tc := range []struct {
		name string
		pid  int
	}{
		{"another machine's vmm", other.Process.Pid},
		{"this test", os.Getpid()},
		{"exited and reaped", exited.Process.Pid},
		{"no such pid", 1 << 30},
		{"zero pid", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if p, err := Adopt(tc.pid, id, nil); !errors.Is(err, vmm.ErrNotRunning) {
				if p != nil {
					p.Release()
				}
				t.Errorf("adopt: %v, want ErrNotRunning", err)
			}
		})
	}
}

// TestAdoptWatchesWithoutThreads adopts many processes and checks that
// watching them holds no thread each, and that each exit is seen.
func TestAdoptWatchesWithoutThreads(t *testing.T) {
	const n = 24
	id := Identity{"--test-vmm", "many"}
	var cmds []*exec.Cmd
	var statuses []<-chan syscall.WaitStatus
	for range n {
		cmd, status, _ := startHelper(t, modeSleep, id.Flag, id.Value)
		cmds, statuses = append(cmds, cmd), append(statuses, status)
	}
	before := threads(t)
	var ps []*Process
	for _, cmd := range cmds {
		p, err := Adopt(cmd.Process.Pid, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	time.Sleep(300 * time.Millisecond)
	if after := threads(t); after-before >= n/2 {
		t.Errorf("%d threads before adopting %d processes, %d after: a thread per process", before, n, after)
	}
	for i, cmd := range cmds {
		cmd.Process.Kill()
		<-statuses[i]
		if !ps[i].Wait(5 * time.Second) {
			t.Fatalf("exit of adopted pid %d not seen", cmd.Process.Pid)
		}
	}
}

func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

func TestRelease(t *testing.T) {
	id := Identity{"--test-vmm", "released"}
	cmd, status, _ := startHelper(t, modeSleep, id.Flag, id.Value)
	p, err := Adopt(cmd.Process.Pid, id, func(string) { t.Error("exited ran for a released process") })
	if err != nil {
		t.Fatal(err)
	}
	p.Release()
	if !alive(cmd.Process.Pid) {
		t.Fatal("release ended the process")
	}
	cmd.Process.Kill()
	<-status
	if p.Wait(200 * time.Millisecond) {
		t.Error("Done closed for a released process")
	}
}

// TestReclaim ends only the VMMs of machines under keep.Dir that keep does
// not hold, SIGTERM first and SIGKILL to the group of one that ignores it;
// processes that merely name a machine's directory are left alone.
func TestReclaim(t *testing.T) {
	keep := reclaim.Keep{Dir: t.TempDir(), PIDs: map[int]bool{}}
	elsewhere := t.TempDir()
	for _, name := range []string{"obeys", "ignores", "kept", "idle"} {
		if err := os.Mkdir(filepath.Join(keep.Dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	identity := func(spec vmm.Spec) Identity { return Identity{"--api-sock", spec.Dir + "/api.sock"} }
	sock := func(dir, name string) string { return filepath.Join(dir, name, "api.sock") }
	_, obeys, _ := startHelper(t, modeSleep, "--api-sock", sock(keep.Dir, "obeys"))
	_, ignores, child := startHelper(t, modeStubborn, "--api-sock", sock(keep.Dir, "ignores"))
	kept, _, _ := startHelper(t, modeSleep, "--api-sock", sock(keep.Dir, "kept"))
	keep.PIDs[kept.Process.Pid] = true
	survivors := []*exec.Cmd{kept}
	for _, args := range [][]string{
		{"--api-sock", sock(elsewhere, "obeys")}, // a machine of another daemon
		{"--log", sock(keep.Dir, "idle")},        // names the path under another flag
		{sock(keep.Dir, "obeys")},                // names it on its own
	} {
		cmd, _, _ := startHelper(t, modeSleep, args...)
		survivors = append(survivors, cmd)
	}

	res, err := Reclaim(keep, identity, 300*time.Millisecond, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if res != (reclaim.Result{Found: 2, Removed: 2}) {
		t.Errorf("result %+v, want 2 found, 2 removed", res)
	}
	for _, tc := range []struct {
		name   string
		status <-chan syscall.WaitStatus
		sig    syscall.Signal
	}{
		{"obeys", obeys, syscall.SIGTERM},
		{"ignores", ignores, syscall.SIGKILL},
	} {
		select {
		case ws := <-tc.status:
			if !ws.Signaled() || ws.Signal() != tc.sig {
				t.Errorf("vmm of %s ended with %v, want %v", tc.name, ws, tc.sig)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("vmm of %s still running", tc.name)
		}
	}
	pid, _ := strconv.Atoi(child)
	waitGone(t, pid)
	for _, cmd := range survivors {
		if !alive(cmd.Process.Pid) {
			t.Errorf("%v ended, but is no orphaned vmm", cmd.Args[1:])
		}
	}
}

func TestCheckSpec(t *testing.T) {
	dir := t.TempDir()
	kernel, disk := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "disk")
	for _, p := range []string{kernel, disk} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	good := vmm.Spec{Dir: dir, Kernel: kernel, RootDisk: disk}
	for _, tc := range []struct {
		name   string
		edit   func(s *vmm.Spec)
		socket string
		want   string // "" for a spec that passes
	}{
		{"good", nil, "", ""},
		{"no directory", func(s *vmm.Spec) { s.Dir = "" }, "", "no directory"},
		{"socket path too long", nil, "/" + strings.Repeat("x", MaxSocketPath), "unix socket"},
		{"socket path at the limit", nil, "/" + strings.Repeat("x", MaxSocketPath-1), ""},
		{"missing directory", func(s *vmm.Spec) { s.Dir = filepath.Join(dir, "gone") }, "", "directory"},
		{"missing kernel", func(s *vmm.Spec) { s.Kernel += ".gone" }, "", "kernel"},
		{"missing disk", func(s *vmm.Spec) { s.RootDisk += ".gone" }, "", "root disk"},
		{"missing initrd", func(s *vmm.Spec) { s.Initrd = filepath.Join(dir, "initrd") }, "", "initrd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			if tc.edit != nil {
				tc.edit(&s)
			}
			err := CheckSpec(s, tc.socket)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("good spec refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestLogTail(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("a", 3000) + "\nlast line\n"
	for _, tc := range []struct {
		name, content string
		missing       bool
		want          string
	}{
		{"missing", "", true, "no qemu log: open "},
		{"empty", "  \n", false, "empty qemu log"},
		{"lines", "one\ntwo\n", false, "qemu log: one; two"},
		{"long", long, false, "qemu log: " + strings.Repeat("a", 2048-len("\nlast line\n")) + "; last line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if !tc.missing {
				if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := LogTail("qemu log", p)
			if tc.missing && !strings.HasPrefix(got, tc.want) || !tc.missing && got != tc.want {
				t.Errorf("tail %q, want %q", got, tc.want)
			}
		})
	}
}
