package sandbox

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/store"
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

// TestCreatesWaitForTheTemplateCapture starts creates while the first
// create of a template is capturing its snapshot: they wait for it and
// restore from it instead of each cold-booting. When the capture fails,
// they cold-boot at once instead of one after another.
func TestCreatesWaitForTheTemplateCapture(t *testing.T) {
	for _, tc := range []struct {
		name         string
		failSnapshot bool
		wantStarts   int
	}{
		{"capture succeeds", false, 1},
		{"capture fails", true, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			w.tplKey = "0123456789abcdef0123"
			w.failSnapshot = tc.failSnapshot
			inReady, release := holdFirstReady(w)
			ids := make(chan string, 6)
			errs := make(chan error, 6)
			create := func() {
				r, err := m.Create(context.Background(), CreateRequest{})
				errs <- err
				ids <- r.ID
			}
			go create()
			<-inReady // the first create booted and waits for its agent
			for range 5 {
				go create()
			}
			// The others arrive while the capture is pending and wait.
			time.Sleep(100 * time.Millisecond)
			w.mu.Lock()
			starts := w.starts
			w.mu.Unlock()
			if starts != 1 {
				t.Errorf("%d cold boots while the first capture was pending, want 1", starts)
			}
			release()
			var all []string
			for range 6 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
				all = append(all, <-ids)
			}
			w.mu.Lock()
			starts = w.starts
			w.mu.Unlock()
			if starts != tc.wantStarts {
				t.Errorf("%d cold boots for 6 creates, want %d", starts, tc.wantStarts)
			}
			if len(m.capturing) != 0 {
				t.Errorf("captures still registered: %v", m.capturing)
			}
			destroyAll(t, m, all...)
			assertEmpty(t, w, st, m, dir)
		})
	}
}

// TestCreateWaitingForACaptureCancels checks that a create waiting for a
// capture gives up when its caller does, having acquired nothing.
func TestCreateWaitingForACaptureCancels(t *testing.T) {
	w, st, dir, m := setup(t)
	w.tplKey = "0123456789abcdef0123"
	inReady, release := holdFirstReady(w)
	done := make(chan store.Sandbox)
	go func() {
		r, err := m.Create(context.Background(), CreateRequest{})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	<-inReady
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Create(ctx, CreateRequest{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting create: %v, want its deadline", err)
	}
	release()
	first := <-done
	destroyAll(t, m, first.ID)
	assertEmpty(t, w, st, m, dir)
}

// holdFirstReady holds the first create that waits for its agent there:
// inReady is closed once it waits, release lets it go on.
func holdFirstReady(w *world) (inReady <-chan struct{}, release func()) {
	ready, gate := make(chan struct{}), make(chan struct{})
	var once sync.Once
	w.onReady = func() {
		first := false
		once.Do(func() { first = true })
		if first {
			close(ready)
			<-gate
		}
	}
	return ready, func() { close(gate) }
}
