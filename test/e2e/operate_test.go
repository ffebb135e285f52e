package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/rootfs/devmapper"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/test/harness"
)

// TestUpgradeKeepsEverySandbox does what an upgrade under systemd does:
// the binary is replaced and the daemon restarted (KillMode=process leaves
// the VMMs running). Every running and paused sandbox is still there, the
// running one with its processes, the paused one resumable.
func TestUpgradeKeepsEverySandbox(t *testing.T) {
	d := start(t, 6000)
	ctx := context.Background()
	running, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pid := startCounter(t, d, running.ID)
	paused, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	guestSh(t, d, paused.ID, "echo before-upgrade > /home/user/file")
	if _, err := d.Client.PauseSandbox(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}

	// The new binary, installed elsewhere, as make install puts it.
	newBin := filepath.Join(t.TempDir(), "ember")
	copyFile(t, d.Bin, newBin)
	d.Bin = newBin
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if procs := harness.Processes(filepath.Dir(newBin)); len(procs) != 1 {
		t.Fatalf("the daemon does not run from the new binary: %v", procs)
	}

	got, err := d.Client.GetSandbox(ctx, running.ID)
	if err != nil || got.State != "running" {
		t.Fatalf("running sandbox after the upgrade: %+v %v", got, err)
	}
	assertCounterContinues(t, d, running.ID, pid, 1)
	got, err = d.Client.GetSandbox(ctx, paused.ID)
	if err != nil || got.State != "paused" {
		t.Fatalf("paused sandbox after the upgrade: %+v %v", got, err)
	}
	if _, err := d.Client.ResumeSandbox(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}
	if got := guestSh(t, d, paused.ID, "cat /home/user/file"); got != "before-upgrade" {
		t.Fatalf("file in the resumed sandbox: %q", got)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// doctorReport is `ember doctor --json`.
type doctorReport struct {
	CanServe bool `json:"can_serve"`
	Checks   []struct {
		Name, Status, Finding, Fix string
	} `json:"checks"`
}

func (r doctorReport) get(t *testing.T, name string) (status, finding, fix string) {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c.Status, c.Finding, c.Fix
		}
	}
	t.Fatalf("no %s check in %+v", name, r)
	return "", "", ""
}

// TestDoctorOnThisHost runs `ember doctor` on the machine the tests run on
// and holds what it says about KVM and the disk backends to what this host
// has: on the development machines a PVM /dev/kvm that does not boot
// ember's kernel, no device-mapper and no reflink on /.
func TestDoctorOnThisHost(t *testing.T) {
	h := harness.Require(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	cmd := exec.Command(h.Bin, "doctor", "--json", "--data-dir", dataDir, "--template-dir", h.Templates,
		"--listen", "127.0.0.1:0", "--no-egress")
	out, err := cmd.Output()
	var rep doctorReport
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("ember doctor --json (%v): %v\n%s", err, jerr, out)
	}
	if (err == nil) != rep.CanServe {
		t.Errorf("exit %v, but can_serve %v", err, rep.CanServe)
	}
	for _, c := range rep.Checks {
		t.Logf("%-5s %-12s %s", c.Status, c.Name, c.Finding)
		if c.Status == "fail" {
			t.Errorf("%s fails on the test host: %s (fix: %s)", c.Name, c.Finding, c.Fix)
		}
	}
	status, finding, fix := rep.get(t, "kvm")
	if h := accel.ReadHost(""); h.Kind == accel.KindPVM {
		if !strings.Contains(finding, "PVM (kvm_pvm)") {
			t.Errorf("kvm on a PVM host: %s %q", status, finding)
		}
		if status == "warn" && !strings.Contains(fix, "PVM guest") {
			t.Errorf("kvm fix on a PVM host: %q", fix)
		}
	}
	_, finding, _ = rep.get(t, "disk")
	if devmapper.Available() != nil && !strings.Contains(finding, "passed over devmapper: ") {
		t.Errorf("disk does not say device-mapper is missing: %q", finding)
	}
	if fsOf(t, filepath.Dir(dataDir)) == "ext4" && !strings.Contains(finding, "cannot clone files") {
		t.Errorf("disk does not say %s cannot reflink: %q", filepath.Dir(dataDir), finding)
	}
}

// fsOf names the filesystem holding dir, from /proc/self/mounts.
func fsOf(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	best, fs := "", ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && strings.HasPrefix(dir+"/", strings.TrimSuffix(f[1], "/")+"/") && len(f[1]) >= len(best) {
			best, fs = f[1], f[2]
		}
	}
	return fs
}

// TestServeRefusesAFailingCheck: a daemon whose host check fails exits at
// start with the check and its fix, and starts nothing.
func TestServeRefusesAFailingCheck(t *testing.T) {
	h := harness.Require(t)
	// The API's port is taken.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const slotFirst = 6100
	cases := []struct {
		name  string
		args  []string
		check string
		fix   string
	}{
		{"port taken", []string{"--listen", ln.Addr().String(), "--no-egress"}, "port: listen on " + ln.Addr().String(), "fix: stop what listens there"},
		{"missing uplink", []string{"--listen", "127.0.0.1:0", "--uplink", "ember-nolink0"}, "uplink: --uplink ember-nolink0", "fix: name an interface"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, h.Bin, append([]string{"serve", "--data-dir", dataDir,
				"--template-dir", h.Templates, "--slot-first", strconv.Itoa(slotFirst), "--slot-count", "10"}, tc.args...)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			if ctx.Err() != nil || err == nil {
				t.Fatalf("ember serve did not refuse (%v):\n%s", err, out.String())
			}
			msg := out.String()
			if !strings.Contains(msg, "ember: this host cannot run ember: "+tc.check) || !strings.Contains(msg, tc.fix) {
				t.Errorf("the refusal does not name the check %q and its fix %q:\n%s", tc.check, tc.fix, msg)
			}
			d := &harness.Daemon{DataDir: dataDir, SlotFirst: slotFirst}
			if leaks := d.Leaks(10); len(leaks) > 0 {
				t.Errorf("a refused start left: %v", leaks)
			}
			entries, _ := os.ReadDir(dataDir)
			for _, e := range entries {
				if e.Name() != "ember.lock" {
					t.Errorf("a refused start made %s in the data directory", e.Name())
				}
			}
		})
	}
}
