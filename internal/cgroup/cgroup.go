//go:build linux

// Package cgroup gives each sandbox a cgroup of its own, which holds its
// VMM and any helper process (a page server), bounds their CPU, memory,
// processes and block I/O (resource.Limits), and reads back what they use.
// It drives whichever hierarchy holds the controllers through containerd's
// cgroups library: cgroup v1 on a legacy or hybrid host (v2 mounted beside
// v1, as many hosts still run), v2 on a unified one. A controller the host
// does not offer is left out and said so (Measures), never faked.
//
// Every daemon has a parent group of its own (Config.Parent); a sandbox's
// group is <parent>/<sandbox id>, so start-up reclaim removes exactly this
// daemon's orphans.
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/resource"
)

// Root is where the cgroup file systems are mounted.
const Root = "/sys/fs/cgroup"

// cpuPeriod is the CFS period quotas are written against, in µs.
const cpuPeriod = 100000

// Controllers a sandbox's group uses, by their v1 names.
const (
	CPU    = "cpu"
	Memory = "memory"
	Pids   = "pids"
	Blkio  = "blkio"
)

// ErrUnavailable is returned for a host with no cgroup controller ember
// can use.
var ErrUnavailable = errors.New("no usable cgroup controller")

// Manager makes, fills, reads and removes sandboxes' groups.
type Manager struct {
	log    *slog.Logger
	parent string
	// v2 is set on a unified host.
	v2 bool
	// v1 holds the v1 controllers in use (cpu, cpuacct, memory, pids,
	// blkio where present).
	v1 []cgroup1.Subsystem
	// off says, by controller, why it is not used.
	off map[string]string
	// blkioWeight says the v1 blkio controller has its weight file.
	blkioWeight bool
	hierarchy   string
}

// New finds the controllers this host offers for groups under parent (a
// relative path such as "ember/3f2a9c1b").
func New(parent string, log *slog.Logger) (*Manager, error) {
	parent = strings.Trim(filepath.Clean("/"+parent), "/")
	if parent == "" || parent == "." {
		return nil, fmt.Errorf("cgroup parent %q: want a relative path", parent)
	}
	m := &Manager{log: log, parent: parent, off: map[string]string{}}
	switch cgroups.Mode() {
	case cgroups.Unified:
		m.v2, m.hierarchy = true, "v2 (unified)"
		if err := m.probeV2(); err != nil {
			return nil, err
		}
	case cgroups.Hybrid:
		m.hierarchy = "v1 (hybrid: the v2 hierarchy beside it has no controllers to give)"
		m.probeV1()
	case cgroups.Legacy:
		m.hierarchy = "v1 (legacy)"
		m.probeV1()
	default:
		return nil, fmt.Errorf("no cgroup hierarchy mounted at %s: %w", Root, ErrUnavailable)
	}
	if len(m.off) == 4 {
		return nil, fmt.Errorf("%s: %s: %w", m.hierarchy, m.offReasons(), ErrUnavailable)
	}
	return m, nil
}

func (m *Manager) offReasons() string {
	var parts []string
	for _, c := range []string{CPU, Memory, Pids, Blkio} {
		if why, ok := m.off[c]; ok {
			parts = append(parts, c+": "+why)
		}
	}
	return strings.Join(parts, "; ")
}

// probeV1 picks the v1 controllers that are mounted.
func (m *Manager) probeV1() {
	mounted := func(name string) bool {
		_, err := os.Stat(filepath.Join(Root, name, "cgroup.procs"))
		return err == nil
	}
	if mounted(CPU) {
		m.v1 = append(m.v1, cgroup1.NewCpu(Root))
	} else {
		m.off[CPU] = "the v1 cpu controller is not mounted"
	}
	if mounted("cpuacct") {
		m.v1 = append(m.v1, cgroup1.NewCpuacct(Root))
	}
	if mounted(Memory) {
		m.v1 = append(m.v1, cgroup1.NewMemory(Root))
	} else {
		m.off[Memory] = "the v1 memory controller is not mounted"
	}
	if mounted(Pids) {
		m.v1 = append(m.v1, cgroup1.NewPids(Root))
	} else {
		m.off[Pids] = "the v1 pids controller is not mounted"
	}
	switch {
	case !mounted(Blkio):
		m.off[Blkio] = "the v1 blkio controller is not mounted"
	default:
		m.v1 = append(m.v1, cgroup1.NewBlkio(Root))
		if _, err := os.Stat(filepath.Join(Root, Blkio, "blkio.weight")); err == nil {
			m.blkioWeight = true
		} else {
			m.off[Blkio] = "no blkio.weight: proportional I/O weights need the BFQ scheduler with its v1 weight file, and the " +
				"host's disks use " + schedulers() + " (I/O is still accounted)"
		}
	}
}

