//go:build linux

// Command benchnet measures ember's network slots against a baseline that
// builds the same slot with `ip` and `iptables` commands, and prints one
// `BENCH <name> <value> <unit>` line per figure:
//
//   - slot setup + teardown, ember vs the shell baseline, and their ratio
//     (slot_speedup_vs_shell, target ≥ 25);
//   - pool Get latency from a filled pool, p50 and p99 (target p99 < 1 ms);
//   - per-slot setup time of the last 100 vs the first 100 of 500 slots
//     (slot_growth_last_vs_first, target ≤ 1.5).
//
// Everything runs against fake hosts: network namespaces the benchmark
// creates and deletes, each with a veth standing in for the uplink, so the real host's routes
// and firewall are never touched. It needs root and iptables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/runner"
	"github.com/vishvananda/netlink"
)

// uplink is the uplink of every fake host (one end of a veth pair).
const uplink = "embench-up"

func main() {
	n := flag.Int("n", 30, "setup+teardown cycles for ember and for the shell baseline")
	gets := flag.Int("gets", 1000, "pool Gets to time")
	growth := flag.Int("growth", 500, "slots held at once for the growth figure (first and last 100 compared)")
	first := flag.Int("first", 6000, "first slot index (the benchmark uses first..first+growth+200)")
	verbose := flag.Bool("v", false, "log the pools' debug lines")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(ctx, log, *n, *gets, *growth, *first); err != nil {
		fmt.Fprintln(os.Stderr, "benchnet:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, n, gets, growth, first int) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, nftables)")
	}
	shellHost, err := fakeHost(ctx, "embench-host-shell")
	defer func() { err = errors.Join(err, deleteFakeHost("embench-host-shell")) }()
	if err != nil {
		return err
	}
	emberHost, err := fakeHost(ctx, "embench-host-ember")
	defer func() { err = errors.Join(err, deleteFakeHost("embench-host-ember")) }()
	if err != nil {
		return err
	}
	cfg := network.Config{HostNetns: emberHost, Uplink: uplink, FirstIndex: first}
	shell, ember, err := benchSlots(ctx, shellHost, cfg, log, n)
	if err != nil {
		return err
	}
	report("slot_setup_teardown_shell", ms(shell.full), "ms")
	report("slot_setup_teardown_ember", ms(ember.full), "ms")
	report("slot_setup_ember", ms(ember.setup), "ms")
	report("slot_teardown_ember", ms(ember.teardown), "ms")
	report("slot_teardown_ember_background", ms(ember.background), "ms")
	report("slot_speedup_vs_shell", float64(shell.full)/float64(ember.full), "ratio")

	cfg.FirstIndex = first + 100
	cfg.PoolSize = 16
	p50, p99, err := benchGet(ctx, cfg, log, gets)
	if err != nil {
		return err
	}
	report("pool_get_p50", ms(p50), "ms")
	report("pool_get_p99", ms(p99), "ms")

	cfg.FirstIndex = first + 200
	cfg.PoolSize = 0
	firstMed, lastMed, err := benchGrowth(ctx, cfg, log, growth)
	if err != nil {
		return err
	}
	report("slot_setup_first_100", ms(firstMed), "ms")
	report("slot_setup_last_100", ms(lastMed), "ms")
	report("slot_growth_last_vs_first", float64(lastMed)/float64(firstMed), "ratio")
	return nil
}

