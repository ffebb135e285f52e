// Package template builds and keeps the images sandboxes boot from: the guest
// kernel (compiled from Debian's linux-source package with ember's config
// fragment), the root filesystem image (busybox, a minimal init and the guest
// agent, made with mkfs.ext4 -d without mounting anything) and the registry of
// named templates on disk.
//
// Builds are keyed by a hash of their inputs and published atomically, so a
// build killed half-way never leaves something that looks finished, and an
// up-to-date template is returned without doing any work.
package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// DefaultName is the name of the template the daemon builds on first start.
const DefaultName = "base"

// File names inside a template directory.
const (
	kernelFile   = "vmlinux"
	rootfsFile   = "rootfs.ext4"
	manifestFile = "template.json"
)

// ErrNotFound is returned by Registry.Get when no template has the name.
var ErrNotFound = errors.New("template not found")

// ErrInvalidName is returned for a template name that cannot be a directory
// name in the registry.
var ErrInvalidName = errors.New("invalid template name")

// Template is a built template: a guest kernel and a root filesystem image a
// sandbox boots from.
type Template struct {
	// Name is the registry name ("base" for the default template).
	Name string `json:"name"`
	// Kernel and Rootfs are absolute paths of the uncompressed vmlinux and the
	// ext4 image.
	Kernel string `json:"-"`
	Rootfs string `json:"-"`
	// KernelBytes and RootfsBytes are the bytes allocated on the host's disk
	// (st_blocks*512): the image is sparse.
	KernelBytes int64 `json:"-"`
	RootfsBytes int64 `json:"-"`
	// RootfsSizeBytes is the image's apparent size: the guest's disk size.
	RootfsSizeBytes int64 `json:"-"`
	// Key is the hash of every input the template was built from; a build with
	// the same key would produce the same template.
	Key string `json:"key"`
	// BuiltAt is when the template was published.
	BuiltAt time.Time `json:"built_at"`
	// Inputs names what went into the build (kernel key, package versions,
	// binary hashes), for `ember template ls` and for debugging.
	Inputs map[string]string `json:"inputs,omitempty"`

	// What a template built from a definition (package build) gives its
	// sandboxes: an environment, the working directory and user of its
	// start command, and that command with the one saying it is ready
	// (run before the template's memory snapshot is taken, so sandboxes
	// come up with the process running).
	Env      map[string]string `json:"env,omitempty"`
	Workdir  string            `json:"workdir,omitempty"`
	User     string            `json:"user,omitempty"`
	StartCmd string            `json:"start_cmd,omitempty"`
	ReadyCmd string            `json:"ready_cmd,omitempty"`
	// Source is what the template was built from ("debian:bookworm",
	// "template base"); Layers the build cache keys of its steps, base
	// first: templates with a common prefix share those entries.
	Source string   `json:"source,omitempty"`
	Layers []string `json:"layers,omitempty"`
}

// Registry is the directory holding named templates, one subdirectory each:
// <Dir>/<name>/{vmlinux,rootfs.ext4,template.json}. Names starting with a dot
// are reserved for builds in progress.
type Registry struct {
	// Dir is usually <data-dir>/templates.
	Dir string
}

// List returns every complete template in the registry, sorted by name. A
// missing registry directory is an empty registry.
func (r Registry) List() ([]Template, error) {
	entries, err := os.ReadDir(r.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates in %q: %w", r.Dir, err)
	}
	var out []Template
	for _, e := range entries {
		if !e.IsDir() || checkName(e.Name()) != nil {
			continue
		}
		t, err := r.Get(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue // not a template, or one without its manifest
		}
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get returns the template called name, or an error wrapping ErrNotFound.
func (r Registry) Get(name string) (Template, error) {
	if err := checkName(name); err != nil {
		return Template{}, err
	}
	dir := filepath.Join(r.Dir, name)
	t, err := readManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Template{}, fmt.Errorf("get template %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Template{}, fmt.Errorf("get template %q: %w", name, err)
	}
	t.Name = name
	t.Kernel = filepath.Join(dir, kernelFile)
	t.Rootfs = filepath.Join(dir, rootfsFile)
	if t.KernelBytes, _, err = usage(t.Kernel); err != nil {
		return Template{}, fmt.Errorf("get template %q: %w", name, err)
	}
	if t.RootfsBytes, t.RootfsSizeBytes, err = usage(t.Rootfs); err != nil {
		return Template{}, fmt.Errorf("get template %q: %w", name, err)
	}
	return t, nil
}

// path returns the directory a template called name lives in.
func (r Registry) path(name string) string { return filepath.Join(r.Dir, name) }

// checkName rejects names that are not a single, visible path element.
func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\`) || len(name) > 128 {
		return fmt.Errorf("template name %q: %w", name, ErrInvalidName)
	}
	return nil
}

func readManifest(dir string) (Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return Template{}, err
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return Template{}, fmt.Errorf("parse %s: %w", manifestFile, err)
	}
	return t, nil
}

func writeManifest(dir string, t Template) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(filepath.Join(dir, manifestFile), append(b, '\n'), 0o644)
}
