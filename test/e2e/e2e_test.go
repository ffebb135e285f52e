// Package e2e is the VM tier: real sandboxes under QEMU (TCG where there is
// no KVM) created through a real daemon, driven by the Go SDK and the CLI.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

// slotSpan bounds how many slots one daemon of these tests may use.
const slotSpan = 50

// start runs a daemon for one test, with its own data dir and slot range,
// and checks at cleanup that it left nothing behind.
func start(t *testing.T, slotFirst int) *harness.Daemon {
	t.Helper()
	return startWith(t, harness.Options{SlotFirst: slotFirst})
}

// startWith is start with options.
func startWith(t *testing.T, o harness.Options) *harness.Daemon {
	t.Helper()
	return harness.ForTest(t, o, slotSpan)
}

func TestSandboxThroughSDK(t *testing.T) {
	d := start(t, 3000)
	ctx := context.Background()
	c := d.Client

	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "base", Env: map[string]string{"GREETING": "hello-from-create"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("created %s in %.0f ms: %v", sb.ID, sb.TimingsMS["total"], sb.TimingsMS)
	if sb.State != "running" {
		t.Fatalf("state %s", sb.State)
	}

	t.Run("uname", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "uname", Args: []string{"-a"}})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 || !strings.HasPrefix(string(res.Stdout), "Linux ") {
			t.Fatalf("uname -a: %+v", res)
		}
	})
	t.Run("env", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo $GREETING $EXTRA"},
			Env: map[string]string{"EXTRA": "and-from-exec"}})
		if err != nil {
			t.Fatal(err)
		}
		if string(res.Stdout) != "hello-from-create and-from-exec\n" {
			t.Fatalf("env: %+v", res)
		}
	})
	t.Run("cwd", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "pwd", Cwd: "/tmp"})
		if err != nil || string(res.Stdout) != "/tmp\n" {
			t.Fatalf("pwd: %+v %v", res, err)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "cat", Stdin: []byte("line one\nline two\n")})
		if err != nil || string(res.Stdout) != "line one\nline two\n" || res.ExitCode != 0 {
			t.Fatalf("cat: %+v %v", res, err)
		}
	})
	t.Run("stdout and stderr apart", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo out; echo err >&2; echo out2"}})
		if err != nil || string(res.Stdout) != "out\nout2\n" || string(res.Stderr) != "err\n" {
			t.Fatalf("streams: %+v %v", res, err)
		}
	})
	t.Run("exit code", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "exit 42"}})
		if err != nil || res.ExitCode != 42 {
			t.Fatalf("exit 42: %+v %v", res, err)
		}
	})
	t.Run("streams before the end", func(t *testing.T) {
		var mu sync.Mutex
		var firstAt time.Time
		var out bytes.Buffer
		w := writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			if firstAt.IsZero() {
				firstAt = time.Now()
			}
			return out.Write(p)
		})
		start := time.Now()
		res, err := c.ExecStream(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh",
			Args: []string{"-c", "for i in 1 2 3 4; do echo line $i; sleep 0.5; done"}}, w, &bytes.Buffer{})
		end := time.Now()
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("stream: %+v %v", res, err)
		}
		if out.String() != "line 1\nline 2\nline 3\nline 4\n" {
			t.Fatalf("output %q", out.String())
		}
		// The command sleeps 2 s in all; its first line must arrive long
		// before it ends.
		if firstAt.Sub(start) > end.Sub(start)-time.Second {
			t.Fatalf("first line at %s, command ended at %s: not streamed", firstAt.Sub(start), end.Sub(start))
		}
	})
	t.Run("exec errors", func(t *testing.T) {
		if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: ""}); !client.IsCode(err, "invalid_argument") {
			t.Fatalf("empty cmd: %v", err)
		}
		if _, err := c.Exec(ctx, "nosuchsandbox", client.ExecRequest{Cmd: "ls"}); !client.IsCode(err, "sandbox_not_found") {
			t.Fatalf("unknown id: %v", err)
		}
		if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "sleep", Args: []string{"30"}, TimeoutS: 1}); !client.IsCode(err, "exec_timeout") {
			t.Fatalf("timeout: %v", err)
		}
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/no/such/binary"})
		if err == nil && res.ExitCode == 0 {
			t.Fatalf("missing binary succeeded: %+v", res)
		}
	})

	if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
		t.Fatalf("leaked after destroy: %v", leaks)
	}
	if _, err := c.GetSandbox(ctx, sb.ID); !client.IsCode(err, "sandbox_not_found") {
		t.Fatalf("get after destroy: %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestBadInputLeavesNothing(t *testing.T) {
	d := start(t, 3100)
	ctx := context.Background()
	cases := []struct {
		name string
		req  client.CreateSandboxRequest
		code string
	}{
		{"unknown template", client.CreateSandboxRequest{Template: "nope"}, "template_not_found"},
		{"absurd vcpus", client.CreateSandboxRequest{VCPUs: 4096}, "invalid_argument"},
		{"absurd memory", client.CreateSandboxRequest{MemoryMiB: 1 << 24}, "invalid_argument"},
		{"negative timeout", client.CreateSandboxRequest{TimeoutS: -1}, "invalid_argument"},
	}
	for _, tc := range cases {
		if _, err := d.Client.CreateSandbox(ctx, tc.req); !client.IsCode(err, tc.code) {
			t.Errorf("%s: err = %v, want %s", tc.name, err, tc.code)
		}
	}
	if _, err := client.New(d.URL, "wrong").ListSandboxes(ctx); !client.IsCode(err, "unauthorized") {
		t.Errorf("bad key: %v", err)
	}
	if sbs, _ := d.Client.ListSandboxes(ctx); len(sbs) != 0 {
		t.Errorf("sandboxes after bad input: %+v", sbs)
	}
	if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
		t.Errorf("leaked: %v", leaks)
	}
}