// schedulers lists the I/O scheduler in force on each disk.
func schedulers() string {
	files, _ := filepath.Glob("/sys/block/*/queue/scheduler")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		if i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']'); i >= 0 && j > i {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(f)))+": "+s[i+1:j])
		}
	}
	if len(out) == 0 {
		return "no scheduler that says so"
	}
	return strings.Join(out, ", ")
}

// probeV2 checks which controllers the unified root offers.
func (m *Manager) probeV2() error {
	b, err := os.ReadFile(filepath.Join(Root, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("read cgroup v2 controllers: %w", err)
	}
	have := map[string]bool{}
	for _, c := range strings.Fields(string(b)) {
		have[c] = true
	}
	for v1, v2 := range map[string]string{CPU: "cpu", Memory: "memory", Pids: "pids", Blkio: "io"} {
		if !have[v2] {
			m.off[v1] = "the v2 root offers no " + v2 + " controller"
		}
	}
	return nil
}

// path is a sandbox's group, relative to a hierarchy's root.
func (m *Manager) path(id string) string { return "/" + m.parent + "/" + id }

// Path returns the directory of a sandbox's group under the memory
// controller (v1) or the unified hierarchy (v2), for people and tests.
func (m *Manager) Path(id string, controller string) string {
	if m.v2 {
		return filepath.Join(Root, m.path(id))
	}
	return filepath.Join(Root, controller, m.path(id))
}

// Create makes the sandbox's group with limits l; creating one that exists
// applies l to it.
func (m *Manager) Create(id string, l resource.Limits) error {
	if m.v2 {
		if _, err := cgroup2.NewManager(Root, m.path(id), m.v2Resources(l)); err != nil {
			return fmt.Errorf("create cgroup %s: %w", m.path(id), err)
		}
		return nil
	}
	if _, err := cgroup1.New(cgroup1.StaticPath(m.path(id)), m.v1Resources(l), m.hierarchyOpt()); err != nil {
		return fmt.Errorf("create cgroup %s: %w", m.path(id), err)
	}
	if !m.disabled(Memory) {
		// Charges made before a process is placed (a VMM's first
		// milliseconds) move with it.
		p := filepath.Join(Root, Memory, m.path(id), "memory.move_charge_at_immigrate")
		if err := os.WriteFile(p, []byte("3"), 0); err != nil {
			m.log.Debug("memory charges stay where they were made", "cgroup", m.path(id), "err", err)
		}
	}
	return nil
}

func (m *Manager) disabled(c string) bool { _, off := m.off[c]; return off }

func (m *Manager) hierarchyOpt() cgroup1.InitOpts {
	return cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return m.v1, nil })
}

func (m *Manager) v1Resources(l resource.Limits) *specs.LinuxResources {
	r := &specs.LinuxResources{}
	if l.CPUs > 0 && !m.disabled(CPU) {
		quota, period := int64(l.CPUs*cpuPeriod), uint64(cpuPeriod)
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if l.MemoryMiB > 0 && !m.disabled(Memory) {
		limit := int64(l.MemoryMiB) << 20
		r.Memory = &specs.LinuxMemory{Limit: &limit}
		if _, err := os.Stat(filepath.Join(Root, Memory, "memory.memsw.limit_in_bytes")); err == nil {
			// No swap beyond the limit.
			r.Memory.Swap = &limit
		}
	}
	if l.Pids > 0 && !m.disabled(Pids) {
		limit := int64(l.Pids)
		r.Pids = &specs.LinuxPids{Limit: &limit}
	}
	if l.IOWeight > 0 && m.blkioWeight {
		w := uint16(l.IOWeight)
		r.BlockIO = &specs.LinuxBlockIO{Weight: &w}
	}
	return r
}

func (m *Manager) v2Resources(l resource.Limits) *cgroup2.Resources {
	r := &cgroup2.Resources{}
	if l.CPUs > 0 && !m.disabled(CPU) {
		quota, period := int64(l.CPUs*cpuPeriod), uint64(cpuPeriod)
		r.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)}
	}
	if l.MemoryMiB > 0 && !m.disabled(Memory) {
		limit, none := int64(l.MemoryMiB)<<20, int64(0)
		r.Memory = &cgroup2.Memory{Max: &limit, Swap: &none}
	}
	if l.Pids > 0 && !m.disabled(Pids) {
		r.Pids = &cgroup2.Pids{Max: int64(l.Pids)}
	}
	if l.IOWeight > 0 && !m.disabled(Blkio) {
		r.IO = &cgroup2.IO{BFQ: cgroup2.BFQ{Weight: uint16(l.IOWeight)}}
	}
	return r
}

// Place moves process pid into the sandbox's group.
func (m *Manager) Place(id string, pid int) error {
	var err error
	if m.v2 {
		var g *cgroup2.Manager
		if g, err = cgroup2.Load(m.path(id)); err == nil {
			err = g.AddProc(uint64(pid))
		}
	} else {
		var g cgroup1.Cgroup
		if g, err = cgroup1.Load(cgroup1.StaticPath(m.path(id)), m.hierarchyOpt()); err == nil {
			err = g.AddProc(uint64(pid))
		}
	}
	if err != nil {
		return fmt.Errorf("place pid %d in cgroup %s: %w", pid, m.path(id), err)
	}
	return nil
}

