// Command benchsnapshot measures pause, resume and create-from-snapshot on a
// real daemon (bin/ember, QEMU guests) against a cold boot measured in the
// same run, and prints one `BENCH <name> <value> <unit>` line per figure.
// Every time is from the request to the first command answered in the guest,
// so a restore that returns before the guest can work gains nothing.
//
// The daemon restores every template create from a snapshot of the template
// captured at the first cold boot of each machine shape; a cold boot is that
// first create of a shape, minus the capture it records.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

func main() {
	bin := flag.String("ember", "bin/ember", "the ember binary")
	templates := flag.String("templates", "/var/cache/ember/test-templates", "template registry holding the default template")
	n := flag.Int("n", 3, "rounds per figure (the median is reported)")
	flag.Parse()
	if err := run(*bin, *templates, *n); err != nil {
		fmt.Fprintln(os.Stderr, "benchsnapshot:", err)
		os.Exit(1)
	}
}

// slotFirst is this benchmark's slot range (the create bench uses 4000+).
const slotFirst = 4600

func run(bin, templates string, n int) (err error) {
	ctx := context.Background()
	d, stop, err := harness.ForBench(ctx, "benchsnapshot", harness.Options{Bin: bin, Templates: templates, SlotFirst: slotFirst})
	if err != nil {
		return err
	}
	defer func() { stop(err) }()
	c := d.Client

	for _, mib := range []int{128, 512, 1024} {
		var cold, pause, resume []time.Duration
		var size []float64
		for i := range n {
			d, err := coldBoot(ctx, c, mib+2*i)
			if err != nil {
				return err
			}
			cold = append(cold, d)
		}
		for range n {
			sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{MemoryMiB: mib})
			if err != nil {
				return fmt.Errorf("create %d MiB: %w", mib, err)
			}
			// Dirty some memory so the saved state is not just the kernel.
			if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "sh", Args: []string{"-c", "head -c 8388608 /dev/urandom > /dev/shm/dirty"}}); err != nil {
				return err
			}
			start := time.Now()
			p, err := c.PauseSandbox(ctx, sb.ID)
			if err != nil {
				return fmt.Errorf("pause %d MiB: %w", mib, err)
			}
			pause = append(pause, time.Since(start))
			size = append(size, float64(p.MemoryBytes)/(1<<20))
			start = time.Now()
			if _, err := c.ResumeSandbox(ctx, sb.ID); err != nil {
				return fmt.Errorf("resume %d MiB: %w", mib, err)
			}
			if err := firstExec(ctx, c, sb.ID); err != nil {
				return err
			}
			resume = append(resume, time.Since(start))
			if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
				return err
			}
		}
		fmt.Printf("BENCH cold_boot_%d %.1f ms\n", mib, msOf(median(cold)))
		fmt.Printf("BENCH pause_%d %.1f ms\n", mib, msOf(median(pause)))
		fmt.Printf("BENCH pause_state_size_%d %.1f MiB\n", mib, medianF(size))
		fmt.Printf("BENCH resume_%d %.1f ms\n", mib, msOf(median(resume)))
		fmt.Printf("BENCH resume_vs_cold_boot_%d %.3f ratio\n", mib, float64(median(resume))/float64(median(cold)))
	}

	// Default-shape creates: cold boots of neighbouring shapes against
	// restores of the default shape's template snapshot (the first cold
	// boot, at i = 0, captured it).
	var cold, fromSnap []time.Duration
	for i := range n {
		d, err := coldBoot(ctx, c, 256+2*i)
		if err != nil {
			return err
		}
		cold = append(cold, d)
	}
	for range n {
		start := time.Now()
		sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{})
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		if err := firstExec(ctx, c, sb.ID); err != nil {
			return err
		}
		fromSnap = append(fromSnap, time.Since(start))
		if _, ok := sb.TimingsMS["restore"]; !ok {
			return fmt.Errorf("create of the default shape did not restore the template snapshot: %v", sb.TimingsMS)
		}
		if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			return err
		}
	}
	fmt.Printf("BENCH create_cold_boot %.1f ms\n", msOf(median(cold)))
	fmt.Printf("BENCH create_from_snapshot %.1f ms\n", msOf(median(fromSnap)))
	fmt.Printf("BENCH create_from_snapshot_vs_cold_boot %.3f ratio\n", float64(median(fromSnap))/float64(median(cold)))
	return nil
}

// coldBoot creates a sandbox of a shape not created before (so it boots
// cold), waits for its first command and destroys it. The capture of the
// template snapshot that the daemon does on the way is not counted.
func coldBoot(ctx context.Context, c *client.Client, mib int) (time.Duration, error) {
	start := time.Now()
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{MemoryMiB: mib})
	if err != nil {
		return 0, fmt.Errorf("cold boot %d MiB: %w", mib, err)
	}
	if err := firstExec(ctx, c, sb.ID); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if _, ok := sb.TimingsMS["boot"]; !ok {
		return 0, fmt.Errorf("create of %d MiB did not boot cold: %v", mib, sb.TimingsMS)
	}
	d -= time.Duration(sb.TimingsMS["template_snapshot"] * float64(time.Millisecond))
	return d, c.DeleteSandbox(ctx, sb.ID)
}

func firstExec(ctx context.Context, c *client.Client, id string) error {
	res, err := c.Exec(ctx, id, client.ExecRequest{Cmd: "true"})
	if err != nil {
		return fmt.Errorf("first exec in %s: %w", id, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("first exec in %s: exit %d", id, res.ExitCode)
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianF(fs []float64) float64 {
	s := append([]float64(nil), fs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
