package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExitErrorReason(t *testing.T) {
	cases := []struct {
		name, log, want string
	}{
		{"qemu option", "qemu-system-x86_64: -drive file=/x,if=none: Could not open '/x': No such file or directory\n",
			"qemu-system-x86_64: -drive file=/x,if=none: Could not open '/x': No such file or directory"},
		{"first error wins", "booting\nqemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nqemu: assertion failed\n",
			"qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"},
		{"no error word: the last line", "one\ntwo\n\n", "two"},
		{"empty", "", "qemu exited during start: "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &ExitError{VMM: "qemu", During: "during start", Log: tc.log}
			if got := e.Reason(); got != tc.want {
				t.Errorf("Reason() = %q, want %q", got, tc.want)
			}
			if strings.Contains(e.Error(), "\n") {
				t.Errorf("Error() spans lines: %q", e.Error())
			}
		})
	}
}

func TestLogTail(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vmm.log")
	if got := LogTail(p); !strings.HasPrefix(got, "no log: ") {
		t.Errorf("missing log: %q", got)
	}
	os.WriteFile(p, []byte("\n\n"), 0o600)
	if got := LogTail(p); got != "empty log" {
		t.Errorf("empty log: %q", got)
	}
	os.WriteFile(p, []byte(strings.Repeat("x", 5000)+"\nlast line\n"), 0o600)
	if got := LogTail(p); len(got) > maxLogTail || !strings.HasSuffix(got, "last line") {
		t.Errorf("long log: %d bytes ending %q", len(got), got[len(got)-10:])
	}
	if got := LastLine(p); got != "last line" {
		t.Errorf("LastLine = %q", got)
	}
	if got := LastLine(filepath.Join(dir, "missing")); got != "" {
		t.Errorf("LastLine of a missing log = %q", got)
	}
}