// Remove deletes the sandbox's group; one that is gone is success. It
// fails while a process is still in it.
func (m *Manager) Remove(id string) error {
	var errs []error
	for _, dir := range m.dirs(id) {
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", m.path(id), err)
	}
	return nil
}

// dirs are the sandbox's group's directories, one per hierarchy in use.
func (m *Manager) dirs(id string) []string {
	if m.v2 {
		return []string{filepath.Join(Root, m.path(id))}
	}
	var out []string
	for _, s := range m.v1 {
		out = append(out, filepath.Join(Root, string(s.Name()), m.path(id)))
	}
	return out
}

// Usage reads what the sandbox's processes use.
func (m *Manager) Usage(id string) (resource.Usage, error) {
	var u resource.Usage
	if m.v2 {
		g, err := cgroup2.Load(m.path(id))
		if err != nil {
			return u, fmt.Errorf("read cgroup %s: %w", m.path(id), err)
		}
		st, err := g.Stat()
		if err != nil {
			return u, fmt.Errorf("read cgroup %s: %w", m.path(id), err)
		}
		if st.CPU != nil {
			u.CPUNanos = st.CPU.UsageUsec * 1000
		}
		if st.Memory != nil {
			u.MemoryBytes, u.MemoryPeakBytes = st.Memory.Usage, st.Memory.MaxUsage
		}
		if st.Pids != nil {
			u.Pids = st.Pids.Current
		}
		return u, nil
	}
	g, err := cgroup1.Load(cgroup1.StaticPath(m.path(id)), m.hierarchyOpt())
	if err != nil {
		return u, fmt.Errorf("read cgroup %s: %w", m.path(id), err)
	}
	st, err := g.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return u, fmt.Errorf("read cgroup %s: %w", m.path(id), err)
	}
	if st.CPU != nil && st.CPU.Usage != nil {
		u.CPUNanos = st.CPU.Usage.Total
	}
	if st.Memory != nil && st.Memory.Usage != nil {
		u.MemoryBytes, u.MemoryPeakBytes = st.Memory.Usage.Usage, st.Memory.Usage.Max
	}
	if st.Pids != nil {
		u.Pids = st.Pids.Current
	}
	return u, nil
}

// Reclaim removes the groups under this daemon's parent that belong to no
// sandbox keep holds: what a daemon that died between a group's creation
// and its removal left. It runs after the processes step, which ends the
// processes such a group could still hold.
func (m *Manager) Reclaim(_ context.Context, keep reclaim.Keep) (reclaim.Result, error) {
	var res reclaim.Result
	orphans := map[string]bool{}
	for _, dir := range m.dirs("") {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return res, fmt.Errorf("list cgroups under %s: %w", dir, err)
		}
		for _, e := range ents {
			if e.IsDir() && !keep.Sandboxes[e.Name()] {
				orphans[e.Name()] = true
			}
		}
	}
	var errs []error
	for id := range orphans {
		res.Found++
		if err := m.Remove(id); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed++
	}
	return res, errors.Join(errs...)
}

// Close removes the daemon's parent group and its ancestors where they
// are empty (ember/<hash>, then ember): a daemon that stops with
// sandboxes running leaves them for the next start. What it cannot remove
// is in use, and is not an error.
func (m *Manager) Close() {
	for _, dir := range m.dirs("") {
		// dir is <hierarchy>/<parent>/: walk the parent's components up.
		d := filepath.Clean(dir)
		for range strings.Split(m.parent, "/") {
			if os.Remove(d) != nil {
				break
			}
			d = filepath.Dir(d)
		}
	}
}

// Measure is whether one controller bounds sandboxes here, and how or
// why not.
type Measure struct {
	Name   string
	On     bool
	Detail string
}

// Measures says which controllers bound sandboxes, on which hierarchy,
// and why any does not.
func (m *Manager) Measures() []Measure {
	var out []Measure
	for _, c := range []string{CPU, Memory, Pids, Blkio} {
		x := Measure{Name: "cgroup " + c, On: !m.disabled(c), Detail: m.hierarchy + ", " + m.parent + "/<sandbox>"}
		if why, off := m.off[c]; off {
			x.Detail = why
		}
		out = append(out, x)
	}
	return out
}

// Parent returns the daemon's parent group.
func (m *Manager) Parent() string { return m.parent }

// ParentFor names a daemon's parent group after its data directory, so
// that two daemons on one host never reclaim each other's groups.
func ParentFor(dataDir string) string {
	h := fnv.New32a()
	h.Write([]byte(filepath.Clean(dataDir)))
	return "ember/" + strconv.FormatUint(uint64(h.Sum32()), 16)
}
