//go:build linux

package vmmproc

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/vmm"
)

// Identity is what only the VMM of one machine carries on its command
// line: Flag, directly followed by Value. Each driver has its own rule
// (QEMU: "-chardev" and its QMP socket, which names the machine's
// directory; Firecracker: "--api-sock" and its socket in that directory,
// or "--id" and the jail's id), and Attach and ReclaimProcesses both go by
// it. It must be an argument the driver put there for that machine alone:
// a path merely under the machine's directory is on an admin's
// `tail -f <dir>/console.log` too.
type Identity struct{ Flag, Value string }

// In reports whether the command line args carries id.
func (id Identity) In(args []string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == id.Flag && args[i+1] == id.Value {
			return true
		}
	}
	return false
}

// String returns the pair as it stands on a command line.
func (id Identity) String() string { return id.Flag + " " + id.Value }

// Cmdline returns pid's command line, split into its arguments. It fails
// with vmm.ErrNotRunning when the process is gone.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, fmt.Errorf("read command line of %d: %w", pid, vmm.ErrNotRunning)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}

// Reclaim ends one driver's orphaned VMMs: every process that carries the
// identity of a machine directory directly under keep.Dir and whose pid
// keep.PIDs does not hold. identity gives a machine's identity from a spec
// naming the directory, with the directory's name as its ID (the daemon
// names a sandbox's directory after its id). Each orphan is adopted as
// Attach adopts a VMM, then sent SIGTERM and, when it has not exited within
// term, SIGKILL, both to its process group; all of them at once, so that
// orphans that ignore SIGTERM cost one deadline, not one each. Found counts
// the orphans, Removed those that are gone.
//
// Reclaim is a release and runs to its end: it takes no context.
func Reclaim(keep reclaim.Keep, identity func(vmm.Spec) Identity, term time.Duration, log *slog.Logger) (reclaim.Result, error) {
	var res reclaim.Result
	ents, err := os.ReadDir(keep.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	} else if err != nil {
		return res, fmt.Errorf("read %s: %w", keep.Dir, err)
	}
	machines := make(map[Identity]vmm.Spec, len(ents))
	for _, e := range ents {
		if e.IsDir() {
			spec := vmm.Spec{ID: e.Name(), Dir: filepath.Join(keep.Dir, e.Name())}
			machines[identity(spec)] = spec
		}
	}
	if len(machines) == 0 {
		return res, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return res, fmt.Errorf("list processes: %w", err)
	}
	type orphan struct {
		spec vmm.Spec
		p    *Process
	}
	var orphans []orphan
	var errs []error
	self := os.Getpid()
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || keep.PIDs[pid] {
			continue
		}
		args, err := Cmdline(pid)
		if err != nil {
			continue // exited meanwhile
		}
		id, spec, ok := find(args, machines)
		if !ok {
			continue
		}
		p, err := Adopt(pid, id, nil)
		if errors.Is(err, vmm.ErrNotRunning) {
			continue // exited meanwhile
		}
		res.Found++
		if err != nil {
			errs = append(errs, fmt.Errorf("adopt vmm of %s: %w", spec.ID, err))
			continue
		}
		orphans = append(orphans, orphan{spec, p})
	}
	var wg sync.WaitGroup
	ended := make([]error, len(orphans))
	for i, o := range orphans {
		wg.Go(func() {
			how, err := o.p.Terminate(term)
			if err != nil {
				o.p.Release()
				ended[i] = fmt.Errorf("end orphaned vmm of %s: %w", o.spec.ID, err)
				return
			}
			log.Info("ended orphaned vmm", "sandbox", o.spec.ID, "pid", o.p.PID(), "how", how,
				"cmdline", strings.Join(o.p.Args(), " "))
		})
	}
	wg.Wait()
	for _, err := range ended {
		if err == nil {
			res.Removed++
		}
	}
	return res, errors.Join(append(errs, ended...)...)
}

// find returns the identity from machines that args carries, and its
// machine.
func find(args []string, machines map[Identity]vmm.Spec) (Identity, vmm.Spec, bool) {
	for i := 0; i+1 < len(args); i++ {
		id := Identity{args[i], args[i+1]}
		if spec, ok := machines[id]; ok {
			return id, spec, true
		}
	}
	return Identity{}, vmm.Spec{}, false
}
