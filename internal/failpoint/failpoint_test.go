package failpoint

import (
	"strings"
	"testing"
)

func TestNamesAreUniqueAndShaped(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range All {
		op, step, ok := strings.Cut(n, "/")
		if !ok || op == "" || step == "" || strings.Contains(step, "/") {
			t.Errorf("failpoint %q is not <operation>/<step>", n)
		}
		if seen[n] {
			t.Errorf("failpoint %q twice", n)
		}
		seen[n] = true
	}
}

// Without the build tag a Hit of any name, armed or not, does nothing.
func TestHitIsANoOpWithoutTheTag(t *testing.T) {
	if Enabled {
		t.Skip("built with -tags failpoints")
	}
	t.Setenv(Env, CreateRecord)
	Hit(CreateRecord)
}
