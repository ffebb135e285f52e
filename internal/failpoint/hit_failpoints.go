//go:build failpoints

package failpoint

import (
	"os"
	"strings"
	"syscall"
)

// armed is the failpoint $EMBER_FAILPOINT names, read once at start.
var armed = strings.TrimSpace(os.Getenv(Env))

// Enabled says whether this binary has its failpoints compiled in.
const Enabled = true

// Hit kills the process with SIGKILL when name is the armed failpoint:
// no deferred function, no cleanup and no buffered write runs, as in a
// crash.
func Hit(name string) {
	if armed == "" || name != armed {
		return
	}
	os.Stderr.WriteString("failpoint " + name + ": SIGKILL\n")
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; wait for it to land
}
