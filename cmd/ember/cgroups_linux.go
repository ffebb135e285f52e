//go:build linux

package main

import (
	"fmt"
	"log/slog"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/config"
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

// cgroupsOf reads the cgroup settings (validated by config.Load).
func cgroupsOf(f config.Serve) cgroupFlags {
	return cgroupFlags{on: f.Cgroups, parent: f.CgroupParent, cpuPerVCPU: f.CPUPerVCPU, pids: f.PidsLimit, ioWeight: f.IOWeight}
}

// defaults returns the bounds the settings give every sandbox.
func (c *cgroupFlags) defaults() sandbox.ResourceDefaults {
	return sandbox.ResourceDefaults{CPUPerVCPU: c.cpuPerVCPU, Pids: c.pids, IOWeight: c.ioWeight}
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
