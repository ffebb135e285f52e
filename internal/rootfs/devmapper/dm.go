//go:build linux

package devmapper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/runner"
)

// dmsetup runs dmsetup without udev: nothing here runs udevd, so
// libdevmapper must neither wait for it nor expect it to make nodes. Nodes
// come from devtmpfs as /dev/dm-N.
func dmsetup(ctx context.Context, args ...string) ([]byte, error) {
	return runner.RunIn(ctx, "", []string{"DM_DISABLE_UDEV=1"}, "dmsetup", append([]string{"--noudevsync"}, args...)...)
}

// create makes the device-mapper device name from table (one target a
// line) and returns its node.
func create(ctx context.Context, name, table string, readOnly bool) (string, error) {
	// dmsetup's --table takes one line; a table file takes any number.
	f, err := os.CreateTemp("", "ember-dm-table-*")
	if err != nil {
		return "", fmt.Errorf("create dm device %s: %w", name, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(table); err != nil {
		f.Close()
		return "", fmt.Errorf("create dm device %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("create dm device %s: %w", name, err)
	}
	args := []string{"create", name}
	if readOnly {
		args = append(args, "--readonly")
	}
	if _, err := dmsetup(ctx, append(args, f.Name())...); err != nil {
		return "", fmt.Errorf("create dm device %s: %w", name, err)
	}
	node, ok, err := lookup(name)
	if err == nil && !ok {
		err = errors.New("not in /sys/block after create")
	}
	if err != nil {
		return "", fmt.Errorf("create dm device %s: %w", name, err)
	}
	return node, nil
}

// remove deletes the device-mapper device name; a missing device is
// success. It fails while anything (a VMM) holds the device open.
func remove(ctx context.Context, name string) error {
	if _, ok, err := lookup(name); err != nil || !ok {
		return err
	}
	if _, err := dmsetup(ctx, "remove", name); err != nil {
		if _, ok, _ := lookup(name); !ok {
			return nil // removed meanwhile
		}
		return fmt.Errorf("remove dm device %s: %w", name, err)
	}
	return nil
}

// lookup finds the node of the device-mapper device name through sysfs.
func lookup(name string) (node string, ok bool, err error) {
	names, err := filepath.Glob("/sys/block/dm-*/dm/name")
	if err != nil {
		return "", false, err
	}
	for _, p := range names {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed while we looked
		}
		if err != nil {
			return "", false, fmt.Errorf("look up dm device %s: %w", name, err)
		}
		if strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p))), true, nil
		}
	}
	return "", false, nil
}

// Names returns the names of every device-mapper device whose name starts
// with prefix.
func Names(prefix string) ([]string, error) {
	names, err := filepath.Glob("/sys/block/dm-*/dm/name")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range names {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if n := strings.TrimSpace(string(b)); strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out, nil
}

// sectors converts bytes to 512-byte sectors, the unit of dm tables.
func sectors(n int64) string { return strconv.FormatInt(n/512, 10) }
