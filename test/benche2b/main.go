// Command benche2b measures what E2B's SDK costs over ember's own: the
// time from create to the first command's end, through the pinned e2b
// npm package (test/e2b/bench.mjs) and through the Go SDK, the two
// alternating against one daemon, and prints `BENCH <name> <value> <unit>`
// lines: each side's p50 and p95, and the E2B side's as a ratio of the
// native one (e2b_create_to_first_run_vs_native, target ≤ 1.2).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

// template is the bench's E2B template: the default one with bash, which
// both sides create from.
const template = "e2b"

func main() {
	bin := flag.String("ember", "bin/ember", "the ember binary")
	e2bDir := flag.String("e2b", "test/e2b", "directory of bench.mjs and the pinned e2b package")
	n := flag.Int("n", 10, "sandboxes per side")
	flag.Parse()
	if err := run(*bin, *e2bDir, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench-e2b:", err)
		os.Exit(1)
	}
}

func run(bin, e2bDir string, n int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ember-bench-e2b-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return err
	}
	// A registry of its own: the daemon builds its default template there.
	registry := filepath.Join(dir, "templates")
	d, err := harness.Start(ctx, harness.Options{Bin: bin, Templates: registry, DataDir: filepath.Join(dir, "data"),
		SlotFirst: 5350, SlotCount: 50, Log: logf, Args: []string{"--e2b-templates", "base=" + template}})
	if err != nil {
		return err
	}
	defer func() {
		d.DestroyAll(ctx)
		d.Stop()
		if leaks := d.Leaks(50); len(leaks) > 0 {
			fmt.Fprintln(os.Stderr, "bench-e2b: leaked:", leaks)
		}
	}()
	if err := harness.E2BTemplate(registry, template); err != nil {
		return err
	}

	node := exec.Command("node", "bench.mjs")
	node.Dir = e2bDir
	node.Env = append(os.Environ(), "E2B_API_URL="+d.URL, "E2B_SANDBOX_URL="+d.URL, "E2B_API_KEY="+d.APIKey)
	node.Stderr = os.Stderr
	in, err := node.StdinPipe()
	if err != nil {
		return err
	}
	outPipe, err := node.StdoutPipe()
	if err != nil {
		return err
	}
	if err := node.Start(); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	defer func() { in.Close(); node.Wait() }()
	out := bufio.NewScanner(outPipe)
	e2bOnce := func() (time.Duration, error) {
		if _, err := io.WriteString(in, "go\n"); err != nil {
			return 0, err
		}
		if !out.Scan() {
			return 0, fmt.Errorf("bench.mjs ended: %v", out.Err())
		}
		ms, err := strconv.ParseFloat(strings.TrimSpace(out.Text()), 64)
		if err != nil {
			return 0, fmt.Errorf("bench.mjs said %q", out.Text())
		}
		return time.Duration(ms * float64(time.Millisecond)), nil
	}
	nativeOnce := func() (time.Duration, error) {
		start := time.Now()
		sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{Template: template})
		if err != nil {
			return 0, err
		}
		// What the E2B SDK runs for commands.run('true').
		if _, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/bash", Args: []string{"-l", "-c", "true"}}); err != nil {
			return 0, err
		}
		took := time.Since(start)
		return took, d.Client.DeleteSandbox(ctx, sb.ID)
	}

	// One of each first, unmeasured: the first create captures the
	// template's memory snapshot, which every later one restores.
	if _, err := nativeOnce(); err != nil {
		return err
	}
	if _, err := e2bOnce(); err != nil {
		return err
	}
	// Alternate which side goes first, so neither always follows the
	// other's teardown.
	times := map[string][]time.Duration{}
	sides := []struct {
		name string
		once func() (time.Duration, error)
	}{{"native", nativeOnce}, {"e2b", e2bOnce}}
	for i := range n {
		for j := range sides {
			side := sides[(i+j)%2]
			d, err := side.once()
			if err != nil {
				return fmt.Errorf("%s create → first run: %w", side.name, err)
			}
			times[side.name] = append(times[side.name], d)
		}
	}
	e2bTimes, native := times["e2b"], times["native"]
	ep50, ep95, np50, np95 := pct(e2bTimes, 50), pct(e2bTimes, 95), pct(native, 50), pct(native, 95)
	fmt.Printf("BENCH e2b_create_to_first_run_p50 %.1f ms\n", ep50)
	fmt.Printf("BENCH e2b_create_to_first_run_p95 %.1f ms\n", ep95)
	fmt.Printf("BENCH native_create_to_first_run_p50 %.1f ms\n", np50)
	fmt.Printf("BENCH native_create_to_first_run_p95 %.1f ms\n", np95)
	fmt.Printf("BENCH e2b_create_to_first_run_vs_native %.2f x (p50; target <= 1.2)\n", ep50/np50)
	fmt.Printf("BENCH e2b_create_to_first_run_vs_native_p95 %.2f x\n", ep95/np95)
	return nil
}

// pct returns the p-th percentile of ds in milliseconds (nearest rank).
func pct(ds []time.Duration, p int) float64 {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s)+99)/100 - 1
	return float64(s[max(i, 0)].Microseconds()) / 1000
}
