package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/client"
)

func TestLargerDiskIsSeenByTheGuest(t *testing.T) {
	d := start(t, 3900)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{DiskMiB: 3072})
	if err != nil {
		t.Fatal(err)
	}
	if sb.DiskMiB != 3072 {
		t.Fatalf("disk_mib %d", sb.DiskMiB)
	}
	res, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "df", Args: []string{"-k", "/"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("df: %+v %v", res, err)
	}
	lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
	fields := strings.Fields(lines[len(lines)-1])
	if len(fields) < 2 {
		t.Fatalf("df output %q", res.Stdout)
	}
	blocks, err := strconv.Atoi(fields[1])
	if err != nil {
		t.Fatalf("df output %q: %v", res.Stdout, err)
	}
	// 3 GiB less ext4's own metadata; the template's image is 1 GiB.
	if blocks < 2_900_000 {
		t.Fatalf("guest root has %d KiB, want about 3 GiB:\n%s", blocks, res.Stdout)
	}
	if _, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{DiskMiB: 100}); !client.IsCode(err, "invalid_argument") {
		t.Fatalf("disk below the template's: %v", err)
	}
}
