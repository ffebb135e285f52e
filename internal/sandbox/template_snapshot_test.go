package sandbox

import (
	"context"
	"os"
	"testing"

	"github.com/emberhq/ember/internal/template"
)

func TestTemplateSnapshotCapturedOnceThenRestored(t *testing.T) {
	w, st, dir, m := setup(t)
	w.tplKey = "0123456789abcdef0123"
	ctx := context.Background()
	first := mustCreate(t, m, CreateRequest{})
	if _, ok := first.TimingsMS["template_snapshot"]; !ok {
		t.Fatalf("first create did not capture: %v", first.TimingsMS)
	}
	if machineOf(t, w, first.VMMPID).isPaused() {
		t.Fatal("first sandbox left paused after the capture")
	}
	tdir := m.templateSnapshotDir(template0(w), 1, 256)
	if _, err := os.Stat(snapRootfs(tdir)); err != nil {
		t.Fatalf("template snapshot: %v", err)
	}
	second := mustCreate(t, m, CreateRequest{})
	if mach := machineOf(t, w, second.VMMPID); mach.from != snapState(tdir) {
		t.Fatalf("second create restored from %q, want the template snapshot", mach.from)
	}
	w.mu.Lock()
	base := w.bases[second.ID]
	w.mu.Unlock()
	if base != snapRootfs(tdir) || second.Token == first.Token || second.Snapshot != "" {
		t.Fatalf("second create: base %q, record %+v", base, second)
	}
	// Another shape and a bigger disk cold-boot.
	other := mustCreate(t, m, CreateRequest{MemoryMiB: 512})
	big := mustCreate(t, m, CreateRequest{DiskMiB: 2048})
	if mach := machineOf(t, w, big.VMMPID); mach.from != "" {
		t.Fatalf("bigger disk restored from %q", mach.from)
	}
	if list, _ := m.ListSnapshots(ctx); len(list) != 0 {
		t.Fatalf("template snapshots listed: %+v", list)
	}
	// Recover keeps template snapshots.
	if err := m.reclaimSnapshots(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tdir); err != nil {
		t.Fatalf("reclaim removed the template snapshot: %v", err)
	}
	destroyAll(t, m, first.ID, second.ID, other.ID, big.ID)
	assertEmpty(t, w, st, m, dir)
}

func template0(w *world) template.Template {
	tpl, _ := w.Get("base")
	return tpl
}
