package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

// TestShutdownDuringCreate stops the daemon (SIGTERM) while a create boots
// its machine: the shutdown cancels the create, which unwinds, so the next
// start finds nothing to recover and nothing is left behind.
func TestShutdownDuringCreate(t *testing.T) {
	d := start(t, 3550)
	ctx := context.Background()
	errc := make(chan error, 1)
	go func() {
		// A bigger disk than the template's cold-boots (no template
		// snapshot fits): a second or more under emulation.
		_, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{DiskMiB: 2048})
		errc <- err
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sbs, err := d.Client.ListSandboxes(ctx)
		if err == nil && len(sbs) == 1 && sbs[0].State == "creating" && sbs[0].TimingsMS["network"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no create in flight to interrupt: %+v, %v", sbs, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !client.IsCode(err, "shutting_down") {
		t.Fatalf("create during shutdown: %v, want shutting_down", err)
	} else {
		t.Logf("create during shutdown: %v", err)
	}
	log, _ := os.ReadFile(d.Log.Name())
	if !strings.Contains(string(log), "undo failed create") && !strings.Contains(string(log), `msg=stopped`) {
		t.Errorf("the daemon did not stop cleanly:\n%s", harness.Tail(string(log), 30))
	}
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	sbs, err := d.Client.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sbs) != 0 {
		t.Errorf("the next start found %+v", sbs)
	}
	log, _ = os.ReadFile(d.Log.Name())
	if !strings.Contains(string(log), "msg=\"recovered sandboxes\" adopted=0 failed=0 destroyed=0") {
		t.Errorf("the next start recovered something:\n%s", harness.Tail(string(log), 40))
	}
	if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
		t.Errorf("leaked: %v", leaks)
	}
}

// TestConsoleTailSurvivesRestart: an admin following a sandbox's console log
// (its path names the sandbox directory) is not taken for an orphaned VMM by
// the start-up reclaim of a daemon that crashed.
func TestConsoleTailSurvivesRestart(t *testing.T) {
	d := start(t, 3600)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tail := exec.Command("tail", "-f", filepath.Join(d.DataDir, "sandboxes", sb.ID, "console.log"))
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = tail.Wait(); close(exited) }()
	t.Cleanup(func() {
		tail.Process.Signal(syscall.SIGTERM)
		<-exited
	})
	d.Kill()
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		t.Fatalf("tail -f of the console log ended at the daemon's start: %v", waitErr)
	case <-time.After(500 * time.Millisecond):
	}
	got, err := d.Client.GetSandbox(ctx, sb.ID)
	if err != nil || got.State != "running" {
		t.Fatalf("sandbox after the restart: %+v, %v", got, err)
	}
}
