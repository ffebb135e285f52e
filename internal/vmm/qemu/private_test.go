//go:build linux

package qemu

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// TestPrivateRestore restores two machines from one saved memory file and
// checks that both map one sealed copy of the file privately (not a copy
// each), share its clean pages, leave the file unchanged, and that saving one keeps only what its guest
// changed: the snapshot links the same file and its stream is a fraction
// of the guest's memory, and it restores into a guest that counts on.
func TestPrivateRestore(t *testing.T) {
	d, spec, m := startCounterGuest(t)
	ctx := t.Context()
	vmmtest.WaitTick(t, m, spec, 3)
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	tpl := t.TempDir()
	if err := m.Snapshot(ctx, tpl, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(tpl, memoryFile)
	before := testutil.Digest(t, base)

	var ms []*Machine
	var specs []vmm.Spec
	for i := range 2 {
		s := diskCopy(t, spec, fmt.Sprintf("private-%d", i))
		r, err := d.Restore(ctx, s, tpl)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Stop(t.Context()) })
		rm := r.(*Machine)
		if !rm.ram.Private || !sameFile(t, rm.ram.Path, base) {
			t.Fatalf("restored machine's ram %+v does not map %s privately", rm.ram, base)
		}
		// What a daemon that re-adopts the machine finds.
		if got := attachedRAM(rm.PID(), s.Dir, rm.proc.Args()); got != rm.ram {
			t.Errorf("re-adoption finds ram %+v, machine has %+v", got, rm.ram)
		}
		ms, specs = append(ms, rm), append(specs, s)
	}
	for i, r := range ms {
		vmmtest.WaitTick(t, r, specs[i], 6)
	}
	if n := d.sealed.held(); n != 1 {
		t.Errorf("%d sealed copies of one saved memory for two machines, want one", n)
	}
	for i, r := range ms {
		mp := ramMapping(t, r.PID(), "/memfd:"+sealedName+" (deleted)")
		// The sealed copy's pages are shmem, which counts as dirty.
		shared := mp["Shared_Clean"] + mp["Shared_Dirty"]
		t.Logf("machine %d: guest ram mapping rss %d KiB, shared %d KiB, private dirty %d KiB",
			i, mp["Rss"], shared, mp["Private_Dirty"])
		if shared < 1024 {
			t.Errorf("machine %d shares %d KiB of guest ram with the other: want the saved memory's pages shared", i, shared)
		}
		if mp["Private_Dirty"] > mp["Rss"]/2 {
			t.Errorf("machine %d has %d of %d KiB of guest ram private: want most of it shared", i, mp["Private_Dirty"], mp["Rss"])
		}
	}

	r := ms[0]
	if err := r.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	saved := t.TempDir()
	if err := r.Snapshot(ctx, saved, vmm.SnapshotOptions{}); err != nil {
		t.Fatal(err)
	}
	man, err := readManifest(saved)
	if err != nil {
		t.Fatal(err)
	}
	if man.Memory != memoryPrivate {
		t.Errorf("manifest memory %q, want %q", man.Memory, memoryPrivate)
	}
	if !sameFile(t, filepath.Join(saved, memoryFile), base) {
		t.Errorf("snapshot of a private machine does not link the file it maps")
	}
	if _, err := os.Stat(filepath.Join(saved, saveStream)); !os.IsNotExist(err) {
		t.Errorf("unfiltered stream left behind: %v", err)
	}
	st, err := os.Stat(filepath.Join(saved, vmstateFile))
	if err != nil {
		t.Fatal(err)
	}
	guest := int64(withDefaults(spec).MemoryMiB) << 20
	t.Logf("saved stream of a private machine: %d KiB for a %d MiB guest", st.Size()>>10, guest>>20)
	if st.Size() > guest/8 {
		t.Errorf("saved stream %d bytes: want only the pages the guest changed, under an eighth of its %d", st.Size(), guest)
	}
	ticks := vmmtest.WaitTick(t, r, specs[0], 0)
	at := ticks[len(ticks)-1].N
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	again := specs[0]
	again.Dir = t.TempDir()
	back, err := d.Restore(ctx, again, saved)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { back.Stop(t.Context()) })
	ts := vmmtest.WaitTick(t, back, again, at+3)
	if ts[0].N != at+1 && ts[0].N != at+2 {
		t.Errorf("guest restored from the private snapshot counts from %d, saved at %d", ts[0].N, at)
	}
	for _, m := range []vmm.Machine{back, ms[1]} {
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if after := testutil.Digest(t, base); after != before {
		t.Errorf("saved memory file changed under the machines mapping it")
	}
	for _, s := range append(specs, again) {
		if _, err := os.Lstat(ramLinkPath(s.Dir)); !os.IsNotExist(err) {
			t.Errorf("link to saved memory left in %s: %v", s.Dir, err)
		}
	}
}

