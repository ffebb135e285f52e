package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/failpoint"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/wire"
)

// A snapshot directory holds the saved machine state and the flattened disk;
// restores run the kernel of the snapshot's template (the one it was saved
// running, at the same path, as the QEMU driver checks).
func snapState(dir string) string  { return filepath.Join(dir, "state") }
func snapRootfs(dir string) string { return filepath.Join(dir, "rootfs") }

// snapshotName is what a client may call a snapshot. Names starting with a
// dot are the manager's own (a fork's hidden snapshot, directories being
// written).
var snapshotName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// forkPrefix starts the names of the hidden snapshots forks are made from.
const forkPrefix = ".fork-"

// CreateSnapshot captures a running or paused sandbox (machine state and
// flattened disk) as the named snapshot. A running sandbox is paused only for
// the capture and keeps running.
func (m *Manager) CreateSnapshot(ctx context.Context, id, name string) (store.Snapshot, error) {
	if !snapshotName.MatchString(name) {
		return store.Snapshot{}, invalid("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	release, err := m.reserveSnapshot(ctx, name)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer release()
	sn, err := m.snapshot(ctx, id, name, false)
	if err != nil {
		return store.Snapshot{}, err
	}
	return withSnapshotUsage(sn), nil
}

// reserveSnapshot claims a name for a snapshot being written, so two
// captures never write the same directory.
func (m *Manager) reserveSnapshot(ctx context.Context, name string) (func(), error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if m.snapBusy[name] {
		return nil, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotExists)
	}
	if _, err := m.d.Store.GetSnapshot(ctx, name); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotExists)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	m.snapBusy[name] = true
	return func() {
		m.snapMu.Lock()
		delete(m.snapBusy, name)
		m.snapMu.Unlock()
	}, nil
}

// snapshot writes the snapshot's directory and then its record. A hidden
// snapshot is part of a fork, which reports it as its own phase.
func (m *Manager) snapshot(ctx context.Context, id, name string, hidden bool) (_ store.Snapshot, err error) {
	sb, err := m.lookupLocked(id)
	if err != nil {
		return store.Snapshot{}, err
	}
	defer sb.mu.Unlock()
	r := sb.Record()
	if r.State != StateRunning && r.State != StatePaused {
		return store.Snapshot{}, stateError(r, "running or paused")
	}
	var o *tracker
	if !hidden {
		o = m.track(OpSnapshot, wire.EventSnapshot, id, r.Template)
		o.event.Snapshot = name
		o.with("snapshot", name, "from_state", r.State)
		defer func() { o.end(err, sb.Record().State) }()
	}
	start := time.Now()
	dst := filepath.Join(m.cfg.SnapshotDir, name)
	tmp := filepath.Join(m.cfg.SnapshotDir, ".tmp-"+name)
	if err := freshDir(tmp); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	if err := m.captureLocked(ctx, o, sb, r, tmp); err != nil {
		return store.Snapshot{}, errors.Join(fmt.Errorf("snapshot sandbox %s as %q: %w", id, name, err), os.RemoveAll(tmp))
	}
	if err := replaceDir(tmp, dst); err != nil {
		return store.Snapshot{}, errors.Join(fmt.Errorf("snapshot sandbox %s: %w", id, err), os.RemoveAll(tmp))
	}
	failpoint.Hit(failpoint.SnapshotPublished)
	sn := store.Snapshot{
		Name: name, Sandbox: id, Template: r.Template, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB, DiskMiB: r.DiskMiB,
		Dir: dst, Token: r.Token, Env: r.Env, Hidden: hidden, CreatedAt: time.Now().UTC(),
	}
	if err := m.d.Store.PutSnapshot(context.WithoutCancel(ctx), sn); err != nil {
		return store.Snapshot{}, errors.Join(err, os.RemoveAll(dst))
	}
	if hidden {
		m.log.Debug("fork snapshot created", "sandbox", id, "snapshot", name, "state", r.State, "duration_ms", ms(time.Since(start)))
	}
	return sn, nil
}

