// Command benchdensity measures how many idle sandboxes fit on this host:
// it starts n idle sandboxes of one template on a real daemon (bin/ember,
// QEMU guests), prints the host memory each costs from /proc/meminfo
// against the guest RAM it was given, the daemon's own memory per sandbox,
// and whether every one still answers an exec within a second; then it
// pauses them all and prints the disk each paused one occupies against its
// guest RAM. Every figure is one `BENCH <name> <value> <unit>` line, and
// the ones that split the cost up (the VMM's translation cache, its heap,
// the guest's own pages, the template pages all share) say what limits
// the total.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

func main() {
	bin := flag.String("ember", "bin/ember", "the ember binary")
	templates := flag.String("templates", "/var/cache/ember/test-templates", "template registry holding the default template")
	n := flag.Int("n", 100, "idle sandboxes")
	mib := flag.Int("memory", 128, "guest RAM of each, MiB")
	conc := flag.Int("concurrency", 4, "creates and pauses in flight")
	slotFirst := flag.Int("slot-first", 6400, "first network slot of the daemon")
	settle := flag.Duration("settle", 10*time.Second, "how long the sandboxes idle before they are measured")
	flag.Parse()
	if err := run(*bin, *templates, *n, *mib, *conc, *slotFirst, *settle); err != nil {
		fmt.Fprintln(os.Stderr, "benchdensity:", err)
		os.Exit(1)
	}
}

func run(bin, templates string, n, mib, conc, slotFirst int, settle time.Duration) (err error) {
	ctx := context.Background()
	// Admission counts each machine at its worst (all of its guest RAM
	// its own, on /dev/shm, and a VMM's overhead besides; vCPUs four per
	// host CPU): a daemon of its defaults takes 8 sandboxes on 2 cores.
	// Lifted here, to measure what the sandboxes really cost.
	machines := n + 10
	d, stop, err := harness.ForBench(ctx, "benchdensity", harness.Options{Bin: bin, Templates: templates, SlotFirst: slotFirst,
		SlotCount: machines, Args: []string{
			"--vcpu-overcommit", strconv.Itoa(machines/runtime.NumCPU() + 1),
			"--capacity-memory-mib", strconv.Itoa(machines * (mib + 256)),
			"--capacity-shm-mib", strconv.Itoa(machines * mib),
		}})
	if err != nil {
		return err
	}
	defer func() { stop(err) }()
	c := d.Client
	req := client.CreateSandboxRequest{MemoryMiB: mib, TimeoutS: 3600}

	// The first create of the shape captures the template's snapshot,
	// whose memory every sandbox after it maps.
	first, err := c.CreateSandbox(ctx, req)
	if err != nil {
		return err
	}
	if err := c.DeleteSandbox(ctx, first.ID); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	before, err := harness.Meminfo()
	if err != nil {
		return err
	}
	daemonBefore, err := harness.RSS(d.DaemonPID())
	if err != nil {
		return err
	}

	start := time.Now()
	sbs, err := each(n, conc, func(int) (client.Sandbox, error) { return c.CreateSandbox(ctx, req) })
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	fmt.Printf("BENCH density_create_%d %.1f s\n", n, time.Since(start).Seconds())
	cpu0, err := vmmCPU(d, sbs)
	if err != nil {
		return err
	}
	time.Sleep(settle)
	cpu1, err := vmmCPU(d, sbs)
	if err != nil {
		return err
	}
	idleCPU := 100 * (cpu1 - cpu0) / settle.Seconds()
	fmt.Printf("BENCH idle_vmm_cpu_percent_all %.1f %% of one cpu\n", idleCPU)
	fmt.Printf("BENCH idle_vmm_cpu_percent_per_sandbox %.2f %% of one cpu\n", idleCPU/float64(n))
	after, err := harness.Meminfo()
	if err != nil {
		return err
	}
	daemonAfter, err := harness.RSS(d.DaemonPID())
	if err != nil {
		return err
	}
	perSandbox := float64(before["MemAvailable"]-after["MemAvailable"]) / float64(n) / 1024
	fmt.Printf("BENCH idle_host_mib_per_sandbox %.1f MiB\n", perSandbox)
	fmt.Printf("BENCH idle_host_vs_guest_ram %.3f ratio\n", perSandbox/float64(mib))
	// The daemon's whole RSS shared out, an upper bound: its growth alone
	// is within what a collection returns (it came out negative).
	fmt.Printf("BENCH daemon_rss_kib_per_sandbox %.0f KiB\n", float64(daemonAfter)/float64(n))
	fmt.Printf("BENCH daemon_rss_growth_kib_per_sandbox %.0f KiB\n", float64(daemonAfter-daemonBefore)/float64(n))
	fmt.Printf("BENCH daemon_rss_with_%d_sandboxes %.1f MiB\n", n, float64(daemonAfter)/1024)
	fmt.Printf("BENCH idle_page_cache_growth %.1f MiB\n", float64(after["Cached"]-before["Cached"])/1024)
	if err := breakdown(d, sbs, mib); err != nil {
		return err
	}

	// Every idle sandbox still answers, in order, one exec each: twice,
	// since a guest's first exec runs code its QEMU has not translated
	// yet (under TCG), its later ones do not.
	for _, pass := range []string{"first", "second"} {
		var execs []time.Duration
		slow := 0
		for _, sb := range sbs {
			start := time.Now()
			if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil {
				return fmt.Errorf("exec in %s: %w", sb.ID, err)
			}
			d := time.Since(start)
			execs = append(execs, d)
			if d > time.Second {
				slow++
			}
		}
		sort.Slice(execs, func(i, j int) bool { return execs[i] < execs[j] })
		fmt.Printf("BENCH idle_%s_exec_p50 %.1f ms\n", pass, ms(execs[len(execs)/2]))
		fmt.Printf("BENCH idle_%s_exec_max %.1f ms\n", pass, ms(execs[len(execs)-1]))
		fmt.Printf("BENCH idle_%s_exec_within_1s %d of %d\n", pass, n-slow, n)
	}

	// The same sandboxes paused: the disk each one's saved state takes.
	start = time.Now()
	paused, err := each(n, conc, func(i int) (client.Sandbox, error) { return c.PauseSandbox(ctx, sbs[i].ID) })
	if err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	fmt.Printf("BENCH density_pause_%d %.1f s\n", n, time.Since(start).Seconds())
	var reported int64
	for _, p := range paused {
		reported += p.MemoryBytes
	}
	own, shared := pausedDisk(d, sbs)
	perPaused := float64(own+shared) / float64(n) / (1 << 20)
	fmt.Printf("BENCH paused_disk_mib_per_sandbox %.2f MiB\n", perPaused)
	fmt.Printf("BENCH paused_disk_vs_guest_ram %.4f ratio\n", perPaused/float64(mib))
	fmt.Printf("BENCH paused_own_state_mib_per_sandbox %.2f MiB\n", float64(own)/float64(n)/(1<<20))
	fmt.Printf("BENCH paused_shared_template_memory %.1f MiB\n", float64(shared)/(1<<20))
	fmt.Printf("BENCH paused_reported_memory_mib_per_sandbox %.2f MiB\n", float64(reported)/float64(n)/(1<<20))
	return nil
}

