package sandbox

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
)

// recordExecs makes the fake agent log every command it is asked to run
// and answer ready commands with exit 1 until readyAfter of them ran.
func recordExecs(w *world, readyAfter int) (calls func() []string) {
	var mu sync.Mutex
	var got []string
	ready := 0
	w.execFn = func(ctx context.Context, req agent.ExecRequest, stdout, stderr io.Writer) (agent.ExitStatus, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, req.User+" "+req.Cwd+" "+strings.Join(append([]string{req.Cmd}, req.Args...), " ")+" GREETING="+req.Env["GREETING"])
		if len(req.Args) == 2 && req.Args[1] == "ready-check" {
			if ready++; ready <= readyAfter {
				return agent.ExitStatus{Code: 1}, nil
			}
		}
		return agent.ExitStatus{}, nil
	}
	return func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), got...) }
}

func TestTemplateStartCommandBeforeSnapshot(t *testing.T) {
	w, _, _, m := setup(t)
	w.tplKey, w.tplStart, w.tplReady = "0123456789abcdef0123", "serve --port 8000", "ready-check"
	w.tplEnv = map[string]string{"GREETING": "from-template"}
	calls := recordExecs(w, 2)

	first := mustCreate(t, m, CreateRequest{})
	if _, ok := first.TimingsMS["start"]; !ok {
		t.Fatalf("cold boot did not run the start command: %v", first.TimingsMS)
	}
	if _, ok := first.TimingsMS["template_snapshot"]; !ok {
		t.Fatalf("no template snapshot captured: %v", first.TimingsMS)
	}
	got := calls()
	if len(got) != 4 || !strings.HasPrefix(got[0], "root  /bin/sh -c exec setsid") || !strings.Contains(got[0], "serve --port 8000 GREETING=from-template") {
		t.Fatalf("execs = %q, want the start command then three ready checks", got)
	}
	if first.Env["GREETING"] != "from-template" {
		t.Errorf("sandbox env %v lacks the template's", first.Env)
	}
	// The restore of the snapshot has the process running already.
	mustCreate(t, m, CreateRequest{Env: map[string]string{"GREETING": "mine"}})
	if n := len(calls()); n != 4 {
		t.Errorf("a create from the template snapshot ran %d more commands", n-4)
	}
}

func TestTemplateReadyNeverSucceeds(t *testing.T) {
	w, st, dir, m := setupWith(t, func(c *Config, _ *Deps) { c.ReadyTimeout = 300 * time.Millisecond })
	w.tplStart, w.tplReady = "serve", "ready-check"
	recordExecs(w, 1<<30)
	_, err := m.Create(context.Background(), CreateRequest{})
	if !errors.Is(err, ErrStartCmd) || !strings.Contains(err.Error(), "ready-check") {
		t.Fatalf("create = %v, want ErrStartCmd naming the ready command", err)
	}
	if recs, _ := st.ListSandboxes(context.Background()); len(recs) != 0 {
		t.Errorf("records left: %+v", recs)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("sandbox dirs left: %v", entries)
	}
}

type fakeRemover struct{ removed []string }

func (f *fakeRemover) Remove(name string) error { f.removed = append(f.removed, name); return nil }

func TestDeleteTemplate(t *testing.T) {
	w, _, _, m := setupWith(t, func(c *Config, _ *Deps) { c.DefaultTemplate = "other" })
	w.tplKey = "0123456789abcdef0123"
	ctx := context.Background()
	reg := &fakeRemover{}
	sb := mustCreate(t, m, CreateRequest{Template: "base"})
	snapDir := m.templateSnapshotDir(template0(w), 1, 256)
	if _, err := os.Stat(snapDir); err != nil {
		t.Fatalf("template snapshot: %v", err)
	}
	other := filepath.Join(m.cfg.SnapshotDir, templatePrefix+"base-x-0123456789abcdef-1c256m")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		want error
	}{{"base", ErrTemplateInUse}, {"other", ErrTemplateNotFound}, {"missing", ErrTemplateNotFound}} {
		if err := m.DeleteTemplate(ctx, tc.name, reg); !errors.Is(err, tc.want) {
			t.Errorf("delete %s = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := m.CreateSnapshot(ctx, sb.ID, "kept"); err != nil {
		t.Fatal(err)
	}
	destroyAll(t, m, sb.ID)
	if err := m.DeleteTemplate(ctx, "base", reg); !errors.Is(err, ErrTemplateInUse) || !strings.Contains(err.Error(), "snapshot kept") {
		t.Fatalf("delete with a snapshot of it = %v, want in use by snapshot kept", err)
	}
	if err := m.DeleteSnapshot(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteTemplate(ctx, "base", reg); err != nil {
		t.Fatal(err)
	}
	if len(reg.removed) != 1 || reg.removed[0] != "base" {
		t.Errorf("removed %v", reg.removed)
	}
	if _, err := os.Stat(snapDir); err == nil {
		t.Errorf("the template's snapshot outlived it")
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another template's snapshot went too: %v", err)
	}
	if err := m.ReplaceTemplate(ctx, "other", nil); !errors.Is(err, ErrTemplateInUse) {
		t.Errorf("replace the default template = %v, want in use", err)
	}
}
