//go:build linux

package firecracker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidator proves the spec check can fail: requests the spec rejects
// are caught, and the driver's own bodies pass.
func TestValidator(t *testing.T) {
	v := requireSpec(t)
	for _, tc := range []struct {
		name, method, path, body string
		ok                       bool
	}{
		{"machine config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}`, true},
		{"machine config without memory", "PUT", "/machine-config", `{"vcpu_count":2}`, false},
		{"zero vcpus", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, false},
		{"33 vcpus", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, false},
		{"memory as a string", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":"256"}`, false},
		{"huge pages 1G", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256,"huge_pages":"1G"}`, false},
		{"boot source without kernel", "PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`, false},
		{"drive", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/d","is_root_device":true,"is_read_only":false}`, true},
		{"drive without is_root_device", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/d"}`, false},
		{"drive with a bad cache type", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"cache_type":"None"}`, false},
		{"interface without tap", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, false},
		{"mtu too small", "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"t","mtu":10}`, false},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, false},
		{"instance start", "PUT", "/actions", `{"action_type":"InstanceStart"}`, true},
		{"vm state Stopped", "PATCH", "/vm", `{"state":"Stopped"}`, false},
		{"vm paused", "PATCH", "/vm", `{"state":"Paused"}`, true},
		{"no body", "PATCH", "/vm", ``, false},
		{"not json", "PUT", "/logger", `log_path=/x`, false},
		{"unknown snapshot type", "PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Incremental"}`, false},
		{"snapshot without memory path", "PUT", "/snapshot/create", `{"snapshot_path":"/s"}`, false},
		{"unknown memory backend", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Http","backend_path":"/u"}}`, false},
		{"network override without tap", "PUT", "/snapshot/load", `{"snapshot_path":"/s","network_overrides":[{"iface_id":"eth0"}]}`, false},
		{"vsock cid 2", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, false},
		{"balloon without amount", "PUT", "/balloon", `{"deflate_on_oom":true}`, false},
		{"metrics without path", "PUT", "/metrics", `{}`, false},
		{"path not in the spec", "PUT", "/reboot", `{}`, false},
		{"method not in the spec", "DELETE", "/vm", ``, false},
		{"get instance", "GET", "/", ``, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body []byte
			if tc.body != "" {
				body = []byte(tc.body)
			}
			_, err := v.check(tc.method, tc.path, body)
			if tc.ok && err != nil {
				t.Fatalf("valid request rejected: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("invalid request accepted")
			}
		})
	}
}

// TestFakeStateMachine proves the fake refuses what Firecracker refuses out
// of order, with Firecracker's error shape.
func TestFakeStateMachine(t *testing.T) {
	v := requireSpec(t)
	dir := t.TempDir()
	kernel, disk := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "disk")
	os.WriteFile(kernel, []byte("\x7fELF"), 0o644)
	os.WriteFile(disk, nil, 0o644)
	state := filepath.Join(dir, "vmstate")
	os.WriteFile(state, []byte(`{"mem_size_mib":256}`), 0o644)
	type req struct{ method, path, body string }
	boot := []req{
		{"PUT", "/logger", `{"log_path":"/dev/null"}`},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `"}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	}
	load := req{"PUT", "/snapshot/load", `{"snapshot_path":"` + state + `","mem_file_path":"/m"}`}
	for _, tc := range []struct {
		name  string
		setup []req
		last  req
		ok    bool
		fault string
	}{
		{"boot", boot[:4], boot[4], true, ""},
		{"start without kernel", boot[:2], boot[4], false, "without kernel"},
		{"start twice", boot, boot[4], false, "after starting"},
		{"boot source after start", boot, boot[2], false, "after starting"},
		{"drive after start", boot, boot[3], false, "after starting"},
		{"machine config after start", boot, boot[1], false, "after starting"},
		{"pause before start", boot[:4], req{"PATCH", "/vm", `{"state":"Paused"}`}, false, "before starting"},
		{"pause after start", boot, req{"PATCH", "/vm", `{"state":"Paused"}`}, true, ""},
		{"snapshot while running", boot, req{"PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m"}`}, false, "not paused"},
		{"load on a fresh process", boot[:1], load, true, ""},
		{"load on a configured machine", boot[:2], load, false, "not allowed after configuring"},
		{"load after start", boot, load, false, "not allowed"},
		{"ctrl-alt-del before start", boot[:4], req{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`}, false, "before starting"},
		{"invalid body", nil, req{"PUT", "/machine-config", `{"vcpu_count":1}`}, false, "does not match the API"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fake{v: v, stop: func() {}}
			for _, r := range tc.setup {
				if status, fault, _ := f.handle(r.method, r.path, []byte(r.body)); status/100 != 2 {
					t.Fatalf("setup %s %s: %d %s", r.method, r.path, status, fault)
				}
			}
			var body []byte
			if tc.last.body != "" {
				body = []byte(tc.last.body)
			}
			status, fault, _ := f.handle(tc.last.method, tc.last.path, body)
			if tc.ok != (status/100 == 2) {
				t.Fatalf("%s %s: status %d (%s), want ok=%v", tc.last.method, tc.last.path, status, fault, tc.ok)
			}
			if !tc.ok && (status != 400 || !strings.Contains(fault, tc.fault)) {
				t.Errorf("refusal %d %q, want 400 mentioning %q", status, fault, tc.fault)
			}
		})
	}
}
