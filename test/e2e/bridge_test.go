package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

// The bridge network mode with real guests: each gets an address on one
// shared bridge, and a paused sandbox keeps its address, so it resumes
// unchanged even when another sandbox was created meanwhile.
func TestBridgeModePauseKeepsTheAddress(t *testing.T) {
	const bridge, subnet = "embe2ebr0", "172.31.77.0/29"
	t.Cleanup(func() {
		// The daemon leaves its bridge and the bridge table for the next
		// start; this test's are its own to remove.
		exec.Command("ip", "link", "del", bridge).Run()
		exec.Command("nft", "delete", "table", "bridge", "ember").Run()
	})
	d := startWith(t, harness.Options{SlotFirst: 3980,
		Args: []string{"--network-mode", "bridge", "--bridge", bridge, "--bridge-cidr", subnet}})
	ctx := context.Background()
	addr := func(id string) string {
		t.Helper()
		res, err := d.Client.Exec(ctx, id, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "ip -4 -o addr show eth0"}})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("ip addr in %s: %+v %v", id, res, err)
		}
		f := strings.Fields(string(res.Stdout))
		if len(f) < 4 {
			t.Fatalf("ip addr output %q", res.Stdout)
		}
		return f[3]
	}
	a, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	aAddr := addr(a.ID)
	if !strings.HasPrefix(aAddr, "172.31.77.") {
		t.Fatalf("guest address %s, want one on %s", aAddr, subnet)
	}
	if _, err := d.Client.Exec(ctx, a.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo kept > /home/user/mark"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Client.PauseSandbox(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	b, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if bAddr := addr(b.ID); bAddr == aAddr {
		t.Fatalf("a new sandbox got the paused one's address %s", aAddr)
	}
	if _, err := d.Client.ResumeSandbox(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := addr(a.ID); got != aAddr {
		t.Fatalf("resumed with address %s, want %s", got, aAddr)
	}
	res, err := d.Client.Exec(ctx, a.ID, client.ExecRequest{Cmd: "cat", Args: []string{"/home/user/mark"}})
	if err != nil || string(res.Stdout) != "kept\n" {
		t.Fatalf("file after resume: %+v %v", res, err)
	}
	// Snapshots and forks would restore a guest at an address that is not
	// its own: refused.
	if _, err := d.Client.ForkSandbox(ctx, a.ID, 1); !client.IsCode(err, "not_supported") {
		t.Fatalf("fork in bridge mode: %v", err)
	}
}
