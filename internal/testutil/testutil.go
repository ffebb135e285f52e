// Package testutil holds helpers shared by ember's tests: skips that name the
// reason and the fix, and the EMBER_REQUIRE_ALL switch CI uses to turn those
// skips into failures.
package testutil

import (
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"testing"

	"github.com/emberhq/ember/internal/vmm/accel"
)

// requireAll reports whether skips for missing prerequisites must fail the
// test instead (CI sets EMBER_REQUIRE_ALL=1 so a missing install step cannot
// hide behind a skip).
func requireAll() bool { return os.Getenv("EMBER_REQUIRE_ALL") == "1" }

func skip(t testing.TB, strict bool, msg string) {
	t.Helper()
	if strict && requireAll() {
		t.Fatalf("%s (EMBER_REQUIRE_ALL=1 forbids this skip)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, true, "needs root: run the privileged tier with sudo (make test does)")
	}
}

// RequireTool skips the test unless the named program is on PATH.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		skip(t, true, name+" not on PATH: run `make deps` to install it")
	}
}

// RequireKVM skips the test unless the accelerator probe's verdict for the
// test's guest kernel is KVM: tests choose the accelerator through the same
// code as the daemon, never by opening /dev/kvm themselves. It never
// fails, even under EMBER_REQUIRE_ALL: most CI machines have no KVM that
// boots ember's kernel.
func RequireKVM(t testing.TB, v accel.Verdict) {
	t.Helper()
	if v.Accel != accel.KVM {
		skip(t, false, "KVM does not run this kernel here ("+v.Reason+"): run on a KVM host")
	}
}

// RequireEnv skips the test unless the environment variable is set; fix tells
// how to set it.
func RequireEnv(t testing.TB, name, fix string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		skip(t, true, name+" not set: "+fix)
	}
	return v
}

// Digest returns the SHA-256 of the file at path: what a test compares to
// tell that a file stayed as it was.
func Digest(t testing.TB, path string) [sha256.Size]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}
