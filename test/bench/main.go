// Command bench measures a real daemon (bin/ember, QEMU guests) and prints
// one `BENCH <name> <value> <unit>` line per figure: create→first-exec
// latency over sequential and concurrent creates, destroy latency, and the
// phase breakdown of a create (disk, network, boot, agent ready); then,
// each against a baseline measured in the same run, a create from the
// template's snapshot against a cold boot, creates eight at a time against
// one at a time, and a create that claims a warm sandbox against one exec
// round trip in a running sandbox.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

func main() {
	bin := flag.String("ember", "bin/ember", "the ember binary")
	templates := flag.String("templates", "/var/cache/ember/test-templates", "template registry holding the default template")
	n := flag.Int("n", 10, "sequential sandboxes")
	conc := flag.Int("concurrent", 4, "concurrent sandboxes")
	slotFirst := flag.Int("slot-first", 4000, "first network slot of the daemon")
	flag.Parse()
	if err := run(*bin, *templates, *n, *conc, *slotFirst); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type sample struct {
	firstExec time.Duration
	// exec is the first exec alone: in a guest just restored, whose code
	// paths under TCG are all translated afresh.
	exec   time.Duration
	phases map[string]float64
}

func run(bin, templates string, n, conc, slotFirst int) (err error) {
	ctx := context.Background()
	d, stop, err := harness.ForBench(ctx, "bench", harness.Options{Bin: bin, Templates: templates, SlotFirst: slotFirst})
	if err != nil {
		return err
	}
	defer func() { stop(err) }()

	one := func() (sample, time.Duration, error) {
		start := time.Now()
		sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
		if err != nil {
			return sample{}, 0, err
		}
		execStart := time.Now()
		if _, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil {
			return sample{}, 0, err
		}
		s := sample{firstExec: time.Since(start), exec: time.Since(execStart), phases: sb.TimingsMS}
		t := time.Now()
		if err := d.Client.DeleteSandbox(ctx, sb.ID); err != nil {
			return sample{}, 0, err
		}
		return s, time.Since(t), nil
	}

	var seq []sample
	var destroys []time.Duration
	for i := 0; i < n; i++ {
		s, dt, err := one()
		if err != nil {
			return fmt.Errorf("sequential create %d: %w", i, err)
		}
		seq = append(seq, s)
		destroys = append(destroys, dt)
	}
	var concurrent []sample
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _, err := one()
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			concurrent = append(concurrent, s)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return fmt.Errorf("concurrent create: %w", err)
	}

	firsts := func(ss []sample) []time.Duration {
		var out []time.Duration
		for _, s := range ss {
			out = append(out, s.firstExec)
		}
		return out
	}
	fmt.Printf("BENCH create_to_first_exec_p50 %.1f ms\n", pct(firsts(seq), 50))
	fmt.Printf("BENCH create_to_first_exec_p95 %.1f ms\n", pct(firsts(seq), 95))
	fmt.Printf("BENCH create_to_first_exec_concurrent%d_p50 %.1f ms\n", conc, pct(firsts(concurrent), 50))
	fmt.Printf("BENCH destroy_p50 %.1f ms\n", pct(destroys, 50))
	var execs []time.Duration
	for _, s := range seq {
		execs = append(execs, s.exec)
	}
	fmt.Printf("BENCH first_exec_after_restore_p50 %.1f ms\n", pct(execs, 50))
	// Phases as the daemon reports them: a cold boot has "boot", a create
	// from the template's memory snapshot "restore" instead.
	phases := map[string][]time.Duration{}
	for _, s := range seq {
		for name, v := range s.phases {
			phases[name] = append(phases[name], time.Duration(v*float64(time.Millisecond)))
		}
	}
	names := make([]string, 0, len(phases))
	for name := range phases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Printf("BENCH create_phase_%s_p50 %.1f ms\n", name, pct(phases[name], 50))
	}
	return ratios(ctx, d.Client, n, pct(firsts(seq), 50))
}

// pct returns the p-th percentile (nearest rank) in milliseconds.
func pct(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (p*len(s) + 99) / 100
	if i < 1 {
		i = 1
	}
	return float64(s[i-1].Microseconds()) / 1000
}
