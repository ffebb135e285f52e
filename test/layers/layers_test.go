// Package layers holds the test that keeps ember's dependencies pointing one
// way: the HTTP layer, the /test page, the Go SDK and the CLI never import a
// package that touches the kernel, so they can change (and the CLI can be
// built for a laptop) without dragging netlink, nftables or a VMM along.
package layers

import (
	"os/exec"
	"strings"
	"testing"
)

// kernelFacing are import paths (prefixes) of packages that talk to the
// kernel: namespaces, links and rules, disk devices, userfaultfd, the VMMs.
var kernelFacing = []string{
	"github.com/emberhq/ember/internal/network",
	"github.com/emberhq/ember/internal/netns",
	"github.com/emberhq/ember/internal/rootfs/",
	"github.com/emberhq/ember/internal/memory",
	"github.com/emberhq/ember/internal/vmm/qemu",
	"github.com/emberhq/ember/internal/vmm/firecracker",
	"github.com/vishvananda/",
	"github.com/google/nftables",
	"github.com/mdlayher/netlink",
}

func TestUpperLayersTouchNoKernel(t *testing.T) {
	for _, tc := range []struct {
		pkg, goos string
	}{
		{"github.com/emberhq/ember/internal/api", "linux"},
		{"github.com/emberhq/ember/web", "linux"},
		{"github.com/emberhq/ember/client", "linux"},
		{"github.com/emberhq/ember/wire", "linux"},
		{"github.com/emberhq/ember/internal/slot", "linux"},
		// The CLI as built where no daemon runs.
		{"github.com/emberhq/ember/cmd/ember", "darwin"},
	} {
		t.Run(tc.pkg+"@"+tc.goos, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", tc.pkg)
			cmd.Env = append(cmd.Environ(), "GOOS="+tc.goos, "GOARCH=arm64")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("go list: %v\n%s", err, out)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, bad := range kernelFacing {
					if strings.HasPrefix(dep, bad) {
						t.Errorf("%s imports %s, which touches the kernel", tc.pkg, dep)
					}
				}
			}
		})
	}
}
