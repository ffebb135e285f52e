// Package browser tests the /test page in a real browser: a real daemon
// boots real sandboxes, and ui.mjs drives the page in Debian's headless
// Chromium through playwright-core, saving screenshots as artifacts.
package browser

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// slotFirst keeps this daemon's slots apart from the VM tier's other daemons.
const slotFirst = 3950

// slotSpan bounds how many slots the test's sandboxes may use.
const slotSpan = 40

func TestPage(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	testutil.RequireTool(t, "node")
	browser := os.Getenv("EMBER_CHROMIUM")
	if browser == "" {
		browser = "/usr/bin/chromium"
	}
	requireFile(t, browser, "no Chromium: `apt-get install chromium` (make deps does) or set EMBER_CHROMIUM")
	requireFile(t, filepath.Join("node_modules", "playwright-core", "package.json"),
		"playwright-core is not installed: run `npm ci --prefix test/browser` (make deps does)")

	artifacts := os.Getenv("EMBER_ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join(os.TempDir(), "ember-browser-artifacts")
	} else {
		artifacts = filepath.Join(artifacts, "browser")
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots go to %s", artifacts)

	// Samples every second, so the page's charts fill in seconds.
	d := harness.ForTest(t, harness.Options{SlotFirst: slotFirst, Args: []string{"--metrics-interval", "1s"}}, slotSpan)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "ui.mjs")
	cmd.Env = append(os.Environ(), "EMBER_URL="+d.URL, "EMBER_API_KEY="+d.APIKey,
		"EMBER_ARTIFACTS="+artifacts, "EMBER_CHROMIUM="+browser)
	// Chromium's helpers join node's process group, so a timeout ends all of them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	logLines(t, out)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ui.mjs: %v", err)
	}
}

// logLines copies the script's output into the test log line by line, as
// it comes, so a slow step shows where it is.
func logLines(t *testing.T, r io.Reader) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		t.Log(s.Text())
	}
}

func requireFile(t *testing.T, path, fix string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	msg := fmt.Sprintf("%s missing: %s", path, fix)
	if os.Getenv("EMBER_REQUIRE_ALL") == "1" {
		t.Fatalf("%s (EMBER_REQUIRE_ALL=1 forbids this skip)", msg)
	}
	t.Skip(msg)
}