// captureLocked writes the machine state and flattened disk of a running or
// paused sandbox into dir. A running machine is paused for the capture (so
// state and disk agree) and resumed afterwards.
func (m *Manager) captureLocked(ctx context.Context, o *tracker, sb *Sandbox, r store.Sandbox, dir string) (err error) {
	if err := m.restoreBlocked(); err != nil {
		return err
	}
	if err := os.Mkdir(snapState(dir), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if r.State == StatePaused {
		if err := linkTree(pauseDir(r), snapState(dir)); err != nil {
			return fmt.Errorf("copy saved machine state: %w", err)
		}
	} else {
		snapper, ok := sb.machine.(vmm.Snapshotter)
		if !ok {
			return m.unsupported()
		}
		if err := sb.machine.Pause(ctx); err != nil {
			return opError("snapshot", r.ID, "pause the vcpus", ErrVMMSave, err)
		}
		failpoint.Hit(failpoint.SnapshotStopped)
		defer func() {
			if rerr := sb.machine.Resume(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, opError("snapshot", r.ID, "resume the vcpus", ErrVMMSave, rerr))
			}
		}()
		if err := snapper.Snapshot(ctx, snapState(dir), vmm.SnapshotOptions{}); err != nil {
			return opError("snapshot", r.ID, "save the machine state", ErrVMMSave, err)
		}
	}
	o.phase("state")
	failpoint.Hit(failpoint.SnapshotSaved)
	if err := m.d.Disks.Flatten(ctx, r.ID, r.Dir, snapRootfs(dir)); err != nil {
		return opError("snapshot", r.ID, "flatten its disk", ErrDisk, err)
	}
	o.phase("disk")
	failpoint.Hit(failpoint.SnapshotFlattened)
	return nil
}

// useSnapshot looks a snapshot up for a create and holds a reference that
// keeps it from being deleted until release.
func (m *Manager) useSnapshot(ctx context.Context, name string) (store.Snapshot, func(), error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if m.snapBusy[name] {
		// Being deleted (a snapshot being written has no record yet).
		return store.Snapshot{}, nil, fmt.Errorf("snapshot %q: being deleted: %w", name, ErrSnapshotNotFound)
	}
	sn, err := m.d.Store.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.Snapshot{}, nil, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotNotFound)
	} else if err != nil {
		return store.Snapshot{}, nil, err
	}
	m.snapRefs[name]++
	return sn, func() {
		m.snapMu.Lock()
		if m.snapRefs[name]--; m.snapRefs[name] <= 0 {
			delete(m.snapRefs, name)
		}
		m.snapMu.Unlock()
	}, nil
}

// fromSnapshot fills a create request from the snapshot it restores: the
// machine's shape is the snapshot's, and its environment the base of the
// request's.
func fromSnapshot(req *CreateRequest, sn store.Snapshot) error {
	if req.Template != "" {
		return invalid("template", "give a template or a snapshot, not both")
	}
	for _, f := range []struct {
		name string
		got  *int
		want int
	}{{"vcpus", &req.VCPUs, sn.VCPUs}, {"memory_mib", &req.MemoryMiB, sn.MemoryMiB}, {"disk_mib", &req.DiskMiB, sn.DiskMiB}} {
		if *f.got == 0 {
			*f.got = f.want
		} else if *f.got != f.want {
			return invalid(f.name, "must equal snapshot %q's %d (or be left out), got %d", sn.Name, f.want, *f.got)
		}
	}
	req.Env = underEnv(sn.Env, req.Env)
	return nil
}

// underEnv is env with base's variables beneath it (env wins).
func underEnv(base, env map[string]string) map[string]string {
	if len(base) == 0 {
		return env
	}
	out := make(map[string]string, len(base)+len(env))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// GetSnapshot returns one snapshot.
func (m *Manager) GetSnapshot(ctx context.Context, name string) (store.Snapshot, error) {
	sn, err := m.d.Store.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotNotFound)
	} else if err != nil {
		return store.Snapshot{}, err
	}
	return withSnapshotUsage(sn), nil
}