func TestSandboxThroughCLI(t *testing.T) {
	d := start(t, 3200)
	run := func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(d.Bin, args...)
		cmd.Env = d.Env()
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("ember %v: %v", args, err)
		}
		return out.String(), errb.String(), code
	}
	out, errOut, code := run("", "create", "--env", "WHO=cli")
	if code != 0 {
		t.Fatalf("create: %d %s", code, errOut)
	}
	id := strings.TrimSpace(out)
	out, _, _ = run("", "ls")
	if !strings.Contains(out, id) || !strings.Contains(out, "running") {
		t.Fatalf("ls does not show %s running:\n%s", id, out)
	}
	out, errOut, code = run("", "exec", id, "--", "/bin/sh", "-c", "echo hi $WHO; echo oops >&2; exit 3")
	if code != 3 || out != "hi cli\n" || errOut != "oops\n" {
		t.Fatalf("exec: code %d stdout %q stderr %q", code, out, errOut)
	}
	out, _, code = run("piped\n", "exec", "-i", id, "--", "cat")
	if code != 0 || out != "piped\n" {
		t.Fatalf("exec -i: %d %q", code, out)
	}
	out, _, code = run("", "template", "ls")
	if code != 0 || !strings.Contains(out, "base") || !strings.Contains(out, "MiB") {
		t.Fatalf("template ls: %d\n%s", code, out)
	}
	_, errOut, code = run("", "exec", "nosuchsandbox", "--", "ls")
	if code == 0 || !strings.Contains(errOut, "sandbox_not_found") {
		t.Fatalf("exec unknown: %d %q", code, errOut)
	}
	if _, errOut, code = run("", "rm", id); code != 0 {
		t.Fatalf("rm: %d %s", code, errOut)
	}
	out, _, _ = run("", "ls")
	if strings.Contains(out, id) {
		t.Fatalf("ls still shows %s:\n%s", id, out)
	}
	if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
		t.Fatalf("leaked: %v", leaks)
	}
}

