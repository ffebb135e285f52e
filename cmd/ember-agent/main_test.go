package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
)

// buildAgent builds ember-agent the way templates do (static, no cgo) into
// a temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ember-agent")
	if _, err := runner.RunIn(t.Context(), "", []string{"CGO_ENABLED=0"}, "go", "build", "-o", bin, "."); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestE2BSDK runs test/e2b's suite: the pinned e2b SDK, unchanged, drives
// the agent: commands (start, stream, stdin, list, kill, re-attach), files
// (text, every byte value, several at once, 5 MiB streamed), watches and
// terminals (input, resize, exit).
func TestE2BSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs the SDK under node")
	}
	testutil.RequireTool(t, "node")
	testutil.RequireTool(t, "bash") // the SDK runs every command as bash -l -c
	dir, err := filepath.Abs(filepath.Join("..", "..", "test", "e2b"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b", "package.json")); err != nil {
		msg := fmt.Sprintf("e2b SDK not installed (%v): run `npm ci --prefix test/e2b`", err)
		if os.Getenv("EMBER_REQUIRE_ALL") == "1" {
			t.Fatalf("%s (EMBER_REQUIRE_ALL=1 forbids this skip)", msg)
		}
		t.Skip(msg)
	}
	bin := buildAgent(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// On failure the error carries node's report.
	if _, err := runner.RunIn(ctx, dir, []string{"EMBER_AGENT_BIN=" + bin}, "node", "--test", "sdk.test.mjs"); err != nil {
		t.Fatal(err)
	}
}

// TestBinary builds ember-agent the way templates do (static, no cgo), runs
// it on a loopback port, execs a command through the host client and stops
// it with SIGTERM.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildAgent(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has an ELF interpreter: it is not static")
		}
	}
	f.Close()

	cmd := exec.Command(bin, "-listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			cmd.Process.Kill()
			<-exited
		}
	})

	// The first log line names the address it listens on; the rest go to
	// the test log until the agent exits.
	lines := bufio.NewScanner(stderr)
	var first string
	if lines.Scan() {
		first = lines.Text()
	}
	go func() {
		for lines.Scan() {
			t.Log(lines.Text())
		}
		exited <- cmd.Wait()
	}()
	m := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("no address in the first log line %q", first)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := agent.New("http://"+m[1], "", nil)
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := c.Exec(ctx, agent.ExecRequest{Cmd: "echo", Args: []string{"from", "the", "agent"}}, &out, nil)
	if err != nil || st.Code != 0 || out.String() != "from the agent\n" {
		t.Fatalf("exec = %+v, %q, %v", st, out.String(), err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		reaped = true
		if err != nil {
			t.Fatalf("agent exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent still running 15s after SIGTERM")
	}
}
