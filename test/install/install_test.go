// Package install tests `make install` and `make uninstall` into
// directories of the test's own, never the running system: the files land
// where the unit says, the unit passes `systemd-analyze verify`, the
// installed binary runs `ember doctor` with the installed configuration,
// both targets can run twice, and uninstall keeps the data unless asked.
package install

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/testutil"
)

func TestInstallAndUninstall(t *testing.T) {
	testutil.RequireTool(t, "make")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var (
		bin     = filepath.Join(dir, "usr/local/bin/ember")
		conf    = filepath.Join(dir, "etc/ember/ember.toml")
		unit    = filepath.Join(dir, "etc/systemd/system/ember.service")
		dataDir = filepath.Join(dir, "var/lib/ember")
	)
	vars := []string{"PREFIX=" + filepath.Join(dir, "usr/local"), "SYSCONFDIR=" + filepath.Join(dir, "etc"),
		"UNITDIR=" + filepath.Dir(unit), "DATA_DIR=" + dataDir}
	make := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("make", append(append([]string{"--no-print-directory", "-C", repo}, args...), vars...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	make("install")
	for path, mode := range map[string]os.FileMode{bin: 0o755, conf: 0o644, unit: 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatalf("make install did not write %s: %v", path, err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	shipped, _ := os.ReadFile(filepath.Join(repo, "dist/ember.toml"))
	if got, _ := os.ReadFile(conf); !bytes.Equal(got, shipped) {
		t.Errorf("installed config is not dist/ember.toml")
	}
	u, _ := os.ReadFile(unit)
	for _, want := range []string{
		"ExecStart=" + bin + " serve --config " + conf + "\n",
		"KillMode=process\n", "Restart=on-failure\n", "NoNewPrivileges=yes\n", "WantedBy=multi-user.target\n",
	} {
		if !strings.Contains(string(u), want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
	for _, breaksVMs := range []string{"ProtectSystem=", "PrivateTmp=", "PrivateDevices=", "RestrictNamespaces=", "MemoryDenyWriteExecute="} {
		for _, line := range strings.Split(string(u), "\n") {
			if strings.HasPrefix(line, breaksVMs) {
				t.Errorf("unit sets %s, which breaks sandboxes", line)
			}
		}
	}

	t.Run("systemd-analyze verify", func(t *testing.T) {
		testutil.RequireTool(t, "systemd-analyze")
		out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
		if err != nil || strings.Contains(string(out), "ember.service") {
			t.Fatalf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
	})

	t.Run("installed binary runs doctor", func(t *testing.T) {
		// An empty template directory: the kvm check then probes nothing.
		cmd := exec.Command(bin, "doctor", "--json", "--config", conf, "--data-dir", dataDir,
			"--template-dir", filepath.Join(dir, "templates"), "--listen", "127.0.0.1:0")
		out, err := cmd.Output()
		var ee *exec.ExitError
		if err != nil && (!asExit(err, &ee) || ee.ExitCode() != 1) {
			t.Fatalf("ember doctor: %v\n%s", err, out)
		}
		var rep struct {
			CanServe bool `json:"can_serve"`
			Checks   []struct{ Name, Status, Finding string }
		}
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("ember doctor --json: %v\n%s", err, out)
		}
		if len(rep.Checks) < 10 || rep.Checks[0].Name != "root" || rep.CanServe != (err == nil) {
			t.Fatalf("doctor report (exit %v): %s", err, out)
		}
		if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
			t.Errorf("doctor made the data directory: %v", err)
		}
	})

	// Again: nothing breaks, an operator's config is kept.
	if err := os.WriteFile(conf, append(shipped, []byte("slot-count = 20\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := make("install"); !strings.Contains(out, "keeping "+conf) {
		t.Errorf("second install did not keep the config:\n%s", out)
	}
	if got, _ := os.ReadFile(conf); !strings.Contains(string(got), "slot-count = 20") {
		t.Error("second install replaced the operator's config")
	}

	// Uninstall keeps the data and a changed config; twice is fine.
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "ember.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	make("uninstall")
	make("uninstall")
	for _, gone := range []string{bin, unit} {
		if _, err := os.Stat(gone); !os.IsNotExist(err) {
			t.Errorf("uninstall left %s", gone)
		}
	}
	for _, kept := range []string{conf, filepath.Join(dataDir, "ember.db")} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("uninstall removed %s: %v", kept, err)
		}
	}
	// An unchanged config goes with the install.
	make("install")
	os.WriteFile(conf, shipped, 0o644)
	make("uninstall")
	if _, err := os.Stat(conf); !os.IsNotExist(err) {
		t.Errorf("uninstall kept an unchanged default config: %v", err)
	}
	make("uninstall", "PURGE=1")
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("uninstall PURGE=1 kept the data: %v", err)
	}
}

func asExit(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	*target = ee
	return ok
}
