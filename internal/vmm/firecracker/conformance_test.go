//go:build linux

package firecracker

import (
	"testing"

	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmtest"
)

// TestConformance runs the vmm suite against the driver and the fake
// Firecracker, which boots no guest: the contract cases. TestLive runs the
// whole suite on a real Firecracker.
func TestConformance(t *testing.T) {
	vmmtest.Run(t, vmmtest.Suite{
		New: func(t testing.TB) vmm.Driver {
			d, _ := fakeDriver(t.(*testing.T), Config{})
			return d
		},
		NewSpec: func(t testing.TB) vmm.Spec { return testSpec(t, "ember-tap-1") },
	})
}
