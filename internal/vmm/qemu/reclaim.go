//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

var (
	_ vmm.ProcessReclaimer = (*Driver)(nil)
	_ vmm.MemoryReclaimer  = (*Driver)(nil)
)

// memFilePattern matches the guest RAM files memPath names.
const memFilePattern = "ember-*.mem"

// ReclaimProcesses ends the QEMU processes an earlier daemon started for
// machines under keep.Dir that keep.PIDs does not hold: those whose
// command line carries the QMP socket of a directory directly under
// keep.Dir, the identity Attach checks. Each gets SIGTERM, then SIGKILL to
// its process group after a deadline. A process that merely names such a
// directory (an admin's tail of a console log) is not one of them.
func (d *Driver) ReclaimProcesses(_ context.Context, keep reclaim.Keep) (reclaim.Result, error) {
	res, err := vmmproc.Reclaim(keep, identity, d.reclaimWait, d.log)
	// And those an ember before this one started.
	lres, lerr := vmmproc.Reclaim(keep, legacyIdentity, d.reclaimWait, d.log)
	res.Found, res.Removed = res.Found+lres.Found, res.Removed+lres.Removed
	return res, errors.Join(err, lerr)
}

// ReclaimMemory deletes the guest RAM files in the driver's memory
// directory that no running process's command line names: what a QEMU that
// died while no daemon watched it leaves behind (Stop deletes the file of a
// machine it stops). It needs nothing of keep: a kept machine's QEMU names
// its file. Run it after ReclaimProcesses and before any machine starts: a
// restore fills its RAM file before QEMU runs. Found counts the orphaned
// files, Removed those deleted.
func (d *Driver) ReclaimMemory(_ context.Context, _ reclaim.Keep) (reclaim.Result, error) {
	var res reclaim.Result
	if d.memDir == "" {
		return res, nil
	}
	files, err := filepath.Glob(filepath.Join(d.memDir, memFilePattern))
	if err != nil || len(files) == 0 {
		return res, err
	}
	inUse, err := memPathsInUse()
	if err != nil {
		return res, err
	}
	var errs []error
	for _, f := range files {
		if inUse[f] {
			continue
		}
		res.Found++
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove orphaned guest memory %s: %w", f, err))
			continue
		}
		res.Removed++
	}
	return res, errors.Join(errs...)
}

// memPathsInUse returns the mem-path= values on running processes'
// command lines.
func memPathsInUse() (map[string]bool, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	inUse := make(map[string]bool)
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // exited meanwhile
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if p, ok := optValue(arg, "mem-path"); ok {
				inUse[p] = true
			}
		}
	}
	return inUse, nil
}

// optValue returns the value of key in a QEMU option string
// ("a=1,key=value,b=2", commas in values doubled).
func optValue(opts, key string) (string, bool) {
	// Split on single commas only: ",," is an escaped comma.
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(opts); i++ {
		if opts[i] == ',' {
			if i+1 < len(opts) && opts[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(opts[i])
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		if v, ok := strings.CutPrefix(p, key+"="); ok {
			return v, true
		}
	}
	return "", false
}