func TestStateSurvivesDaemonRestart(t *testing.T) {
	d := start(t, 3300)
	ctx := context.Background()
	keep, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	lose, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	// While the daemon is down one machine dies.
	procs := harness.Processes(filepath.Join(d.DataDir, "sandboxes", lose.ID))
	if len(procs) != 1 {
		t.Fatalf("vmm of %s: %v", lose.ID, procs)
	}
	var pid int
	if _, err := fmtSscan(procs[0], &pid); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGKILL)

	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := d.Client.GetSandbox(ctx, keep.ID)
	if err != nil || got.State != "running" {
		t.Fatalf("survivor after restart: %+v %v", got, err)
	}
	res, err := d.Client.Exec(ctx, keep.ID, client.ExecRequest{Cmd: "echo", Args: []string{"still here"}})
	if err != nil || string(res.Stdout) != "still here\n" {
		t.Fatalf("exec after restart: %+v %v", res, err)
	}
	got, err = d.Client.GetSandbox(ctx, lose.ID)
	if err != nil || got.State != "error" || got.Error == "" {
		t.Fatalf("lost sandbox after restart: %+v %v", got, err)
	}
	// The lost sandbox's slot, disk and directory are released already.
	if _, err := os.Stat(filepath.Join(d.DataDir, "sandboxes", lose.ID)); !os.IsNotExist(err) {
		t.Fatalf("dir of lost sandbox: %v", err)
	}
}

// fmtSscan reads the pid from a harness.Processes line ("process <pid> ...").
func fmtSscan(line string, pid *int) (int, error) {
	return fmt.Sscanf(line, "process %d", pid)
}

func TestPortExposure(t *testing.T) {
	d := start(t, 3400)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// busybox httpd daemonises itself.
	res, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c",
		"mkdir -p /tmp/www && echo served-from-guest > /tmp/www/index.html && httpd -p 8080 -h /tmp/www"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start httpd: %+v %v", res, err)
	}
	get := func(host string, hdr map[string]string, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", d.URL+path, nil)
		req.Host = host
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("8080-"+sb.ID+".localhost", nil, "/index.html"); code != 200 || body != "served-from-guest\n" {
		t.Fatalf("by host: %d %q", code, body)
	}
	if code, body := get("127.0.0.1", map[string]string{"E2b-Sandbox-Id": sb.ID, "E2b-Sandbox-Port": "8080"}, "/index.html"); code != 200 || body != "served-from-guest\n" {
		t.Fatalf("by headers: %d %q", code, body)
	}
	// The guest agent is reached the same way (E2B SDKs talk to envd so).
	if code, _ := get("49983-"+sb.ID+".localhost", nil, "/health"); code != 204 {
		t.Fatalf("agent health through the proxy: %d", code)
	}
	if code, body := get("8081-"+sb.ID+".localhost", nil, "/"); code != 502 || !strings.Contains(body, "sandbox_unreachable") {
		t.Fatalf("closed port: %d %s", code, body)
	}
}

func TestKillDuringCreateLeaksNothing(t *testing.T) {
	d := start(t, 3500)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Most of these die with the daemon; the error is expected.
			d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
		}()
	}
	// Kill while the creates are in flight: disks prepared, slots built,
	// VMMs booting.
	time.Sleep(400 * time.Millisecond)
	d.Kill()
	wg.Wait()
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	sbs, err := d.Client.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	running := map[string]bool{}
	for _, sb := range sbs {
		switch sb.State {
		case "running":
			running[sb.ID] = true
		case "error":
		default:
			t.Errorf("sandbox %s is %s after restart", sb.ID, sb.State)
		}
	}
	// Whatever is not a running sandbox's must be gone already. Network
	// slots are judged by the cleanup's leak check after the daemon stops:
	// its pool removes its own, so what remains would be the killed
	// daemon's, which only reclaim at start removes.
	for _, leak := range d.LeaksWhileRunning() {
		owned := false
		for id := range running {
			owned = owned || strings.Contains(leak, id)
		}
		if !owned {
			t.Errorf("leaked after restart: %s", leak)
		}
	}
	t.Logf("after SIGKILL and restart: %d running, %d in error", len(running), len(sbs)-len(running))
}
