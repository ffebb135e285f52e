package vmm

import (
	"errors"
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	boots := func() (bool, string, error) { return true, "kvm: kernel boots", nil }
	hangs := func() (bool, string, error) { return false, "tcg: /dev/kvm is PVM", nil }
	broken := func() (bool, string, error) { return false, "", errors.New("read kernel: gone") }
	never := func() (bool, string, error) { t.Error("probed without a firecracker candidate"); return false, "", nil }
	cases := []struct {
		name       string
		configured string
		fcOK       bool
		kvm        func() (bool, string, error)
		want       string
		reason     string
		err        string
	}{
		{"automatic, no firecracker", "", false, never, "qemu", "automatic: no binary", ""},
		{"automatic, firecracker and kvm", "", true, boots, "firecracker", "automatic: fc at /x; kvm: kernel boots", ""},
		{"automatic, firecracker without kvm", "", true, hangs, "qemu", "automatic: fc at /x found, but tcg: /dev/kvm is PVM", ""},
		{"automatic, probe fails", "", true, broken, "", "", "read kernel: gone"},
		{"firecracker", "firecracker", true, boots, "firecracker", "configured: fc at /x; kvm: kernel boots", ""},
		{"firecracker without binary", "firecracker", false, never, "", "", "vmm firecracker: no binary"},
		{"firecracker without kvm", "firecracker", true, hangs, "", "", "vmm firecracker: tcg: /dev/kvm is PVM"},
		{"qemu", "qemu", true, never, "qemu", "configured", ""},
		{"unknown", "xen", false, never, "", "", `vmm "xen": want firecracker, qemu or empty`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			why := "no binary"
			if tc.fcOK {
				why = "fc at /x"
			}
			name, reason, err := Choose(tc.configured, tc.fcOK, why, tc.kvm)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || name != tc.want || reason != tc.reason {
				t.Fatalf("got %q %q %v, want %q %q", name, reason, err, tc.want, tc.reason)
			}
		})
	}
}
