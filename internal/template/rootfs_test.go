package template

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

func TestRootfsKey(t *testing.T) {
	base := rootfsKey("k", "a", "b", "s", 1<<30)
	tests := []struct {
		name                         string
		kernel, agent, busybox, bash string
		size                         int64
		same                         bool
	}{
		{"same inputs", "k", "a", "b", "s", 1 << 30, true},
		{"kernel rebuilt", "k2", "a", "b", "s", 1 << 30, false},
		{"agent changed", "k", "a2", "b", "s", 1 << 30, false},
		{"busybox upgraded", "k", "a", "b2", "s", 1 << 30, false},
		{"bash upgraded", "k", "a", "b", "s2", 1 << 30, false},
		{"size changed", "k", "a", "b", "s", 2 << 30, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := rootfsKey(tc.kernel, tc.agent, tc.busybox, tc.bash, tc.size)
			if (got == base) != tc.same {
				t.Fatalf("key equal to base = %v, want %v", got == base, tc.same)
			}
		})
	}
}

// stagedTree stages the recipe with fake binaries and the given applets.
func stagedTree(t *testing.T, applets []string) string {
	t.Helper()
	root := t.TempDir()
	if err := stage(root, recipe([]byte("agent-binary"), []byte("busybox-binary"), []byte("bash-binary"), applets)); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestStage(t *testing.T) {
	root := stagedTree(t, []string{"bin/sh", "sbin/init", "usr/bin/env", "usr/share/odd/applet", "bin/busybox", "linuxrc"})
	tests := []struct {
		path   string
		mode   fs.FileMode
		target string // symlinks
		holds  string // substring of file contents
	}{
		{path: "bin/busybox", mode: 0o755, holds: "busybox-binary"},
		{path: "bin/bash", mode: 0o755, holds: "bash-binary"},
		{path: "usr/bin/ember-agent", mode: 0o755, holds: "agent-binary"},
		{path: "etc/inittab", mode: 0o644, holds: "::respawn:/usr/bin/ember-agent\n"},
		{path: "etc/init.d/rcS", mode: 0o755, holds: `echo "ember-guest: ready"`},
		{path: "etc/passwd", mode: 0o644, holds: "root:x:0:0:root:/root:/bin/sh\n"},
		{path: "etc/passwd", mode: 0o644, holds: "user:x:1000:1000:user:/home/user:/bin/bash\n"},
		{path: "etc/group", mode: 0o644, holds: "nogroup:x:65534:"},
		{path: "etc/hosts", mode: 0o644, holds: "localhost"},
		{path: "etc/resolv.conf", mode: 0o644, holds: "nameserver "},
		{path: "etc/hostname", mode: 0o644, holds: "ember\n"},
		{path: "tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{path: "var/tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{path: "root", mode: fs.ModeDir | 0o700},
		{path: "home/user", mode: fs.ModeDir | 0o755},
		{path: "proc", mode: fs.ModeDir | 0o555},
		{path: "bin/sh", mode: fs.ModeSymlink, target: "/bin/busybox"},
		{path: "sbin/init", mode: fs.ModeSymlink, target: "/bin/busybox"},
		{path: "usr/bin/env", mode: fs.ModeSymlink, target: "/bin/busybox"},
		{path: "linuxrc", mode: fs.ModeSymlink, target: "/bin/busybox"},
		{path: "usr/share/odd", mode: fs.ModeDir | 0o755},
		{path: "usr/share/odd/applet", mode: fs.ModeSymlink, target: "/bin/busybox"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			p := filepath.Join(root, tc.path)
			st, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if tc.mode&fs.ModeSymlink != 0 {
				target, err := os.Readlink(p)
				if err != nil || target != tc.target {
					t.Fatalf("link -> %q, %v; want %q", target, err, tc.target)
				}
				return
			}
			if st.Mode() != tc.mode {
				t.Errorf("mode = %v, want %v", st.Mode(), tc.mode)
			}
			if tc.holds != "" {
				b, err := os.ReadFile(p)
				if err != nil || !strings.Contains(string(b), tc.holds) {
					t.Errorf("contents %q do not hold %q (%v)", b, tc.holds, err)
				}
			}
		})
	}
}

func TestInit(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(inittab), "\n")
	var sysinit, agent int
	for _, l := range lines {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.Count(l, ":") < 3 {
			t.Errorf("inittab line %q is not id:runlevels:action:process", l)
		}
		if strings.Contains(l, "getty") {
			t.Errorf("inittab starts a getty: %q", l)
		}
		switch l {
		case "::sysinit:/etc/init.d/rcS":
			sysinit++
		case "::respawn:" + AgentPath:
			agent++
		}
	}
	if sysinit != 1 || agent != 1 {
		t.Fatalf("inittab has %d sysinit and %d agent lines, want 1 each:\n%s", sysinit, agent, inittab)
	}
	for _, want := range []string{"mount -a", "mkdir -p /dev/pts", "hostname -F /etc/hostname", "ip link set lo up", "echo \"" + ReadyMarker + "\""} {
		if !strings.Contains(rcS, want) {
			t.Errorf("rcS lacks %q", want)
		}
	}
	mounts := map[string]string{}
	for _, l := range strings.Split(fstab, "\n") {
		if f := strings.Fields(l); len(f) == 6 && !strings.HasPrefix(l, "#") {
			mounts[f[1]] = f[2]
		}
	}
	for dir, fstype := range map[string]string{"/proc": "proc", "/sys": "sysfs", "/dev/pts": "devpts", "/tmp": "tmpfs", "/run": "tmpfs"} {
		if mounts[dir] != fstype {
			t.Errorf("fstab mounts %q on %s, want %s", mounts[dir], dir, fstype)
		}
	}
}

