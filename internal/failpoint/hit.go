//go:build !failpoints

package failpoint

// Enabled says whether this binary has its failpoints compiled in.
const Enabled = false

// Hit does nothing: failpoints are compiled in only under the
// "failpoints" build tag.
func Hit(string) {}
