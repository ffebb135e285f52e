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

// Availability is whether a backend can run for a data directory: Err
// says what it lacks, nil that it can.
type Availability struct {
	Name string
	Err  error
}

// Probe reports every backend's availability for dir, in the order
// automatic selection tries them, without making anything: the reflink
// probe's two temporary files go again at once. dir must exist.
func Probe(dir string) []Availability {
	out := make([]Availability, 0, len(Names))
	for _, name := range Names {
		out = append(out, Availability{Name: name, Err: check(name, dir)})
	}
	return out
}

// Pick chooses among avail, as Probe reported it: the preferred backend ("" or
// "auto": the first that can run), passing over a backend whose disks the
// VMM does not open (formats are the disk formats it opens, its
// vmm.DiskFormats; nil takes any). It returns the name and why; a
// preferred backend that cannot run is an error saying what it lacks.
func Pick(avail []Availability, preferred string, formats []string) (name, reason string, err error) {
	automatic := preferred == "" || preferred == "auto"
	var why []string
	for _, a := range avail {
		if !automatic && preferred != a.Name {
			continue
		}
		unopened := formats != nil && !slices.Contains(formats, Format(a.Name))
		switch {
		case unopened && !automatic:
			return "", "", fmt.Errorf("rootfs backend %s: %w", a.Name, formatError(a.Name, formats))
		case unopened:
			why = append(why, a.Name+": "+formatError(a.Name, formats).Error())
		case a.Err != nil && !automatic:
			return "", "", fmt.Errorf("rootfs backend %s: %w", a.Name, a.Err)
		case a.Err != nil:
			why = append(why, a.Name+": "+a.Err.Error())
		case !automatic:
			return a.Name, "configured", nil
		default:
			reason = "automatic: " + available[a.Name]
			if len(why) > 0 {
				reason += "; passed over " + strings.Join(why, "; ")
			}
			return a.Name, reason, nil
		}
	}
	if !automatic {
		return "", "", fmt.Errorf("rootfs backend %q: %w (want one of %s, or auto)", preferred, ErrUnknown, strings.Join(Names, ", "))
	}
	// copy always runs; reaching here is a bug.
	return "", "", fmt.Errorf("select rootfs backend: none available: %s", strings.Join(why, "; "))
}

// ErrFormat is wrapped by the error for a backend whose disks the VMM does
// not open (qcow2 for Firecracker, which opens raw disks only).
var ErrFormat = errors.New("the vmm does not open this backend's disks")

func formatError(name string, formats []string) error {
	return fmt.Errorf("%w: its disks are %s and the vmm opens %s only", ErrFormat, Format(name), strings.Join(formats, ", "))
}

// Format is the disk format backend name prepares: qcow2 overlays, raw
// images or block devices otherwise.
func Format(name string) string {
	if name == "qcow2" {
		return "qcow2"
	}
	return "raw"
}

// Select returns the backend to use and why. dir is the daemon's data
// directory: sandbox disks and templates must live on its filesystem (the
// reflink probe runs there) and devmapper keeps its intent journal in
// dir/devmapper. preferred names a backend ("" or "auto": choose); a named
// backend this host cannot run is an error that says what is missing.
// formats are the disk formats the VMM opens (nil: any).
//
// A backend that implements rootfs.Reconciler must be reconciled before
// use.
func Select(dir, preferred string, formats []string, log *slog.Logger) (rootfs.Backend, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("select rootfs backend: %w", err)
	}
	name, reason, err := Pick(Probe(dir), preferred, formats)
	if err != nil {
		return nil, "", err
	}
	b, err := open(name, dir, log)
	if err != nil {
		return nil, "", fmt.Errorf("rootfs backend %s: %w", name, err)
	}
	log.Info("rootfs backend selected", "rootfs", name, "reason", reason)
	return b, reason, nil
}

// available says why a backend was chosen.
var available = map[string]string{
	"devmapper": "device-mapper present: snapshots over a shared loop device, O(1) in the image size",
	"reflink":   "the data directory's filesystem clones files: O(1) in the image size",
	"qcow2":     "qemu-img found: overlays are O(1) in the image size",
	"copy":      "sparse copies work everywhere, at the cost of a copy per sandbox",
}

// check says why this host cannot run the backend called name for dir, or
// nil.
func check(name, dir string) error {
	switch name {
	case "devmapper":
		return devmapper.Available()
	case "reflink":
		if err := reflink.Supported(dir); err != nil {
			return fmt.Errorf("%s cannot clone files (put it on xfs with reflink=1 or btrfs): %w", dir, err)
		}
	case "qcow2":
		if _, err := exec.LookPath("qemu-img"); err != nil {
			return fmt.Errorf("qemu-img not on PATH (apt-get install qemu-utils)")
		}
	case "copy":
	default:
		return ErrUnknown
	}
	return nil
}

// open returns the backend called name, which check found can run.
func open(name, dir string, log *slog.Logger) (rootfs.Backend, error) {
	switch name {
	case "devmapper":
		return devmapper.New(filepath.Join(dir, "devmapper"), log)
	case "reflink":
		return reflink.New(log), nil
	case "qcow2":
		return qcow2.New(log), nil
	case "copy":
		return rootfscopy.New(log), nil
	}
	return nil, ErrUnknown
}
