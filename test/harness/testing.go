package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

// ForTest starts a daemon for one test from bin/ember ($EMBER_BIN) and the
// built default template ($EMBER_TEST_TEMPLATE), skipping (or failing under
// EMBER_REQUIRE_ALL) where they, root or QEMU are missing. Bin, Templates,
// DataDir and Log of o are filled in. At cleanup it destroys every sandbox,
// stops the daemon, fails the test on anything left in the span slots from
// o.SlotFirst, and puts the daemon's log into a failed test's log.
func ForTest(t testing.TB, o Options, span int) *Daemon {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	bin := testutil.RequireEnv(t, "EMBER_BIN", "run through `make test`, which builds bin/ember")
	guest := testutil.Guest(t)
	logf, err := os.CreateTemp("", "ember-test-*.log")
	if err != nil {
		t.Fatal(err)
	}
	o.Bin, o.Templates, o.DataDir, o.Log = bin, filepath.Dir(filepath.Dir(guest.Kernel)), t.TempDir(), logf
	if o.SlotCount == 0 {
		o.SlotCount = span
	}
	d, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.DestroyAll(context.Background()); err != nil {
			t.Errorf("destroy all: %v", err)
		}
		if err := d.Stop(); err != nil {
			t.Error(err)
		}
		if leaks := append(d.Leaks(span), CgroupParents(d.DataDir)...); len(leaks) > 0 {
			t.Errorf("leaked: %v", leaks)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("daemon log:\n%s", Tail(string(b), 60))
		}
		logf.Close()
		os.Remove(logf.Name())
	})
	return d
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// RunKeepingHost runs a test binary's tests (from TestMain) and then removes
// the host's nftables table that the tests' daemons created, if there was
// none before: a daemon leaves its table for its next start, but a test run
// leaves the host as it found it.
func RunKeepingHost(m *testing.M) int {
	had := exec.Command("nft", "list", "table", "inet", "ember").Run() == nil
	code := m.Run()
	if !had {
		exec.Command("nft", "delete", "table", "inet", "ember").Run()
	}
	return code
}
