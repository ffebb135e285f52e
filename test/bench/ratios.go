package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/emberhq/ember/client"
)

// ratios prints the figures measured against a baseline of the same run:
// a create from the template's snapshot (fromSnapshot, its create→first
// exec p50 in ms) against cold boots; eight creates in flight against
// eight one at a time; a create claiming a warm sandbox against one exec
// round trip in a running sandbox.
func ratios(ctx context.Context, c *client.Client, n int, fromSnapshot float64) error {
	// Cold boots: creates of shapes not created before, less the capture
	// of the shape's template snapshot they do on the way.
	var cold []time.Duration
	for i := range 3 {
		start := time.Now()
		sb, err := createAndExec(ctx, c, client.CreateSandboxRequest{MemoryMiB: 258 + 2*i})
		if err != nil {
			return fmt.Errorf("cold boot: %w", err)
		}
		if _, ok := sb.TimingsMS["boot"]; !ok {
			return fmt.Errorf("create of a new shape did not boot cold: %v", sb.TimingsMS)
		}
		cold = append(cold, time.Since(start)-time.Duration(sb.TimingsMS["template_snapshot"]*float64(time.Millisecond)))
		if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			return err
		}
	}
	fmt.Printf("BENCH create_cold_boot_p50 %.1f ms\n", pct(cold, 50))
	fmt.Printf("BENCH create_from_snapshot_vs_cold_boot %.3f ratio\n", fromSnapshot/pct(cold, 50))

	// Throughput: eight creates (to their first exec) one at a time,
	// then eight at once.
	const batch = 8
	var ids []string
	start := time.Now()
	for range batch {
		sb, err := createAndExec(ctx, c, client.CreateSandboxRequest{})
		if err != nil {
			return fmt.Errorf("sequential create: %w", err)
		}
		ids = append(ids, sb.ID)
	}
	seq := time.Since(start)
	if err := deleteAll(ctx, c, ids); err != nil {
		return err
	}
	start = time.Now()
	ids, err := createBatch(ctx, c, batch)
	conc := time.Since(start)
	if err != nil {
		return err
	}
	if err := deleteAll(ctx, c, ids); err != nil {
		return err
	}
	fmt.Printf("BENCH create_sequential8_per_second %.2f creates/s\n", batch/seq.Seconds())
	fmt.Printf("BENCH create_concurrent8_per_second %.2f creates/s\n", batch/conc.Seconds())
	fmt.Printf("BENCH create_concurrent8_throughput_vs_sequential %.2f ratio\n", seq.Seconds()/conc.Seconds())

	// The baseline: exec round trips in a running sandbox.
	sb, err := createAndExec(ctx, c, client.CreateSandboxRequest{})
	if err != nil {
		return err
	}
	var rtt []time.Duration
	for range 20 {
		start := time.Now()
		if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil {
			return err
		}
		rtt = append(rtt, time.Since(start))
	}
	if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
		return err
	}
	fmt.Printf("BENCH exec_rtt_p50 %.1f ms\n", pct(rtt, 50))

	// Warm creates: each claims a sandbox of a pool of two, which refills
	// between them.
	if _, err := c.SetWarmPool(ctx, "base", 2); err != nil {
		return err
	}
	defer c.SetWarmPool(context.WithoutCancel(ctx), "base", 0)
	var warm, warmCreate, warmInit []time.Duration
	for range n {
		if err := waitWarm(ctx, c, 2); err != nil {
			return err
		}
		start := time.Now()
		sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{})
		if err != nil {
			return fmt.Errorf("warm create: %w", err)
		}
		warmCreate = append(warmCreate, time.Since(start))
		warmInit = append(warmInit, time.Duration(sb.TimingsMS["init"]*float64(time.Millisecond)))
		if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil {
			return fmt.Errorf("first exec in a warm sandbox: %w", err)
		}
		warm = append(warm, time.Since(start))
		if _, ok := sb.TimingsMS["claim"]; !ok {
			return fmt.Errorf("create did not claim a warm sandbox: %v", sb.TimingsMS)
		}
		if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			return err
		}
	}
	// Where a warm create's time goes: the create (of it the agent's
	// init), then the first exec.
	fmt.Printf("BENCH warm_create_p50 %.1f ms\n", pct(warmCreate, 50))
	fmt.Printf("BENCH warm_create_phase_init_p50 %.1f ms\n", pct(warmInit, 50))
	fmt.Printf("BENCH warm_create_to_first_exec_p50_ms %.1f ms\n", pct(warm, 50))
	fmt.Printf("BENCH warm_create_vs_exec_rtt %.2f ratio\n", pct(warm, 50)/pct(rtt, 50))
	return nil
}

// createAndExec creates a sandbox and runs its first command.
func createAndExec(ctx context.Context, c *client.Client, req client.CreateSandboxRequest) (client.Sandbox, error) {
	sb, err := c.CreateSandbox(ctx, req)
	if err != nil {
		return sb, err
	}
	_, err = c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"})
	return sb, err
}

// createBatch creates n sandboxes at once, each to its first command.
func createBatch(ctx context.Context, c *client.Client, n int) ([]string, error) {
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sb, err := createAndExec(ctx, c, client.CreateSandboxRequest{})
			ids[i], errs[i] = sb.ID, err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return ids, fmt.Errorf("concurrent create: %w", err)
		}
	}
	return ids, nil
}

func deleteAll(ctx context.Context, c *client.Client, ids []string) error {
	for _, id := range ids {
		if id == "" {
			continue
		}
		if err := c.DeleteSandbox(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// waitWarm waits until the base pool has ready sandboxes.
func waitWarm(ctx context.Context, c *client.Client, ready int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pools, err := c.WarmPools(ctx)
		if err != nil {
			return err
		}
		for _, p := range pools {
			if p.Template == "base" && p.Ready >= ready {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warm pool not ready: %+v", pools)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
