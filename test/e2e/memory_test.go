package e2e

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
	"golang.org/x/sys/unix"
)

// guestMiB is the memory of the sandboxes these tests create.
const guestMiB = 128

// createN creates n sandboxes of guestMiB at once and returns them.
func createN(t *testing.T, c *client.Client, n int) []client.Sandbox {
	t.Helper()
	out := make([]client.Sandbox, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = c.CreateSandbox(context.Background(), client.CreateSandboxRequest{MemoryMiB: guestMiB})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// fillTmp writes 8 MiB of a marker naming the sandbox into a tmpfs file
// in its guest (guest memory, then) and returns the marker and the file's
// digest as the host computes it.
func fillTmp(t *testing.T, c *client.Client, id string) (marker, sum string) {
	t.Helper()
	marker = "ember-cow-" + id + "\n"
	res, err := c.Exec(context.Background(), id, client.ExecRequest{Cmd: "/bin/sh",
		Args: []string{"-c", "yes ember-cow-" + id + " | head -c 8388608 > /tmp/cow && sync"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("fill /tmp/cow in %s: %+v %v", id, res, err)
	}
	content := strings.Repeat(marker, 8388608/len(marker)+1)[:8388608]
	return marker, fmt.Sprintf("%x", sha256.Sum256([]byte(content)))
}

// guestRAM returns how a running sandbox's VMM maps its guest RAM.
func guestRAM(t *testing.T, d *harness.Daemon, id string) harness.Mapping {
	t.Helper()
	pid, err := d.VMMPID(id)
	if err != nil {
		t.Fatal(err)
	}
	m, err := harness.GuestRAM(pid)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// templateMemory returns the digest of every template snapshot's memory
// file of the daemon, by path.
func templateMemory(t *testing.T, d *harness.Daemon) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(d.DataDir, "snapshots", ".template-*", "state", "memory"))
	if err != nil || len(files) == 0 {
		var all []string
		filepath.WalkDir(filepath.Join(d.DataDir, "snapshots"), func(p string, _ fs.DirEntry, _ error) error {
			all = append(all, p)
			return nil
		})
		t.Fatalf("no template memory file among %v: %v", all, err)
	}
	out := map[string]string{}
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[p] = fmt.Sprintf("%x", h.Sum(nil))
	}
	return out
}

// expectTmp checks that a sandbox reads back the file fillTmp wrote.
func expectTmp(t *testing.T, c *client.Client, id, sum string) {
	t.Helper()
	res, err := c.Exec(context.Background(), id, client.ExecRequest{Cmd: "sha256sum", Args: []string{"/tmp/cow"}})
	if err != nil || !strings.HasPrefix(string(res.Stdout), sum) {
		t.Fatalf("sandbox %s reads back %q (%v), want %s", id, res.Stdout, err, sum)
	}
}

// TestTemplateMemoryCopyOnWrite creates two sandboxes from one template's
// memory snapshot, has each write its own data into guest memory, and
// checks that each reads its own back, that guest-physical pages at the
// same address hold different data in the two, and that the two share the
// rest of the template's memory on the host; then again after both are
// paused and resumed; and that the template's memory file is the same
// afterwards, byte for byte.
func TestTemplateMemoryCopyOnWrite(t *testing.T) {
	d := start(t, 6200)
	c := d.Client
	ctx := context.Background()
	// The first create cold-boots and captures the template's snapshot;
	// the two after it restore from it.
	first := createN(t, c, 1)[0]
	sbs := createN(t, c, 2)
	for _, sb := range sbs {
		if _, ok := sb.TimingsMS["restore"]; !ok {
			t.Fatalf("sandbox %s did not restore the template's snapshot: %v", sb.ID, sb.TimingsMS)
		}
	}
	if err := c.DeleteSandbox(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	tplSums := templateMemory(t, d)
	markers, sums := make([]string, 2), make([]string, 2)
	for i, sb := range sbs {
		markers[i], sums[i] = fillTmp(t, c, sb.ID)
	}
	check := func(when string) {
		t.Helper()
		pages := make([]map[int]bool, 2)
		for i, sb := range sbs {
			expectTmp(t, c, sb.ID, sums[i])
			mem, err := d.GuestMemory(sb.ID, guestMiB<<20)
			if err != nil {
				t.Fatal(err)
			}
			pages[i] = harness.PagesHolding(mem, []byte(markers[i]))
			if other := harness.PagesHolding(mem, []byte(markers[1-i])); len(other) > 0 {
				t.Errorf("%s: sandbox %s's memory holds %d pages of the other's data", when, sb.ID, len(other))
			}
			if len(pages[i]) < 2048 {
				t.Errorf("%s: sandbox %s's memory holds its data in %d pages, want the 2048 of 8 MiB", when, sb.ID, len(pages[i]))
			}
		}
		same := 0
		for pfn := range pages[0] {
			if pages[1][pfn] {
				same++
			}
		}
		t.Logf("%s: %d and %d pages hold each sandbox's data, %d of them at the same guest address", when, len(pages[0]), len(pages[1]), same)
		if same == 0 {
			t.Errorf("%s: no guest address holds the two sandboxes' data: the test proves nothing", when)
		}
		var shared, private int64
		for _, sb := range sbs {
			m := guestRAM(t, d, sb.ID)
			t.Logf("%s: sandbox %s guest ram: rss %d kB, shared %d kB, private %d kB", when, sb.ID, m.Rss, m.SharedClean+m.SharedDirty, m.Private())
			shared += m.SharedClean + m.SharedDirty // shmem pages count as dirty
			private += m.Private()
		}
		if shared == 0 {
			t.Errorf("%s: the sandboxes share no guest memory on the host", when)
		}
	}
	check("running")
	// What a guest that escaped into its QEMU could do with the RAM it
	// maps: nothing; the template's memory is sealed against writes.
	for _, sb := range sbs {
		pid, err := d.VMMPID(sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeSealedRAM(pid); !errors.Is(err, unix.EPERM) {
			t.Errorf("sandbox %s: writing the memory its QEMU maps: %v, want EPERM", sb.ID, err)
		}
	}
	for _, sb := range sbs {
		p, err := c.PauseSandbox(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("paused %s: saved memory %d KiB for a %d MiB guest", sb.ID, p.MemoryBytes>>10, guestMiB)
	}
	for _, sb := range sbs {
		if _, err := c.ResumeSandbox(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
	}
	check("resumed")
	if after := templateMemory(t, d); !maps.Equal(after, tplSums) {
		t.Errorf("the template's memory changed under its sandboxes: %v, was %v", after, tplSums)
	}
}

// TestWarmPool keeps a pool of two warm sandboxes on a daemon of four
// network slots: a create claims one with its own environment, metadata,
// timeout and traffic token; the pool refills; warm sandboxes are not
// listed and are re-adopted, not rebooted, across a daemon restart; a
// claimed sandbox's state never reaches the next claim; and warm sandboxes
// count against the slots, giving way to creates that find none free.
func TestWarmPool(t *testing.T) {
	d := startWith(t, harness.Options{SlotFirst: 6250, SlotCount: 4, Args: []string{"--warm", "base=2"}})
	c := d.Client
	ctx := context.Background()
	waitWarm(t, c, 2)
	if l, err := c.ListSandboxes(ctx); err != nil || len(l) != 0 {
		t.Fatalf("warm sandboxes listed: %+v %v", l, err)
	}
	info, err := c.Info(ctx)
	if err != nil || len(info.Warm) != 1 || info.Warm[0].Ready != 2 || info.KSM.State == "" {
		t.Fatalf("info: %+v %v", info, err)
	}
	begin := time.Now()
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Env: map[string]string{"WHO": "first"},
		Metadata: map[string]string{"k": "v"}, TimeoutS: 600, PrivateTraffic: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo $WHO; echo secret > /tmp/left-behind"}})
	took := time.Since(begin)
	if err != nil || string(res.Stdout) != "first\n" {
		t.Fatalf("exec in the claimed sandbox: %+v %v", res, err)
	}
	if _, ok := sb.TimingsMS["claim"]; !ok {
		t.Fatalf("create did not claim a warm sandbox: %+v", sb)
	}
	t.Logf("claimed %s: create to first exec %s; timings %v", sb.ID, took, sb.TimingsMS)
	got, err := c.GetSandbox(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata["k"] != "v" || len(got.Metadata) != 1 || got.TrafficToken == "" ||
		got.ExpiresAt.Sub(begin) < 590*time.Second || got.ExpiresAt.Sub(begin) > 610*time.Second {
		t.Fatalf("claimed sandbox: metadata %v, traffic token %q, expires %s after the create, want 600 s",
			got.Metadata, got.TrafficToken, got.ExpiresAt.Sub(begin))
	}
	waitWarm(t, c, 2)

	// A restart re-adopts the warm sandboxes as it does the client's.
	pids := vmmPIDs(t, d)
	if len(pids) != 3 {
		t.Fatalf("%d VMMs run, want the claimed sandbox's and two warm: %v", len(pids), pids)
	}
	if err := d.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitWarm(t, c, 2)
	if after := vmmPIDs(t, d); !maps.Equal(after, pids) {
		t.Fatalf("VMMs after a restart %v, want the same %v", after, pids)
	}
	if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	waitWarm(t, c, 2)

	// The next claim is a fresh guest of the template.
	next, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	res, err = c.Exec(ctx, next.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "cat /tmp/left-behind 2>&1; echo ${WHO:-unset}"}})
	if err != nil || strings.Contains(string(res.Stdout), "secret") || !strings.HasSuffix(string(res.Stdout), "unset\n") {
		t.Fatalf("the next claim sees the last one's state: %+v %v", res, err)
	}
	if _, ok := next.TimingsMS["claim"]; !ok || next.ID == sb.ID || len(next.Metadata) != 0 || next.TrafficToken != "" {
		t.Fatalf("second claim: %+v", next)
	}
	waitWarm(t, c, 2)

	// Four slots: the claimed sandbox and two warm ones leave one. A
	// create of another shape takes it; the next finds none free and a
	// warm sandbox gives way; a claim takes the last warm one; then the
	// daemon is full.
	for i, wantReady := range []int{2, 1} {
		other, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{MemoryMiB: 384})
		if err != nil {
			t.Fatalf("create of another shape %d: %v", i, err)
		}
		if _, ok := other.TimingsMS["claim"]; ok {
			t.Fatalf("a create of another shape claimed a warm sandbox")
		}
		if p := pool(t, c); p.Ready != wantReady {
			t.Fatalf("after create %d of another shape: pool %+v, want %d ready", i, p, wantReady)
		}
	}
	last, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := last.TimingsMS["claim"]; !ok {
		t.Fatalf("create did not claim the last warm sandbox: %v", last.TimingsMS)
	}
	if _, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{}); !client.IsCode(err, "no_capacity") {
		t.Fatalf("create on a full daemon: %v, want no_capacity", err)
	}
	if p, err := c.SetWarmPool(ctx, "base", 0); err != nil || p.Ready != 0 {
		t.Fatalf("empty the pool: %+v %v", p, err)
	}
}

// vmmPIDs returns the VMM process of every sandbox directory of the
// daemon, warm ones included.
func vmmPIDs(t *testing.T, d *harness.Daemon) map[string]int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(d.DataDir, "sandboxes"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range entries {
		pid, err := d.VMMPID(e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = pid
	}
	return out
}

// pool returns the base template's warm pool.
func pool(t *testing.T, c *client.Client) client.WarmPool {
	t.Helper()
	pools, err := c.WarmPools(context.Background())
	if err != nil || len(pools) != 1 {
		t.Fatalf("warm pools: %+v %v", pools, err)
	}
	return pools[0]
}

// waitWarm waits until the base pool has ready sandboxes.
func waitWarm(t *testing.T, c *client.Client, ready int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pools, err := c.WarmPools(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(pools) == 1 && pools[0].Ready == ready && pools[0].Starting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("warm pools: %+v, want %d ready", pools, ready)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConcurrentCreatesShareOneCapture creates eight sandboxes at once on
// a fresh data directory: one cold-boots and captures the template's
// snapshot, the others wait for it and restore from it.
func TestConcurrentCreatesShareOneCapture(t *testing.T) {
	d := start(t, 6300)
	begin := time.Now()
	sbs := createN(t, d.Client, 8)
	boots := 0
	for _, sb := range sbs {
		if _, ok := sb.TimingsMS["boot"]; ok {
			boots++
		}
	}
	t.Logf("8 concurrent creates on a fresh data directory: %s", time.Since(begin))
	if boots != 1 {
		t.Errorf("%d of 8 concurrent creates cold-booted, want 1", boots)
	}
}

// TestIdleDensityShort is the short density check of make test: five idle
// sandboxes of one template share its memory on the host (the guest RAM
// mappings are mostly shared, not private), and all answer an exec within
// a second. make bench-density runs the full one.
func TestIdleDensityShort(t *testing.T) {
	d := start(t, 6350)
	c := d.Client
	ctx := context.Background()
	createN(t, c, 1) // captures the template's snapshot
	before, err := harness.Meminfo()
	if err != nil {
		t.Fatal(err)
	}
	sbs := createN(t, c, 5)
	time.Sleep(2 * time.Second) // let the guests settle
	after, err := harness.Meminfo()
	if err != nil {
		t.Fatal(err)
	}
	var rss, shared, private int64
	for _, sb := range sbs {
		m := guestRAM(t, d, sb.ID)
		rss, shared, private = rss+m.Rss, shared+m.SharedClean+m.SharedDirty, private+m.Private()
		start := time.Now()
		if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil || time.Since(start) > time.Second {
			t.Errorf("sandbox %s: exec took %s: %v", sb.ID, time.Since(start), err)
		}
	}
	t.Logf("5 idle sandboxes of %d MiB: guest ram rss %d kB, shared %d kB, private %d kB; MemAvailable fell %d kB (%d kB each)",
		guestMiB, rss, shared, private, before["MemAvailable"]-after["MemAvailable"], (before["MemAvailable"]-after["MemAvailable"])/5)
	// Each sandbox's own share: the guest pages it wrote, and its VMM's
	// heap and translation cache (about 30 MiB together under TCG). A
	// copy of the template's memory per sandbox adds most of guest RAM.
	if perSandbox := (before["MemAvailable"] - after["MemAvailable"]) / 5; perSandbox > guestMiB<<10*2/5 {
		t.Errorf("MemAvailable fell %d kB per sandbox, want well under the %d kB of guest ram", perSandbox, guestMiB<<10)
	}
	if shared < 2*private {
		t.Errorf("guest ram of sandboxes from one template: %d kB shared, %d kB private: want it mostly shared", shared, private)
	}
}

// writeSealedRAM writes a byte through the descriptor QEMU pid holds of its
// guest RAM's saved memory, as QEMU itself could.
func writeSealedRAM(pid int) error {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "/memfd:ember-guest-ram") {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, e.Name()), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt([]byte{0}, 0)
		return err
	}
	return fmt.Errorf("process %d holds no sealed guest memory", pid)
}
