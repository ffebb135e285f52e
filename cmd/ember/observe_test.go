package main

import (
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
)

func TestEventLine(t *testing.T) {
	at := time.Date(2030, 1, 1, 12, 0, 0, 0, time.Local)
	cases := []struct {
		name string
		e    client.Event
		want []string
	}{
		{"created", client.Event{Time: at, Type: "created", Sandbox: "abc", Template: "base", Op: "create", State: "running", DurationMS: 1234.4},
			[]string{"12:00:00.000", "created", "abc", "base", "op=create", "state=running", "1234 ms"}},
		{"failed", client.Event{Time: at, Type: "failed", Sandbox: "abc", Op: "run", State: "error", Error: "vmm exited"},
			[]string{"failed", "op=run", "state=error", `error="vmm exited"`}},
		{"snapshot", client.Event{Time: at, Type: "snapshot", Sandbox: "abc", Snapshot: "s1"}, []string{"snapshot=s1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := eventLine(tc.e)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
		})
	}
}

func TestPrintStats(t *testing.T) {
	rows := []statsRow{
		{id: "busy", sample: &client.Sample{
			Guest: &client.GuestUsage{CPUUsedPct: 97.25, MemUsed: 64 << 20, MemTotal: 256 << 20, DiskUsed: 1 << 20, DiskTotal: 1 << 30},
			Host:  &client.HostUsage{CPUUsedPct: 101, MemBytes: 300 << 20, DiskBytes: 8 << 20},
		}},
		{id: "new"},
	}
	var b strings.Builder
	if err := printStats(&b, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("table:\n%s", b.String())
	}
	for _, w := range []string{"busy", "97.2%", "64.0 MiB / 256.0 MiB", "25.0%", "1.0 MiB / 1.0 GiB", "101.0%", "300.0 MiB", "8.0 MiB"} {
		if !strings.Contains(lines[1], w) {
			t.Errorf("row %q lacks %q", lines[1], w)
		}
	}
	if !strings.HasPrefix(lines[2], "new") || strings.Count(lines[2], "--") != 7 {
		t.Errorf("a sandbox with no sample yet: %q", lines[2])
	}
}
