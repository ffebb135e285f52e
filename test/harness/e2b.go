package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// HostBash is the static bash of Debian's bash-static.
const HostBash = "/bin/bash-static"

// E2BTemplate adds the template name to a registry: the registry's default
// template (which a daemon given the registry builds at start, its guest
// running this tree's agent) with /bin/bash added from Debian's
// bash-static where the image has none, since E2B's SDKs run every command
// as /bin/bash -l -c. The image is a copy (debugfs writes into it); the
// default template stays as it was.
func E2BTemplate(registry, name string) error {
	src, dst := filepath.Join(registry, "base"), filepath.Join(registry, name)
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	if err := os.Link(filepath.Join(src, "vmlinux"), filepath.Join(dst, "vmlinux")); err != nil {
		return err
	}
	image := filepath.Join(dst, "rootfs.ext4")
	if err := command("cp", "--sparse=always", filepath.Join(src, "rootfs.ext4"), image); err != nil {
		return err
	}
	manifest, err := os.ReadFile(filepath.Join(src, "template.json"))
	if err != nil {
		return err
	}
	out, err := exec.Command("debugfs", "-R", "stat /bin/bash", image).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs (apt-get install e2fsprogs): %w: %s", err, out)
	}
	if !strings.Contains(string(out), "Type: regular") && !strings.Contains(string(out), "Type: symlink") {
		if _, err := os.Stat(HostBash); err != nil {
			return fmt.Errorf("%w (apt-get install bash-static; make deps does)", err)
		}
		if err := command("debugfs", "-w", "-R", "write "+HostBash+" /bin/bash", image); err != nil {
			return err
		}
		// Another image than the one the key names: a key of its own, so
		// no template snapshot of the original is restored over it.
		var m map[string]any
		if err := json.Unmarshal(manifest, &m); err != nil {
			return fmt.Errorf("read %s manifest: %w", src, err)
		}
		m["key"] = fmt.Sprint(m["key"], "+bash")
		if manifest, err = json.Marshal(m); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dst, "template.json"), manifest, 0o644)
}

func command(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
