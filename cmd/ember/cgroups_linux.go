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

// cgroupDefaults returns the bounds the settings (validated by
// config.Load) give every sandbox's cgroup.
func cgroupDefaults(f config.Serve) sandbox.ResourceDefaults {
	return sandbox.ResourceDefaults{CPUPerVCPU: f.CPUPerVCPU, Pids: f.PidsLimit, IOWeight: f.IOWeight}
}

// cgroupManager returns the cgroup manager, nil with cgroups = false.
func cgroupManager(f config.Serve, log *slog.Logger) (*cgroup.Manager, error) {
	if !f.Cgroups {
		return nil, nil
	}
	parent := f.CgroupParent
	if parent == "" {
		parent = cgroup.ParentFor(f.DataDir)
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
