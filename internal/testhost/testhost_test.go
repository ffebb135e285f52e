//go:build linux

package testhost

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
)

// TestArchive checks the initramfs writer against cpio's own reading.
func TestArchive(t *testing.T) {
	testutil.RequireTool(t, "cpio")
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("from the host"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := archive{}
	a.file("init", 0o755, []byte("#!/bin/sh\n"))
	a.copyOf("/usr/sbin/tool", 0o755, src)
	a.symlink("bin/sh", "busybox")
	a.file("odd", 0o644, []byte("x")) // 1 byte: exercises padding
	dir := t.TempDir()
	img := filepath.Join(dir, "initrd.cpio")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.write(f, os.ReadFile); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := runner.RunIn(t.Context(), dir, nil, "sh", "-c", "mkdir x && cd x && cpio -id --quiet < ../initrd.cpio && find . | sort")
	if err != nil {
		t.Fatal(err)
	}
	want := ".\n./bin\n./bin/sh\n./init\n./odd\n./usr\n./usr/sbin\n./usr/sbin/tool\n"
	if string(out) != want {
		t.Errorf("archive lists\n%s\nwant\n%s", out, want)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "x", "usr", "sbin", "tool")); string(got) != "from the host" {
		t.Errorf("copied file reads %q", got)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "x", "bin", "sh")); l != "busybox" {
		t.Errorf("symlink points at %q", l)
	}
}

func TestInitScript(t *testing.T) {
	s := string(initScript([]string{"/lib/modules/loop.ko"}, []string{"A=it's"},
		Config{Run: "TestX", Timeout: 60e9}))
	for _, want := range []string{
		"insmod /lib/modules/loop.ko",
		`export 'A=it'\''s'`,
		"-test.run='TestX'",
		"-test.timeout=1m0s",
		`echo "` + ExitMarker + `$rc"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
}

// TestInside checks that the test host gives what it promises. It is
// itself a test-host test: it skips here.
func TestInside(t *testing.T) {
	var missing []string
	for _, p := range []string{"/dev/mapper/control", "/dev/loop-control", "/dev/nbd0", "/dev/kvm", "/dev/net/tun"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	var err error
	if len(missing) > 0 {
		err = fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	Require(t, err)
	if !Inside() {
		return
	}
	// Nested virtualisation: /dev/kvm must open.
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := runner.Run(t.Context(), "dmsetup", "--version"); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dmsetup inside the test host: %v", err)
	}
	if cpu, _ := os.ReadFile("/proc/cpuinfo"); !bytes.Contains(cpu, []byte(" svm")) {
		t.Error("no svm flag in the test host's cpuinfo")
	}
}
