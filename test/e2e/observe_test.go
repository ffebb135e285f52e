package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// scrape fetches a daemon's /metrics with its key.
func scrape(t *testing.T, d *harness.Daemon) (testutil.Metrics, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, d.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+d.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	return testutil.ParseMetrics(t, body), body
}

// series names one series of a scrape.
type series struct {
	name   string
	labels map[string]string
}

func (s series) String() string { return fmt.Sprintf("%s%v", s.name, s.labels) }

// value reads a series that must exist.
func value(t *testing.T, m testutil.Metrics, s series) float64 {
	t.Helper()
	v, ok := m.Value(s.name, s.labels)
	if !ok {
		t.Fatalf("no series %s", s)
	}
	return v
}

func op(name, outcome string) series {
	return series{"ember_lifecycle_duration_seconds", map[string]string{"op": name, "outcome": outcome}}
}

func phase(opName, p string) series {
	return series{"ember_lifecycle_phase_duration_seconds", map[string]string{"op": opName, "phase": p}}
}

func requests(route, code string) series {
	return series{"ember_api_requests_total", map[string]string{"route": route, "code": code}}
}

func sandboxes(state string) series {
	return series{"ember_sandboxes", map[string]string{"state": state, "template": "base"}}
}

// TestObservabilityAroundALifecycle takes one sandbox through create,
// pause, resume, snapshot and destroy, and checks what an operator sees:
// the metrics move by exactly those operations, promtool finds nothing in
// them, the event stream (through the SDK and `ember events`) delivers
// the sandbox's life in order, and every lifecycle log line is JSON with
// the same keys.
func TestObservabilityAroundALifecycle(t *testing.T) {
	metricsAddr := harness.FreeAddr(t)
	d := startWith(t, harness.Options{SlotFirst: 5800, Args: []string{"--log-format", "json", "--metrics-listen", metricsAddr}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := d.Client

	events, err := c.Events(ctx, client.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	// --since: whenever it has connected, it replays what came before.
	cli := exec.CommandContext(ctx, d.Bin, "events", "--json", "--since", "1m")
	cli.Env = d.Env()
	cli.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cliOut, err := cli.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cli.Process.Kill(); cli.Wait() }()
	cliLines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(cliOut)
		for sc.Scan() {
			cliLines <- sc.Text()
		}
		close(cliLines)
	}()
	before, _ := scrape(t, d)
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "base"})
	if err != nil {
		t.Fatal(err)
	}
	running, _ := scrape(t, d)
	if _, err := c.PauseSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	paused, _ := scrape(t, d)
	if _, err := c.ResumeSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, sb.ID, "obs-snap"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, "obs-snap"); err != nil {
		t.Fatal(err)
	}
	after, body := scrape(t, d)

	t.Run("metrics moved by exactly the operations", func(t *testing.T) {
		deltas := []struct {
			s    series
			want float64
		}{
			{op("create", "ok"), 1}, {op("pause", "ok"), 1}, {op("resume", "ok"), 1},
			{op("snapshot", "ok"), 1}, {op("destroy", "ok"), 1}, {op("restore", "ok"), 0}, {op("fork", "ok"), 0},
			{op("create", "error"), 0}, {op("pause", "error"), 0}, {op("resume", "error"), 0}, {op("destroy", "error"), 0},
			{phase("create", "disk"), 1}, {phase("create", "network"), 1}, {phase("create", "agent"), 1}, {phase("create", "init"), 1},
			{phase("pause", "save"), 1}, {phase("resume", "restore"), 1}, {phase("resume", "agent"), 1},
			{phase("snapshot", "disk"), 1}, {phase("destroy", "release"), 1},
			{requests("POST /v1/sandboxes", "2xx"), 1}, {requests("POST /v1/sandboxes/{id}/pause", "2xx"), 1},
			{requests("POST /v1/sandboxes/{id}/resume", "2xx"), 1}, {requests("DELETE /v1/sandboxes/{id}", "2xx"), 1},
			{requests("POST /v1/snapshots", "2xx"), 1}, {requests("DELETE /v1/snapshots/{name}", "2xx"), 1},
			// The scrapes before the last, each counted once it ended.
			{requests("GET /metrics", "2xx"), 3},
		}
		for _, dl := range deltas {
			v0, _ := before.Value(dl.s.name, dl.s.labels)
			if got := value(t, after, dl.s) - v0; got != dl.want {
				t.Errorf("%s moved by %v, want %v", dl.s, got, dl.want)
			}
		}
		// A cold boot, or a restore of the template's snapshot.
		boots := value(t, after, phase("create", "boot")) + value(t, after, phase("create", "restore"))
		if v0 := value(t, before, phase("create", "boot")) + value(t, before, phase("create", "restore")); boots-v0 != 1 {
			t.Errorf("create's boot and restore phases moved by %v together, want 1", boots-v0)
		}
		for _, g := range []struct {
			at    testutil.Metrics
			when  string
			state string
			want  float64
		}{
			{before, "before", "running", 0}, {running, "after create", "running", 1},
			{paused, "after pause", "running", 0}, {paused, "after pause", "paused", 1}, {after, "at the end", "running", 0},
		} {
			if got := value(t, g.at, sandboxes(g.state)); got != g.want {
				t.Errorf("%s: %v sandboxes %s, want %v", g.when, got, g.state, g.want)
			}
		}
		if v := value(t, paused, series{"ember_saved_memory_bytes", nil}); v <= 0 {
			t.Errorf("saved memory of the paused sandbox: %v bytes", v)
		}
		if v := value(t, running, series{"ember_network_slots", map[string]string{"state": "in_use"}}); v != 1 {
			t.Errorf("slots in use while running: %v", v)
		}
		for _, s := range []series{{"ember_disk_backend_info", nil}, {"ember_build_info", nil}, {"go_goroutines", nil}, {"process_cpu_seconds_total", nil}} {
			value(t, after, s)
		}
		for _, lv := range after.LabelValues() {
			if strings.Contains(lv, sb.ID) {
				t.Errorf("a label carries the sandbox id: %q", lv)
			}
		}
	})

	t.Run("promtool finds nothing", func(t *testing.T) {
		testutil.CheckMetrics(t, body)
	})

	t.Run("the metrics address needs no key, the API's does", func(t *testing.T) {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "ember_lifecycle_duration_seconds_count") {
			t.Fatalf("--metrics-listen: %d\n%s", resp.StatusCode, harness.Tail(string(b), 5))
		}
		resp, err = http.Get(d.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("the API's /metrics without a key: %d", resp.StatusCode)
		}
	})

	want := []string{"created", "paused", "resumed", "snapshot", "destroyed"}
	t.Run("the SDK follows the lifecycle in order", func(t *testing.T) {
		var got []string
		var seq uint64
		for len(got) < len(want) {
			e, err := events.Next()
			if err != nil {
				t.Fatalf("after %v: %v", got, err)
			}
			if e.Sandbox != sb.ID {
				continue
			}
			if e.Seq <= seq {
				t.Errorf("event %d after %d", e.Seq, seq)
			}
			seq = e.Seq
			got = append(got, e.Type)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("events %v, want %v", got, want)
		}
	})
	t.Run("ember events follows it too", func(t *testing.T) {
		var got []string
		for len(got) < len(want) {
			select {
			case line, ok := <-cliLines:
				if !ok {
					t.Fatalf("ember events ended after %v", got)
				}
				var e client.Event
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				if e.Sandbox == sb.ID {
					got = append(got, e.Type)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("ember events printed %v, then nothing for 30 s", got)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("ember events printed %v, want %v", got, want)
		}
	})

	t.Run("lifecycle log lines are JSON with the same keys", func(t *testing.T) {
		b, err := os.ReadFile(d.Log.Name())
		if err != nil {
			t.Fatal(err)
		}
		var ops []string
		for line := range strings.Lines(string(b)) {
			var rec map[string]any
			if !strings.HasPrefix(line, "{") {
				continue // the start-up banner, the template build's steps
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			if rec["sandbox"] != sb.ID || rec["op"] == nil {
				continue
			}
			for _, k := range []string{"sandbox", "template", "op", "duration_ms", "err"} {
				if _, ok := rec[k]; !ok {
					t.Errorf("line %q has no %s", line, k)
				}
			}
			ops = append(ops, rec["op"].(string))
		}
		if w := []string{"create", "pause", "resume", "snapshot", "destroy"}; !slices.Equal(ops, w) {
			t.Fatalf("lifecycle lines of the sandbox: %v, want %v", ops, w)
		}
	})
}

// TestUsageSamplesSeeTheGuestWork burns CPU in a guest and then holds 64
// MiB in it, and checks that the samples (through the SDK and `ember
// stats`) see both.
func TestUsageSamplesSeeTheGuestWork(t *testing.T) {
	d := startWith(t, harness.Options{SlotFirst: 5850, Args: []string{"--metrics-interval", "1s"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := d.Client
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "base"})
	if err != nil {
		t.Fatal(err)
	}

	// wait polls the samples taken from since on until one passes ok.
	wait := func(what string, since time.Time, ok func(client.Sample) bool) client.Sample {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			samples, err := c.SandboxMetrics(ctx, sb.ID, since, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range samples {
				if ok(s) {
					return s
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in %d samples over 60 s: %s", what, len(samples), describe(samples))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	guest := func(s client.Sample) bool { return s.Guest != nil && s.Host != nil }
	idle := wait("an idle guest", time.Time{}, func(s client.Sample) bool { return guest(s) && s.Guest.CPUUsedPct < 50 })
	t.Logf("idle: guest %+v, host %+v", *idle.Guest, *idle.Host)

	// background runs a command in the guest until the returned stop.
	background := func(script string) (stop func()) {
		bctx, bcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := c.ExecStream(bctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script}, TimeoutS: 120}, io.Discard, io.Discard)
			done <- err
		}()
		return func() {
			bcancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Logf("background %q: %v", script, err)
			}
		}
	}

	t.Run("CPU", func(t *testing.T) {
		start := time.Now()
		stop := background("while :; do :; done")
		// From the sample after the one the burn started in: a whole
		// interval of it.
		busy := wait("guest CPU above 50%", start.Add(time.Second), func(s client.Sample) bool {
			return guest(s) && s.Guest.CPUUsedPct > 50
		})
		stop()
		t.Logf("busy: guest %.1f%% of %d vCPU, host %.1f%% of a CPU (%.1f s used, from %s)",
			busy.Guest.CPUUsedPct, busy.Guest.CPUCount, busy.Host.CPUUsedPct, busy.Host.CPUSeconds, busy.Host.Source)
		if busy.Host.CPUSeconds <= idle.Host.CPUSeconds {
			t.Errorf("the VMM's CPU time did not grow: %v then %v", idle.Host.CPUSeconds, busy.Host.CPUSeconds)
		}
	})

	t.Run("memory", func(t *testing.T) {
		// Settle after the burn, then take the latest reading as the base.
		base := wait("a sample after the CPU burn", time.Now(), guest)
		const held = 64 << 20
		stop := background("dd if=/dev/zero bs=64M count=1 2>/dev/null | sleep 120")
		defer stop()
		up := wait("guest memory up by 64 MiB", time.Now(), func(s client.Sample) bool {
			return guest(s) && s.Guest.MemUsed-base.Guest.MemUsed >= held
		})
		t.Logf("memory used %d MiB, then %d MiB of %d MiB; host RSS %d MiB",
			base.Guest.MemUsed>>20, up.Guest.MemUsed>>20, up.Guest.MemTotal>>20, up.Host.MemBytes>>20)
		if up.Guest.MemTotal < held || up.Guest.DiskTotal <= 0 || up.Guest.DiskUsed <= 0 || up.Host.DiskBytes <= 0 {
			t.Errorf("totals: %+v %+v", *up.Guest, *up.Host)
		}
	})

	t.Run("ember stats", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, d.Bin, "stats", "--no-stream", sb.ID)
		cmd.Env = d.Env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ember stats: %v\n%s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID") || !strings.HasPrefix(lines[1], sb.ID) ||
			!strings.Contains(lines[1], "%") || strings.Contains(lines[1], "--") {
			t.Fatalf("ember stats:\n%s", out)
		}
		t.Logf("ember stats:\n%s", out)
	})
}

// describe summarises samples for a failure message.
func describe(samples []client.Sample) string {
	var b strings.Builder
	for _, s := range samples {
		if s.Guest != nil {
			fmt.Fprintf(&b, "[cpu %.0f%% mem %d MiB] ", s.Guest.CPUUsedPct, s.Guest.MemUsed>>20)
		} else {
			b.WriteString("[no guest] ")
		}
	}
	return b.String()
}