// ListSnapshots returns the named snapshots (not forks' hidden ones), oldest
// first.
func (m *Manager) ListSnapshots(ctx context.Context) ([]store.Snapshot, error) {
	all, err := m.d.Store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]store.Snapshot, 0, len(all))
	for _, sn := range all {
		if !sn.Hidden {
			out = append(out, withSnapshotUsage(sn))
		}
	}
	return out, nil
}

// DeleteSnapshot deletes a snapshot no sandbox depends on. The check and the
// claim are made under snapMu; the files, which may be gigabytes, are
// removed outside it.
func (m *Manager) DeleteSnapshot(ctx context.Context, name string) error {
	sn, err := m.claimForDelete(ctx, name, false)
	if err != nil {
		return err
	}
	return m.removeSnapshot(ctx, sn)
}

// claimForDelete checks, under snapMu, that nothing depends on snapshot
// name and marks it busy (so no create takes it and no capture reuses the
// name while its files go); removeSnapshot releases the mark. hiddenOnly
// refuses a visible snapshot (a fork's cleanup deletes only its own).
func (m *Manager) claimForDelete(ctx context.Context, name string, hiddenOnly bool) (store.Snapshot, error) {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	if m.snapBusy[name] {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: being written or deleted: %w", name, ErrSnapshotInUse)
	}
	sn, err := m.d.Store.GetSnapshot(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: %w", name, ErrSnapshotNotFound)
	} else if err != nil {
		return store.Snapshot{}, err
	}
	if hiddenOnly && !sn.Hidden {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: not a fork's: %w", name, ErrSnapshotInUse)
	}
	if users := m.snapshotUsersLocked(name); len(users) > 0 {
		return store.Snapshot{}, fmt.Errorf("snapshot %q: sandboxes %s were created from it: %w", name, strings.Join(users, ", "), ErrSnapshotInUse)
	}
	m.snapBusy[name] = true
	return sn, nil
}

// snapshotUsersLocked lists what depends on a snapshot: sandboxes created
// from it and creates in flight ("creating"). Called with snapMu held.
func (m *Manager) snapshotUsersLocked(name string) []string {
	var users []string
	if m.snapRefs[name] > 0 {
		users = append(users, "(creating)")
	}
	for _, r := range m.records() {
		if r.Snapshot == name {
			users = append(users, r.ID)
		}
	}
	return users
}

// removeSnapshot deletes a claimed snapshot's record, then its files, and
// drops the claim: a crash between leaves a directory that Recover removes.
func (m *Manager) removeSnapshot(ctx context.Context, sn store.Snapshot) error {
	defer func() {
		m.snapMu.Lock()
		delete(m.snapBusy, sn.Name)
		m.snapMu.Unlock()
	}()
	if err := m.d.Store.DeleteSnapshot(context.WithoutCancel(ctx), sn.Name); err != nil {
		return err
	}
	if err := os.RemoveAll(sn.Dir); err != nil {
		return fmt.Errorf("remove snapshot %q files: %w", sn.Name, err)
	}
	m.log.Info("snapshot deleted", "snapshot", sn.Name)
	return nil
}

// dropHidden deletes a fork's hidden snapshot once nothing depends on it.
// Destroy calls it with the sandbox's lock held: the lock on snapshots is
// held only to check and claim, never while files are removed.
func (m *Manager) dropHidden(ctx context.Context, name string) {
	if !strings.HasPrefix(name, forkPrefix) {
		return
	}
	sn, err := m.claimForDelete(ctx, name, true)
	if errors.Is(err, ErrSnapshotInUse) || errors.Is(err, ErrSnapshotNotFound) {
		return // still used, or already gone
	} else if err != nil {
		m.log.Error("remove fork snapshot", "snapshot", name, "err", err)
		return
	}
	if err := m.removeSnapshot(ctx, sn); err != nil {
		m.log.Error("remove fork snapshot", "snapshot", name, "err", err)
	}
}

