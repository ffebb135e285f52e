package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

// ForTest starts a daemon for one test from bin/ember ($EMBER_BIN) and the
// built default template ($EMBER_TEST_TEMPLATE), skipping (or failing under
// EMBER_REQUIRE_ALL) where they, root or QEMU are missing. Bin, DataDir
// and Log of o are filled in, and Templates unless set. At cleanup it destroys every sandbox,
// stops the daemon, fails the test on anything left in the span slots from
// o.SlotFirst, and puts the daemon's log into a failed test's log.
func ForTest(t testing.TB, o Options, span int) *Daemon {
	t.Helper()
	h := Require(t)
	logf, err := os.CreateTemp("", "ember-test-*.log")
	if err != nil {
		t.Fatal(err)
	}
	o.Bin, o.DataDir, o.Log = h.Bin, t.TempDir(), logf
	if o.Templates == "" {
		o.Templates = h.Templates
	}
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

// Host is what a test that runs bin/ember needs of this machine.
type Host struct {
	// Bin is bin/ember ($EMBER_BIN); Guest the default template's kernel
	// and root image; Templates the registry holding it.
	Bin       string
	Guest     testutil.GuestImage
	Templates string
}

// Require skips a test that runs bin/ember on this host where root, QEMU,
// $EMBER_BIN or the built default template are missing (or fails it under
// EMBER_REQUIRE_ALL), and returns them.
func Require(t testing.TB) Host {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64")
	bin := testutil.RequireEnv(t, "EMBER_BIN", "run through `make test`, which builds bin/ember")
	guest := testutil.Guest(t)
	return Host{Bin: bin, Guest: guest, Templates: filepath.Dir(filepath.Dir(guest.Kernel))}
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

// ForBench starts a daemon for a benchmark command (name, as in its
// messages) on a data directory and log of its own, filling in DataDir and
// Log of o, and returns it with the function that ends it: that destroys
// every sandbox, stops the daemon, reports anything left in its slots,
// prints the end of the daemon's log when runErr is set (the daemon's side
// of the failure), and removes both.
func ForBench(ctx context.Context, name string, o Options) (_ *Daemon, stop func(runErr error), err error) {
	dataDir, err := os.MkdirTemp("/var/tmp", "ember-"+name+"-*")
	if err != nil {
		return nil, nil, err
	}
	logf, err := os.CreateTemp("", "ember-"+name+"-*.log")
	if err != nil {
		os.RemoveAll(dataDir)
		return nil, nil, err
	}
	o.DataDir, o.Log = dataDir, logf
	if o.SlotCount == 0 {
		o.SlotCount = 100
	}
	d, err := Start(ctx, o)
	stop = func(runErr error) {
		if d != nil {
			d.DestroyAll(context.WithoutCancel(ctx))
			d.Stop()
			if leaks := d.Leaks(o.SlotCount); len(leaks) > 0 {
				fmt.Fprintf(os.Stderr, "%s: leaked: %v\n", name, leaks)
			}
		}
		if runErr != nil {
			if b, rerr := os.ReadFile(logf.Name()); rerr == nil {
				fmt.Fprintf(os.Stderr, "%s: daemon log:\n%s\n", name, Tail(string(b), 60))
			}
		}
		logf.Close()
		os.Remove(logf.Name())
		os.RemoveAll(dataDir)
	}
	if err != nil {
		stop(err)
		return nil, nil, err
	}
	return d, stop, nil
}

// PrivateTemplates returns a template registry of the test's own holding
// the default template (hard links of the shared one's files): a daemon
// that builds templates writes them there, never into the registry other
// tests share.
func PrivateTemplates(t testing.TB) string {
	t.Helper()
	h := Require(t)
	dir := t.TempDir()
	if err := LinkDefaultTemplate(h.Templates, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// LinkDefaultTemplate puts the default template of registry src into
// registry dst as hard links of its files (a build never writes into a
// published template's files: it publishes new ones).
func LinkDefaultTemplate(src, dst string) error {
	from, to := filepath.Join(src, "base"), filepath.Join(dst, "base")
	if err := os.Mkdir(to, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Link(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			return fmt.Errorf("link the default template: %w", err)
		}
	}
	return nil
}

// FreeAddr returns a loopback address with a port nothing listens on, for
// a daemon's second listener.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
