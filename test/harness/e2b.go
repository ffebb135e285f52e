package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// E2BTemplate adds the template name to a registry, a copy of the
// registry's default template (which a daemon given the registry builds at
// start, its guest running this tree's agent), so that the E2B tier can map
// the SDK's template name onto a template of another name
// (--e2b-templates).
func E2BTemplate(registry, name string) error {
	src, dst := filepath.Join(registry, "base"), filepath.Join(registry, name)
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"vmlinux", "template.json"} {
		if err := os.Link(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
			return err
		}
	}
	return command("cp", "--sparse=always", filepath.Join(src, "rootfs.ext4"), filepath.Join(dst, "rootfs.ext4"))
}

func command(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
