//go:build linux

package devmapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/reclaim"
)

// Operations an intent records.
const (
	opPrepare = "prepare"
	opAttach  = "attach"
	opDetach  = "detach"
	opFlatten = "flatten" // of a detached disk, attached for the copy
	opRemove  = "remove"
)

// intent is a multi-step change under way on one sandbox's disk, written
// to the state directory before the first step and deleted after the last.
type intent struct {
	Op  string `json:"op"`
	ID  string `json:"id"`
	Dir string `json:"dir"`
}

// journalPath is where id's intent is kept.
func (b *Backend) journalPath(id string) string { return filepath.Join(b.state, id+".json") }

// begin records in before acting on it; the write is atomic (temporary
// file, fsync, rename).
func (b *Backend) begin(in intent) error {
	if in.ID == "" || strings.ContainsAny(in.ID, "/\x00") || strings.HasPrefix(in.ID, ".") {
		return fmt.Errorf("record intent: sandbox id %q cannot name a file", in.ID)
	}
	data, err := json.Marshal(in)
	if err != nil {
		return err
	}
	p := b.journalPath(in.ID)
	if err := fsutil.WriteFileAtomic(p, data, 0o600); err != nil {
		return fmt.Errorf("record intent: %w", err)
	}
	return nil
}

// done deletes id's intent once its change is complete or undone.
func (b *Backend) done(id string) {
	if err := os.Remove(b.journalPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		b.log.Warn("intent left behind", "sandbox", id, "err", err)
	}
}

// Reconcile settles every change a previous process left half done: an
// interrupted prepare or remove ends with the disk gone; an interrupted
// attach, detach or flatten ends with the disk detached, its CoW data
// kept. Run it at start, before any disk operation.
func (b *Backend) Reconcile(ctx context.Context) error {
	ents, err := os.ReadDir(b.state)
	if err != nil {
		return fmt.Errorf("reconcile devmapper disks: %w", err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			// An intent never recorded: its change never began.
			os.Remove(filepath.Join(b.state, name))
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(b.state, name))
		if err != nil {
			errs = append(errs, fmt.Errorf("reconcile %s: %w", name, err))
			continue
		}
		var in intent
		if err := json.Unmarshal(data, &in); err != nil || in.ID+".json" != name {
			errs = append(errs, fmt.Errorf("reconcile %s: unreadable intent %q", name, data))
			continue
		}
		files := in.Op == opPrepare || in.Op == opRemove
		if err := b.rollback(ctx, in.ID, in.Dir, files); err != nil {
			errs = append(errs, fmt.Errorf("reconcile %s of %s: %w", in.Op, in.ID, err))
			continue
		}
		b.log.Info("reconciled interrupted disk change", "sandbox", in.ID, "op", in.Op, "disk_kept", !files)
		b.done(in.ID)
	}
	return errors.Join(errs...)
}

// lookPath is exec.LookPath, a variable for tests.
var lookPath = exec.LookPath

// Reclaim removes the dm devices of sandboxes keep.Sandboxes does not name,
// so startup reclaim can delete their directories: a device over a deleted
// CoW file would hold it forever. It counts sandboxes, not devices.
func (b *Backend) Reclaim(ctx context.Context, keep reclaim.Keep) (reclaim.Result, error) {
	n, err := b.reclaimDevices(ctx, keep.Sandboxes)
	return reclaim.Result{Found: n, Removed: n}, err
}

func (b *Backend) reclaimDevices(ctx context.Context, keep map[string]bool) (int, error) {
	names, err := Names(Prefix)
	if err != nil {
		return 0, fmt.Errorf("reclaim dm devices: %w", err)
	}
	ids := map[string]bool{}
	for _, n := range names {
		// An origin device belongs to the sandbox its name ends in.
		id := strings.TrimSuffix(strings.TrimPrefix(n, Prefix), "-origin")
		if !keep[id] {
			ids[id] = true
		}
	}
	var errs []error
	for id := range ids {
		b.log.Warn("removing orphaned dm devices", "sandbox", id)
		if err := b.detach(ctx, id, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return len(ids), errors.Join(errs...)
}
