//go:build linux

package firecracker

import (
	"testing"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// TestConformance runs the vmm suite's contract-level cases against the
// driver and the fake Firecracker.
func TestConformance(t *testing.T) {
	vmmtest.RunContract(t,
		func(t testing.TB) vmm.Driver {
			d, _ := fakeDriver(t.(*testing.T), Config{})
			return d
		},
		func(t testing.TB) vmm.Spec { return testSpec(t, "ember-tap-1") },
	)
}
