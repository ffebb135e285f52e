// Package testutil holds helpers shared by ember's tests: skips that name the
// reason and the fix, and the EMBER_REQUIRE_ALL switch CI uses to turn those
// skips into failures.
package testutil

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
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

// RequireKVM skips the test unless /dev/kvm can be opened. It never fails,
// even under EMBER_REQUIRE_ALL: most CI machines have no KVM.
func RequireKVM(t testing.TB) {
	t.Helper()
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		skip(t, false, "no usable /dev/kvm ("+err.Error()+"): run on a KVM host")
		return
	}
	unix.Close(fd)
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