func TestStageRealBusybox(t *testing.T) {
	testutil.RequireTool(t, "busybox")
	applets, err := busyboxApplets(context.Background(), hostBusybox)
	if err != nil {
		t.Fatal(err)
	}
	root := stagedTree(t, applets)
	for _, a := range []string{"bin/sh", "sbin/init", "bin/mount", "bin/hostname"} {
		if target, err := os.Readlink(filepath.Join(root, a)); err != nil || target != hostBusybox {
			t.Errorf("%s -> %q, %v; want %s", a, target, err, hostBusybox)
		}
	}
	// ip may live in bin or sbin depending on the busybox build.
	if _, err := exec.LookPath(filepath.Join(root, "sbin/ip")); err != nil {
		if _, err := os.Lstat(filepath.Join(root, "bin/ip")); err != nil {
			t.Errorf("busybox provides no ip applet; rcS needs it")
		}
	}
}

func TestMakeExt4(t *testing.T) {
	testutil.RequireTool(t, "mkfs.ext4")
	testutil.RequireTool(t, "debugfs")
	root := stagedTree(t, []string{"bin/sh", "sbin/init"})
	image := filepath.Join(t.TempDir(), "rootfs.ext4")
	const size = 32 << 20
	if err := makeExt4(context.Background(), root, image, size); err != nil {
		t.Fatal(err)
	}
	allocated, apparent, err := usage(image)
	if err != nil {
		t.Fatal(err)
	}
	if apparent != size || allocated >= apparent {
		t.Errorf("image size %d allocated %d; want apparent %d and sparse", apparent, allocated, size)
	}
	tests := []struct {
		cmd  string
		want string
	}{
		{"stat /usr/bin/ember-agent", "Mode:  0755"},
		{"stat /tmp", "Mode:  01777"},
		{"cat /etc/inittab", "::respawn:/usr/bin/ember-agent"},
		{"stat /sbin/init", `Fast link dest: "/bin/busybox"`},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			out, err := exec.Command("debugfs", "-R", tc.cmd, image).CombinedOutput()
			if err != nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("debugfs -R %q: %v\n%s\nwant %q", tc.cmd, err, out, tc.want)
			}
		})
	}
	out, err := exec.Command("dumpe2fs", "-h", image).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Filesystem volume name:   "+rootfsLabel) {
		t.Errorf("dumpe2fs: %v: label missing\n%s", err, out)
	}
}