// diskCopy returns spec in a fresh directory, on a copy of its disk as it
// is now.
func diskCopy(t *testing.T, spec vmm.Spec, id string) vmm.Spec {
	t.Helper()
	dir := t.TempDir()
	disk, err := rootfscopy.New(slog.New(slog.DiscardHandler)).Prepare(t.Context(), id, dir, spec.RootDisk, 0)
	if err != nil {
		t.Fatal(err)
	}
	spec.ID, spec.Dir, spec.RootDisk, spec.DiskFormat = id, dir, disk.Path, disk.Format
	return spec
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}

// ramMapping returns the kB fields of process pid's mapping of path, from
// /proc/pid/smaps.
func ramMapping(t *testing.T, pid int, path string) map[string]int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out map[string]int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") {
			if out != nil {
				return out
			}
			if len(fields) > 5 && strings.Join(fields[5:], " ") == path {
				out = map[string]int64{}
			}
			continue
		}
		if out != nil && len(fields) == 3 && fields[2] == "kB" {
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			out[strings.TrimSuffix(fields[0], ":")] = n
		}
	}
	if out == nil {
		t.Fatalf("process %d does not map %s", pid, path)
	}
	return out
}

// TestAttachedRAM reads a re-adopted machine's private RAM back from the
// descriptor QEMU holds, not from QEMU's own /proc/self name for it.
func TestAttachedRAM(t *testing.T) {
	dir := t.TempDir()
	saved := filepath.Join(dir, "memory")
	if err := os.WriteFile(saved, []byte("ram"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(saved)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	spec := vmm.Spec{ID: "sb1", Dir: dir, Kernel: "/k", RootDisk: filepath.Join(dir, "disk"), MemoryMiB: 128}
	h := noneHanded
	h.ram = int(f.Fd())
	args := buildArgs(AccelTCG, 1, guestRAM{Path: saved, Private: true}, spec, h, nil)
	if got := attachedRAM(os.Getpid(), dir, args); got != (guestRAM{Path: saved, Private: true}) {
		t.Errorf("attachedRAM of a handed descriptor = %+v, want %s", got, saved)
	}
	// A descriptor no longer open: the link in the machine's directory.
	if got := attachedRAM(os.Getpid(), dir, buildArgs(AccelTCG, 1, guestRAM{Path: saved, Private: true},
		spec, handed{kernel: -1, disk: -1, diskRO: -1, backing: -1, console: -1, qmp: -1, tap: -1, root: -1, ram: 1 << 20}, nil)); got.Path != ramLinkPath(dir) {
		t.Errorf("attachedRAM of a closed descriptor = %+v, want the link %s", got, ramLinkPath(dir))
	}
	shared := guestRAM{Path: "/dev/shm/ember-sb1.mem"}
	if got := attachedRAM(os.Getpid(), dir, buildArgs(AccelTCG, 1, shared, spec, noneHanded, nil)); got != shared {
		t.Errorf("attachedRAM of a shared file = %+v", got)
	}
}