func report(name string, v float64, unit string) { fmt.Printf("BENCH %s %.3f %s\n", name, v, unit) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// fakeHost creates a namespace standing in for the host: lo up and a veth
// uplink. It returns the namespace's path.
func fakeHost(ctx context.Context, name string) (string, error) {
	if _, err := runner.Run(ctx, "ip", "netns", "add", name); err != nil {
		return "", err
	}
	path := "/run/netns/" + name
	return path, netns.Do(path, func() error {
		for _, c := range [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"ip", "link", "add", uplink, "type", "veth", "peer", "name", uplink + "p"},
			{"ip", "link", "set", uplink, "up"},
		} {
			if _, err := runner.Run(ctx, c[0], c[1:]...); err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteFakeHost deletes a fake host namespace (its links and tables go
// with it); one that does not exist is fine.
func deleteFakeHost(name string) error {
	if _, err := os.Stat("/run/netns/" + name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	_, err := runner.Run(context.Background(), "ip", "netns", "del", name)
	return err
}

// cycles are per-cycle medians.
type cycles struct{ setup, teardown, background, full time.Duration }

// benchSlots times n setup+teardown cycles of the shell baseline and of
// ember, alternating, so both see the same load on a shared machine. For
// ember it times Get and Return of a pool without pre-built slots and the
// background half of the teardown (until the host veth is gone), so full
// is everything the kernel does for a slot.
func benchSlots(ctx context.Context, shellHost string, cfg network.Config, log *slog.Logger, n int) (shell, ember cycles, err error) {
	p, err := network.NewPool(cfg, log)
	if err != nil {
		return shell, ember, err
	}
	defer func() { err = errors.Join(err, p.Close()) }()
	var shellFull, setup, teardown, background, full []time.Duration
	for i := range n {
		s := newShellSlot(shellHost, uplink, i)
		start := time.Now()
		if err := s.setup(ctx); err != nil {
			return shell, ember, errors.Join(err, s.teardown(context.WithoutCancel(ctx)))
		}
		if err := s.teardown(context.WithoutCancel(ctx)); err != nil {
			return shell, ember, err
		}
		shellFull = append(shellFull, time.Since(start))

		t0 := time.Now()
		slot, err := p.Get(ctx)
		if err != nil {
			return shell, ember, err
		}
		t1 := time.Now()
		if err := p.Return(context.WithoutCancel(ctx), slot); err != nil {
			return shell, ember, err
		}
		t2 := time.Now()
		if err := waitLinkGone(cfg.HostNetns, slot.HostVeth); err != nil {
			return shell, ember, err
		}
		t3 := time.Now()
		setup, teardown, background, full = append(setup, t1.Sub(t0)), append(teardown, t2.Sub(t1)),
			append(background, t3.Sub(t2)), append(full, t3.Sub(t0))
	}
	return cycles{full: median(shellFull)}, cycles{median(setup), median(teardown), median(background), median(full)}, nil
}

// waitLinkGone polls the host namespace until the link is gone.
func waitLinkGone(host, name string) error {
	deadline := time.Now().Add(5 * time.Second)
	return netns.Do(host, func() error {
		for {
			_, err := netlink.LinkByName(name)
			if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("link %s still there after 5s", name)
			}
			time.Sleep(200 * time.Microsecond)
		}
	})
}

// benchGet times Get from a filled pool, in rounds of eight Gets followed
// by eight Returns (which reset the slots for reuse).
func benchGet(ctx context.Context, cfg network.Config, log *slog.Logger, gets int) (p50, p99 time.Duration, err error) {
	p, err := network.NewPool(cfg, log)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, p.Close()) }()
	deadline := time.Now().Add(30 * time.Second)
	for p.Idle() < cfg.PoolSize {
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("pool holds %d idle slots after 30s, want %d", p.Idle(), cfg.PoolSize)
		}
		time.Sleep(10 * time.Millisecond)
	}
	const round = 8
	var lat []time.Duration
	for len(lat) < gets {
		var held []*network.Slot
		for range round {
			start := time.Now()
			s, err := p.Get(ctx)
			lat = append(lat, time.Since(start))
			if err != nil {
				return 0, 0, errors.Join(err, returnAll(p, held))
			}
			held = append(held, s)
		}
		if err := returnAll(p, held); err != nil {
			return 0, 0, err
		}
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

func returnAll(p *network.Pool, slots []*network.Slot) error {
	var errs []error
	for _, s := range slots {
		errs = append(errs, p.Return(context.Background(), s))
	}
	return errors.Join(errs...)
}

// benchGrowth gets n slots one after the other, holding them all, and
// returns the median setup time of the first and of the last 100.
func benchGrowth(ctx context.Context, cfg network.Config, log *slog.Logger, n int) (first, last time.Duration, err error) {
	if n < 200 {
		return 0, 0, fmt.Errorf("growth needs at least 200 slots, got %d", n)
	}
	p, err := network.NewPool(cfg, log)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, p.Close()) }()
	var held []*network.Slot
	defer func() { err = errors.Join(err, returnAll(p, held)) }()
	var took []time.Duration
	for range n {
		start := time.Now()
		s, err := p.Get(ctx)
		if err != nil {
			return 0, 0, err
		}
		took = append(took, time.Since(start))
		held = append(held, s)
	}
	return median(took[:100]), median(took[n-100:]), nil
}
