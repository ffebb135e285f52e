//go:build linux

// Package auto picks the rootfs backend for this host: devmapper where the
// kernel has device-mapper, else reflink where the data directory's
// filesystem clones files, else qcow2 where qemu-img is installed, else
// copy, which works everywhere. It lives apart from package rootfs because
// it imports every backend.
package auto

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/emberhq/ember/internal/rootfs"
	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/rootfs/devmapper"
	"github.com/emberhq/ember/internal/rootfs/qcow2"
	"github.com/emberhq/ember/internal/rootfs/reflink"
)

// Names are the backends in the order automatic selection tries them.
var Names = []string{"devmapper", "reflink", "qcow2", "copy"}

// ErrUnknown is returned for a preferred name that is no backend.
var ErrUnknown = errors.New("unknown rootfs backend")

// Select returns the backend to use and why. dir is the daemon's data
// directory: sandbox disks and templates must live on its filesystem (the
// reflink probe runs there) and devmapper keeps its intent journal in
// dir/devmapper. preferred names a backend ("" or "auto": choose); a named
// backend this host cannot run is an error that says what is missing.
//
// formats are the disk formats the VMM opens (its vmm.DiskFormats); nil
// takes any. A backend whose disks the VMM cannot open is passed over, and
// is an error when preferred.
//
// A backend that implements rootfs.Reconciler must be reconciled before
// use.
func Select(dir, preferred string, formats []string, log *slog.Logger) (rootfs.Backend, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("select rootfs backend: %w", err)
	}
	var why []string
	for _, name := range Names {
		if preferred != "" && preferred != "auto" && preferred != name {
			continue
		}
		if f := Format(name); formats != nil && !slices.Contains(formats, f) {
			err := fmt.Errorf("its disks are %s and the vmm opens %s only", f, strings.Join(formats, ", "))
			if preferred == name {
				return nil, "", fmt.Errorf("rootfs backend %s: %w", name, err)
			}
			why = append(why, name+": "+err.Error())
			continue
		}
		b, err := open(name, dir, log)
		if err == nil {
			reason := "configured"
			if preferred == "" || preferred == "auto" {
				reason = "automatic: " + available[name]
				if len(why) > 0 {
					reason += "; passed over " + strings.Join(why, "; ")
				}
			}
			log.Info("rootfs backend selected", "rootfs", name, "reason", reason)
			return b, reason, nil
		}
		if preferred == name {
			return nil, "", fmt.Errorf("rootfs backend %s: %w", name, err)
		}
		why = append(why, name+": "+err.Error())
	}
	if preferred != "" && preferred != "auto" {
		return nil, "", fmt.Errorf("rootfs backend %q: %w (want one of %s, or auto)", preferred, ErrUnknown, strings.Join(Names, ", "))
	}
	// copy always opens; reaching here is a bug.
	return nil, "", fmt.Errorf("select rootfs backend: none available: %s", strings.Join(why, "; "))
}

// Format is the disk format backend name prepares: qcow2 overlays, raw
// images or block devices otherwise.
func Format(name string) string {
	if name == "qcow2" {
		return "qcow2"
	}
	return "raw"
}

// available says why a backend was chosen.
var available = map[string]string{
	"devmapper": "device-mapper present: snapshots over a shared loop device, O(1) in the image size",
	"reflink":   "the data directory's filesystem clones files: O(1) in the image size",
	"qcow2":     "qemu-img found: overlays are O(1) in the image size",
	"copy":      "sparse copies work everywhere, at the cost of a copy per sandbox",
}

// open returns the backend called name, or why this host cannot run it.
func open(name, dir string, log *slog.Logger) (rootfs.Backend, error) {
	switch name {
	case "devmapper":
		if err := devmapper.Available(); err != nil {
			return nil, err
		}
		return devmapper.New(filepath.Join(dir, "devmapper"), log)
	case "reflink":
		if err := reflink.Supported(dir); err != nil {
			return nil, fmt.Errorf("%s cannot clone files (put it on xfs with reflink=1 or btrfs): %w", dir, err)
		}
		return reflink.New(log), nil
	case "qcow2":
		if _, err := exec.LookPath("qemu-img"); err != nil {
			return nil, fmt.Errorf("qemu-img not on PATH (apt-get install qemu-utils)")
		}
		return qcow2.New(log), nil
	case "copy":
		return rootfscopy.New(log), nil
	}
	return nil, ErrUnknown
}
