//go:build linux

package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/sandbox"
)

// cgroupFlags set the default bounds of every sandbox's cgroup.
type cgroupFlags struct {
	on         bool
	parent     string
	cpuPerVCPU float64
	pids       int
	ioWeight   int
}

func (c *cgroupFlags) register(fl *pflag.FlagSet) {
	fl.BoolVar(&c.on, "cgroups", true, "give every running sandbox a cgroup bounding its VMM and helpers")
	fl.StringVar(&c.parent, "cgroup-parent", "", "parent of the sandboxes' cgroups (default ember/<hash of --data-dir>)")
	fl.Float64Var(&c.cpuPerVCPU, "cpu-per-vcpu", 1, "CPU time a sandbox may use per vCPU, in CPUs (its cgroup's quota)")
	fl.IntVar(&c.pids, "pids-limit", 512, "processes and threads a sandbox's VMM and helpers may have")
	fl.IntVar(&c.ioWeight, "io-weight", 100, "block I/O weight of a sandbox, 10 to 1000, where the host's I/O scheduler has weights")
}

// defaults returns the bounds the flags set.
func (c *cgroupFlags) defaults() (sandbox.ResourceDefaults, error) {
	switch {
	case c.cpuPerVCPU <= 0:
		return sandbox.ResourceDefaults{}, fmt.Errorf("--cpu-per-vcpu %g: must be above 0", c.cpuPerVCPU)
	case c.pids < 16:
		return sandbox.ResourceDefaults{}, fmt.Errorf("--pids-limit %d: a VMM needs at least 16", c.pids)
	case c.ioWeight < 10 || c.ioWeight > 1000:
		return sandbox.ResourceDefaults{}, fmt.Errorf("--io-weight %d: must be between 10 and 1000", c.ioWeight)
	}
	return sandbox.ResourceDefaults{CPUPerVCPU: c.cpuPerVCPU, Pids: c.pids, IOWeight: c.ioWeight}, nil
}

// manager returns the cgroup manager, nil with --cgroups=false.
func (c *cgroupFlags) manager(dataDir string, log *slog.Logger) (*cgroup.Manager, error) {
	if !c.on {
		return nil, nil
	}
	parent := c.parent
	if parent == "" {
		parent = cgroup.ParentFor(dataDir)
	}
	m, err := cgroup.New(parent, log)
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w (pass --cgroups=false to run sandboxes unbounded)", err)
	}
	return m, nil
}

// cgroupMeasures says which controllers bound sandboxes, for `ember info`.
func cgroupMeasures(m *cgroup.Manager) []client.Confinement {
	if m == nil {
		return []client.Confinement{{Name: "cgroups", Detail: "off by configuration (--cgroups=false): sandboxes are bounded by their vCPUs and RAM only"}}
	}
	var out []client.Confinement
	for _, x := range m.Measures() {
		out = append(out, client.Confinement{Name: x.Name, On: x.On, Detail: x.Detail})
	}
	return out
}
