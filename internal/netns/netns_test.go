//go:build linux

package netns

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/testutil"
)

// childEnv marks the re-executed test binary that runs inside a private
// mount namespace.
const childEnv = "EMBER_NETNS_PLAIN_DIR_CHILD"

// TestCreateOnPlainDir starts from what a new machine has, a /run/netns that
// is a plain directory (made in a private mount namespace, on a tmpfs over
// /run, so the host's is untouched), creates a namespace, runs `ip netns add`
// for another, and checks both are listed and removable: ip's bind mount of
// the directory must not shadow the namespace made before it.
func TestCreateOnPlainDir(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip")
	if os.Getenv(childEnv) == "1" {
		plainDirChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCreateOnPlainDir$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(string(out), "both namespaces listed and removed") {
		t.Fatal("child did not get to the end")
	}
	for _, name := range []string{"embertest-plain-a", "embertest-plain-b"} {
		if Exists(name) {
			t.Errorf("%s leaked into the host's %s", name, Dir)
		}
	}
}

func plainDirChild(t *testing.T) {
	// Whatever the host has mounted at /run/netns goes, in this private
	// mount namespace only; the tmpfs then hides the host's /run.
	for unix.Unmount(Dir, unix.MNT_DETACH) == nil {
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount a private tmpfs on /run: %v", err)
	}
	if err := os.Mkdir(Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(t, Dir) {
		t.Fatalf("%s is a mount point before the test", Dir)
	}
	if err := Create("embertest-plain-a"); err != nil {
		t.Fatal(err)
	}
	if !isMountPoint(t, Dir) {
		t.Errorf("%s is not a mount point of its own after Create", Dir)
	}
	run(t, "ip", "netns", "add", "embertest-plain-b")
	list := run(t, "ip", "netns", "list")
	for _, name := range []string{"embertest-plain-a", "embertest-plain-b"} {
		if !strings.Contains(list, name) {
			t.Errorf("ip netns list does not show %s:\n%s", name, list)
		}
		if !IsMounted(Path(name)) {
			t.Errorf("%s is not a mounted namespace", Path(name))
		}
	}
	if err := Delete("embertest-plain-a"); err != nil {
		t.Errorf("delete the namespace made by Create: %v", err)
	}
	run(t, "ip", "netns", "delete", "embertest-plain-b")
	for _, name := range []string{"embertest-plain-a", "embertest-plain-b"} {
		if Exists(name) {
			t.Errorf("%s still exists after its removal", Path(name))
		}
	}
	if !t.Failed() {
		t.Log("both namespaces listed and removed")
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// isMountPoint reports whether path is the mount point of a mount, from
// /proc/self/mountinfo.
func isMountPoint(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// TestDeleteIsIdempotent removes a namespace twice and one that never was.
func TestDeleteIsIdempotent(t *testing.T) {
	testutil.RequireRoot(t)
	const name = "embertest-netns-del"
	if err := Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Delete(name) })
	if err := Create(name); !errors.Is(err, os.ErrExist) {
		t.Errorf("second Create: %v, want os.ErrExist", err)
	}
	for i := 0; i < 2; i++ {
		if err := Delete(name); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
	}
	if Exists(name) {
		t.Error("namespace still exists")
	}
}
