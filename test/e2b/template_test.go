package e2b

import (
	"os"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// slotTemplates is the first network slot of the template build test's
// daemon (5560 up, 40 of them).
const slotTemplates = 5560

// TestTemplateBuild runs template.test.mjs: the pinned SDK's
// Template.build() builds a template on the daemon (its definition
// translated into ember's build steps, a COPY's files uploaded to the
// daemon), Sandbox.create() from it runs a command, a rebuild reuses every
// step and a failing step fails the build E2B's way. Only the pinned SDK:
// the older ones' Template (2.0.1) or its absence (1.x) is another API.
func TestTemplateBuild(t *testing.T) {
	harness.Require(t)
	testutil.RequireTool(t, "node")
	if _, err := os.Stat("node_modules/e2b/package.json"); err != nil {
		t.Skipf("test/e2b/node_modules/e2b missing (%v): run `make npm`", err)
	}
	// The daemon builds into a registry of the test's own.
	d := harness.ForTest(t, harness.Options{SlotFirst: slotTemplates, Templates: harness.PrivateTemplates(t)}, 40)
	env := append(withoutE2B(os.Environ()), "E2B_API_KEY="+d.APIKey, "E2B_API_URL="+d.URL, "E2B_SANDBOX_URL="+d.URL)
	runNode(t, ".", "template.test.mjs", env)
}
