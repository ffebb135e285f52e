package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
)

// templatePrefix starts the directory names of template snapshots under
// the snapshot directory. They have no record: the directory, published by
// rename once complete, is the whole of one.
const templatePrefix = ".template-"

// templateSnapshotDir names the template snapshot of one template build and
// machine shape: a rebuilt template (another key) gets a fresh one.
func (m *Manager) templateSnapshotDir(tpl template.Template, vcpus, memMiB int) string {
	key := tpl.Key
	if len(key) > 16 {
		key = key[:16]
	}
	name := templatePrefix + tpl.Name + "-" + key + "-" + strconv.Itoa(vcpus) + "c" + strconv.Itoa(memMiB) + "m"
	return filepath.Join(m.cfg.SnapshotDir, name)
}

// useTemplateSnapshot points a template create at the template's snapshot
// when one exists (the create restores it), or asks the create to capture
// one (src.capture) when none does. A create that finds another capturing
// it waits for that capture and restores from it, instead of cold-booting
// too (a cold boot costs seconds, a restore a fraction of one; twenty at
// once on a small host cost each of them tens of seconds); when that
// capture fails, one of the waiters captures next. Either way only with a
// driver that can restore.
func (m *Manager) useTemplateSnapshot(ctx context.Context, src *source, tpl template.Template, req CreateRequest) error {
	if !m.cfg.TemplateSnapshots || tpl.Key == "" || m.restoreBlocked() != nil {
		return nil
	}
	if _, ok := m.d.VMM.(vmm.Restorer); !ok {
		return nil
	}
	dir := m.templateSnapshotDir(tpl, req.VCPUs, req.MemoryMiB)
	for waited := false; ; waited = true {
		m.capMu.Lock()
		if _, err := os.Stat(dir); err == nil {
			m.capMu.Unlock()
			// The guest has no token yet (it was saved before its init),
			// so Init hands it this one.
			src.rootfs, src.state = snapRootfs(dir), snapState(dir)
			return nil
		}
		busy, ok := m.capturing[dir]
		if !ok {
			done := make(chan struct{})
			m.capturing[dir] = done
			m.capMu.Unlock()
			src.capture = dir
			src.captured = sync.OnceFunc(func() {
				m.capMu.Lock()
				delete(m.capturing, dir)
				m.capMu.Unlock()
				close(done)
			})
			return nil
		}
		m.capMu.Unlock()
		if waited {
			return nil // the capture waited for failed: cold-boot
		}
		select {
		case <-busy:
		case <-ctx.Done():
			return fmt.Errorf("wait for the snapshot of template %q being captured: %w", tpl.Name, context.Cause(ctx))
		}
	}
}

// captureTemplate saves a freshly booted, ready, not yet initialised guest as
// its template's snapshot. Only a failure to set the guest running again
// fails the create; otherwise a capture that cannot be made is skipped and
// the next cold boot tries again.
func (m *Manager) captureTemplate(ctx context.Context, machine vmm.Machine, r store.Sandbox, dir string) error {
	snapper, ok := machine.(vmm.Snapshotter)
	if !ok {
		return nil
	}
	release, err := m.reserveSnapshot(ctx, filepath.Base(dir))
	if errors.Is(err, ErrSnapshotExists) {
		return nil // another create is capturing it
	} else if err != nil {
		// Not worth failing the create for: the next cold boot tries again.
		m.log.Warn("capture template snapshot", "sandbox", r.ID, "template", r.Template, "err", err)
		return nil
	}
	defer release()
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	tmp := filepath.Join(m.cfg.SnapshotDir, ".tmp-"+filepath.Base(dir))
	err = m.writeTemplate(ctx, machine, snapper, r, tmp)
	if err == nil {
		err = replaceDir(tmp, dir)
	}
	if err != nil {
		m.log.Warn("capture template snapshot", "sandbox", r.ID, "template", r.Template, "err", errors.Join(err, os.RemoveAll(tmp)))
	}
	if rerr := machine.Resume(context.WithoutCancel(ctx)); rerr != nil {
		return opError("create", r.ID, "resume the machine after its template snapshot", ErrVMMSave, rerr)
	}
	if err == nil {
		m.log.Info("template snapshot captured", "template", r.Template, "dir", dir)
	}
	return nil
}

func (m *Manager) writeTemplate(ctx context.Context, machine vmm.Machine, snapper vmm.Snapshotter, r store.Sandbox, tmp string) error {
	if err := freshDir(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(snapState(tmp), 0o700); err != nil {
		return err
	}
	if err := machine.Pause(ctx); err != nil {
		return fmt.Errorf("pause vcpus: %w", err)
	}
	if err := snapper.Snapshot(ctx, snapState(tmp), vmm.SnapshotOptions{}); err != nil {
		return fmt.Errorf("save machine state: %w", err)
	}
	if err := m.d.Disks.Flatten(ctx, r.ID, r.Dir, snapRootfs(tmp)); err != nil {
		return fmt.Errorf("flatten disk: %w", err)
	}
	return nil
}
