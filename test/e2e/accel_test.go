package e2e

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/qemu"
	"github.com/emberhq/ember/test/harness"
)

// TestAccelIsSaid checks that the daemon says which accelerator the default
// template's kernel gets and why, in GET /v1/info, `ember info` and its
// start-up log, and that it is the verdict of the same probe the tests use.
func TestAccelIsSaid(t *testing.T) {
	d := start(t, 3450)
	guest := testutil.Guest(t)
	want, err := qemu.NewProber("qemu-system-x86_64", "", 0, slog.New(slog.DiscardHandler)).Choose(context.Background(), guest.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Client.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, a := range info.Accelerators {
		if a.Template != "base" {
			continue
		}
		found = true
		if a.Accel != want.Accel || a.Reason != want.Reason || a.Kernel != want.ShortKernel() {
			t.Errorf("info says %+v, the probe %s: %s", a, want.Accel, want.Reason)
		}
	}
	if !found {
		t.Fatalf("info has no accelerator for base: %+v", info)
	}
	cmd := exec.Command(d.Bin, "info")
	cmd.Env = d.Env()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "accel:      base: "+want.Reason) {
		t.Errorf("ember info: %v\n%s", err, out)
	}
	log, _ := os.ReadFile(d.Log.Name())
	if !strings.Contains(string(log), `msg=accelerator template=base kernel=`+want.ShortKernel()) {
		t.Errorf("start-up log does not name the accelerator:\n%s", harness.Tail(string(log), 30))
	}
	t.Logf("base: %s", want.Reason)
}

// TestAccelKVMRefused: where KVM does not boot ember's kernel (a PVM host,
// or none at all), `ember serve --accel kvm` exits non-zero at start with
// the probe's reason and starts nothing.
func TestAccelKVMRefused(t *testing.T) {
	h := harness.Require(t)
	v, err := qemu.NewProber("qemu-system-x86_64", "", 0, slog.New(slog.DiscardHandler)).Choose(context.Background(), h.Guest.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if v.Accel == accel.KVM {
		t.Skip("KVM boots ember's kernel on this host: nothing to refuse")
	}
	dataDir := t.TempDir()
	const slotFirst = 3470
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Bin, "serve", "--accel", "kvm", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
		"--template-dir", h.Templates, "--slot-first", "3470", "--no-egress")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ember serve --accel kvm did not exit:\n%s", out.String())
	}
	if err == nil {
		t.Fatalf("ember serve --accel kvm exited 0:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "--accel kvm") || !strings.Contains(out.String(), v.Reason) {
		t.Errorf("the refusal does not give the probe's reason %q:\n%s", v.Reason, out.String())
	}
	t.Logf("refused: %s", strings.TrimSpace(harness.Tail(out.String(), 1)))
	d := &harness.Daemon{DataDir: dataDir, SlotFirst: slotFirst}
	if leaks := d.Leaks(10); len(leaks) > 0 {
		t.Errorf("a refused start left: %v", leaks)
	}
	if pids := harness.Processes(dataDir); len(pids) > 0 {
		t.Errorf("a refused start left processes: %v", pids)
	}
}
