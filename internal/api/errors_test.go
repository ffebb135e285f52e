package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/wire"
)

// A create that fails in the VMM, the disk or the network tells the client
// which, with the cause's first useful line; the log keeps the whole cause
// with the sandbox's id.
func TestCreateFailuresSayWhatHappened(t *testing.T) {
	qemuExit := &vmm.ExitError{VMM: "qemu", During: "during start",
		Log: "qemu-system-x86_64: -drive file=/d/disk,if=none: Could not open '/d/disk': Permission denied\nqemu: more detail\n"}
	op := func(step string, kind, err error) error {
		return &sandbox.OpError{Op: "create", ID: "sb42", Step: step, Kind: kind, Err: err}
	}
	cases := []struct {
		name    string
		err     error
		status  int
		code    string
		message string
		// logged is in the log beyond what the client is told.
		logged string
	}{
		{"vmm", op("start the vmm (qemu)", sandbox.ErrVMMStart, fmt.Errorf("start sb42: %w", qemuExit)), 500, "vmm_start_failed",
			"create sandbox sb42: start the vmm (qemu): qemu-system-x86_64: -drive file=/d/disk,if=none: Could not open '/d/disk': Permission denied",
			"qemu: more detail"},
		{"disk", op("prepare its disk", sandbox.ErrDisk, errors.New("copy base: write /d/disk: no space left on device")), 500, "disk_failed",
			"create sandbox sb42: prepare its disk: copy base: write /d/disk: no space left on device", ""},
		{"network", op("get a network slot", sandbox.ErrNetwork, errors.New("create veth ember-v3: file exists")), 500, "network_failed",
			"create sandbox sb42: get a network slot: create veth ember-v3: file exists", ""},
		{"no capacity", op("get a network slot", sandbox.ErrNetwork, fmt.Errorf("indexes 0..9 taken: %w", slot.ErrNoCapacity)), 503, "no_capacity",
			"create sandbox sb42: get a network slot: indexes 0..9 taken: no free network slot", ""},
		{"boot", &sandbox.OpError{Op: "create", ID: "sb42", Step: "wait for the guest's agent", Kind: sandbox.ErrBoot,
			Hint: "context deadline exceeded; the guest console's last line: Kernel panic", Err: errors.New("context deadline exceeded")}, 504, "boot_failed",
			"the guest console's last line: Kernel panic", ""},
		{"agent", op("set the guest up", sandbox.ErrAgent, errors.New("init: 500 bad clock")), 502, "agent_failed", "set the guest up: init: 500 bad clock", ""},
		{"store", op("write its state (creating)", sandbox.ErrStore, errors.New("database is locked")), 500, "store_failed", "database is locked", ""},
		{"vmm save", op("save the machine", sandbox.ErrVMMSave, errors.New("migrate: failed")), 500, "vmm_save_failed", "save the machine: migrate: failed", ""},
		{"anything else", errors.New("a bug"), 500, "internal", "the daemon log has the details", "a bug"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs testutil.SyncBuffer
			f := &fakeSandboxes{createErr: tc.err}
			f.recs = nil
			srv := httptest.NewServer(New(Config{APIKey: func() string { return key }, Info: func() wire.Info { return wire.Info{} }}, f, fakeTemplates{},
				slog.New(slog.NewTextHandler(&logs, nil))))
			defer srv.Close()
			_, err := client.New(srv.URL, key).CreateSandbox(t.Context(), wire.CreateSandboxRequest{})
			var ae *client.APIError
			if !asAPIError(err, &ae) || ae.Status != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, tc.message) {
				t.Fatalf("got %v, want %d %s with %q", err, tc.status, tc.code, tc.message)
			}
			if tc.code == "internal" {
				return
			}
			if strings.Contains(ae.Message, "\n") {
				t.Errorf("message spans lines: %q", ae.Message)
			}
			if tc.logged != "" && strings.Contains(ae.Message, tc.logged) {
				t.Errorf("the client is told more than the first useful line: %q", ae.Message)
			}
			log := logs.String()
			if !strings.Contains(log, "sandbox=sb42") || !strings.Contains(log, "code="+tc.code) || !strings.Contains(log, tc.logged) {
				t.Errorf("log lacks the sandbox, the code or the full cause:\n%s", log)
			}
		})
	}
}

// Every code the API answers with is in the OpenAPI document's enum.
func TestEveryCodeIsDocumented(t *testing.T) {
	m := regexp.MustCompile(`(?s)code:\s*type: string\s*description: [^\n]*\n\s*enum: \[([^\]]*)\]`).FindSubmatch(openapiDoc)
	if m == nil {
		t.Fatal("no code enum in openapi.yaml")
	}
	documented := map[string]bool{}
	for _, c := range strings.Split(string(m[1]), ",") {
		documented[strings.TrimSpace(c)] = true
	}
	// The codes the handlers write, read from the source.
	src, err := readSources()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`(http\.Status\w+|\d{3}), "([a-z_]+)"`).FindAllStringSubmatch(src, -1) {
		used[m[2]] = true
	}
	for _, m := range regexp.MustCompile(`writeError\(w, [^,]+, "([a-z_]+)"`).FindAllStringSubmatch(src, -1) {
		used[m[1]] = true
	}
	if len(used) < 20 {
		t.Fatalf("found only %d codes in the source: %v", len(used), used)
	}
	for c := range used {
		if !documented[c] {
			t.Errorf("code %q is not in openapi.yaml's enum", c)
		}
	}
}

func readSources() (string, error) {
	var b strings.Builder
	files, err := filepath.Glob("*.go")
	if err != nil {
		return "", err
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		s, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		b.Write(s)
	}
	return b.String(), nil
}