// Fork makes count new sandboxes, each a copy of the sandbox as it is now
// (memory, processes, disk), with its settings. The source keeps running.
// On error no fork remains.
func (m *Manager) Fork(ctx context.Context, id string, count int) (_ []store.Sandbox, err error) {
	if count < 1 || count > m.cfg.Limits.MaxForks {
		return nil, invalid("count", "must be between 1 and %d, got %d", m.cfg.Limits.MaxForks, count)
	}
	src, err := m.Get(id)
	if err != nil {
		return nil, err
	}
	pol, err := Policy(src.Network)
	if err != nil {
		return nil, fmt.Errorf("fork sandbox %s: stored policy: %w", id, err)
	}
	o := m.track(OpFork, "", id, src.Template)
	defer func() {
		state := ""
		if r, gerr := m.Get(id); gerr == nil {
			state = r.State
		}
		o.end(err, state)
	}()
	name := forkPrefix + newID()
	if _, err := m.snapshot(ctx, id, name, true); err != nil {
		return nil, fmt.Errorf("fork sandbox %s: %w", id, err)
	}
	o.phase("snapshot")
	failpoint.Hit(failpoint.ForkSnapshot)
	// The hidden snapshot stays while forks depend on it (their disks may
	// sit on its image) and goes with the last of them.
	defer m.dropHidden(context.WithoutCancel(ctx), name)
	out := make([]store.Sandbox, 0, count)
	for range count {
		r, err := m.Create(ctx, CreateRequest{
			Snapshot: name, TimeoutS: int(m.lifetime(src) / time.Second), AutoPause: src.AutoPause,
			Metadata: src.Metadata, Network: &pol, AutoResume: src.AutoResume, PrivateTraffic: src.TrafficToken != "",
		})
		if err != nil {
			var errs []error
			for _, f := range out {
				errs = append(errs, m.Destroy(context.WithoutCancel(ctx), f.ID))
			}
			return nil, errors.Join(append([]error{fmt.Errorf("fork sandbox %s: %w", id, err)}, errs...)...)
		}
		out = append(out, r)
		failpoint.Hit(failpoint.ForkCreated)
	}
	o.phase("copies")
	ids := make([]string, len(out))
	for i, r := range out {
		ids[i] = r.ID
	}
	o.with("count", count, "forks", ids)
	return out, nil
}

// reclaimSnapshots removes snapshot directories without a record (a capture
// or delete a crash interrupted) and hidden snapshots nothing depends on.
func (m *Manager) reclaimSnapshots(ctx context.Context) error {
	all, err := m.d.Store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, sn := range all {
		keep[filepath.Base(sn.Dir)] = true
	}
	entries, err := os.ReadDir(m.cfg.SnapshotDir)
	if err != nil {
		return fmt.Errorf("read snapshot dir: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !keep[e.Name()] && !strings.HasPrefix(e.Name(), templatePrefix) {
			m.log.Info("remove orphaned snapshot files", "path", filepath.Join(m.cfg.SnapshotDir, e.Name()))
			errs = append(errs, os.RemoveAll(filepath.Join(m.cfg.SnapshotDir, e.Name())))
		}
	}
	for _, sn := range all {
		if sn.Hidden {
			m.dropHidden(ctx, sn.Name)
		}
	}
	return errors.Join(errs...)
}

func withSnapshotUsage(sn store.Snapshot) store.Snapshot {
	sn.DiskBytes = allocated(snapRootfs(sn.Dir))
	sn.MemoryBytes = allocated(snapState(sn.Dir))
	return sn
}

// linkTree hard-links (or, across file systems, copies) every regular file
// under src into dst, which exists. Saved state files are never written in
// place, so sharing their inodes is safe.
func linkTree(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if e.IsDir() {
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
			if err := linkTree(from, to); err != nil {
				return err
			}
			continue
		}
		if err := linkOrCopy(from, to); err != nil {
			return err
		}
	}
	return nil
}

// linkOrCopy hard-links src at dst, copying when a link is impossible.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}