// vmmCPU sums the CPU time the sandboxes' VMMs have used.
func vmmCPU(d *harness.Daemon, sbs []client.Sandbox) (float64, error) {
	var sum float64
	for _, sb := range sbs {
		pid, err := d.VMMPID(sb.ID)
		if err != nil {
			return 0, err
		}
		s, err := harness.CPUSeconds(pid)
		if err != nil {
			return 0, err
		}
		sum += s
	}
	return sum, nil
}

// breakdown splits the sandboxes' host memory by where it is: the guest
// pages each wrote, the template pages they share, the VMM's translation
// cache and the rest of the VMM (its heap, libraries' data, stacks).
func breakdown(d *harness.Daemon, sbs []client.Sandbox, mib int) error {
	var pss, private, guestPrivate, tcg, sharedTemplate int64
	for _, sb := range sbs {
		pid, err := d.VMMPID(sb.ID)
		if err != nil {
			return err
		}
		maps, err := harness.Smaps(pid)
		if err != nil {
			return err
		}
		for _, m := range maps {
			pss += m.Pss
			private += m.Private()
			switch {
			case strings.HasPrefix(m.Path, "/memfd:ember-guest-ram"):
				guestPrivate += m.Private()
				sharedTemplate = max(sharedTemplate, m.SharedClean+m.SharedDirty)
			case m.Path == "" && strings.Contains(m.Perms, "x"):
				// The one anonymous executable mapping is TCG's code
				// buffer (tb-size; the driver bounds it to 64 MiB).
				tcg += m.Private()
			}
		}
	}
	n := float64(len(sbs)) * 1024
	fmt.Printf("BENCH idle_vmm_pss_mib_per_sandbox %.1f MiB\n", float64(pss)/n)
	fmt.Printf("BENCH idle_vmm_private_mib_per_sandbox %.1f MiB\n", float64(private)/n)
	fmt.Printf("BENCH idle_guest_private_mib_per_sandbox %.1f MiB\n", float64(guestPrivate)/n)
	fmt.Printf("BENCH idle_tcg_cache_mib_per_sandbox %.1f MiB\n", float64(tcg)/n)
	fmt.Printf("BENCH idle_vmm_other_private_mib_per_sandbox %.1f MiB\n", float64(private-guestPrivate-tcg)/n)
	fmt.Printf("BENCH idle_shared_template_mib %.1f MiB (of %d MiB guest ram)\n", float64(sharedTemplate)/1024, mib)
	return nil
}

// pausedDisk sums the blocks the paused sandboxes' saved states occupy:
// own, what is each one's alone, and shared, the files they hard-link
// together (the template's memory), counted once.
func pausedDisk(d *harness.Daemon, sbs []client.Sandbox) (own, shared int64) {
	seen := map[uint64]bool{}
	for _, sb := range sbs {
		filepath.WalkDir(filepath.Join(d.SandboxDir(sb.ID), "pause"), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return nil
			}
			info, err := e.Info()
			if err != nil {
				return nil
			}
			st := info.Sys().(*syscall.Stat_t)
			if st.Nlink > 1 {
				if !seen[st.Ino] {
					seen[st.Ino] = true
					shared += st.Blocks * 512
				}
				return nil
			}
			own += st.Blocks * 512
			return nil
		})
	}
	return own, shared
}

// each runs fn for 0..n-1, conc at a time, and returns the results in
// order, or the first error.
func each(n, conc int, fn func(i int) (client.Sandbox, error)) ([]client.Sandbox, error) {
	out := make([]client.Sandbox, n)
	errs := make([]error, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = fn(i)
		}()
	}
	wg.Wait()
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) > 0 {
		return out, fmt.Errorf("%d of %d failed, first: %s", len(msgs), n, msgs[0])
	}
	return out, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
