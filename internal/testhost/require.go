package testhost

import (
	"os"
	"testing"
)

// EnvInside is set to 1 in the environment of tests run inside a test
// host.
const EnvInside = "EMBER_TESTHOST"

// Inside reports whether the running test is inside a test host.
func Inside() bool { return os.Getenv(EnvInside) == "1" }

// Require skips the test when err (a missing kernel feature, such as
// device-mapper) is not nil, naming it and the fix: the test-host tier runs
// the test instead. The skip is allowed even under EMBER_REQUIRE_ALL, since
// `make test` runs that tier too; inside a test host, where the feature
// must be there, it fails the test.
func Require(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if Inside() {
		t.Fatalf("the test host lacks what this test needs: %v", err)
	}
	t.Skipf("%v: not available on this host; `make test-host` runs this test inside a VM that has it", err)
}
