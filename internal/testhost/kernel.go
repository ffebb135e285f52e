//go:build linux

package testhost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/runner"
)

// KernelPackage is the Debian package whose dependency names the kernel
// test hosts boot: the cloud flavour, small and with virtio built in where
// it matters (the rest comes as modules).
const KernelPackage = "linux-image-cloud-amd64"

// Kernel is a Debian kernel package unpacked into the cache, never
// installed on the host.
type Kernel struct {
	// Package and Version name the unpacked package.
	Package, Version string
	// Release is the kernel's release string (the modules directory).
	Release string
	// Root is the unpacked tree; Vmlinuz the kernel image in it.
	Root, Vmlinuz string
}

// FetchKernel returns the kernel the meta-package KernelPackage depends on,
// downloading it with apt-get and unpacking it with dpkg-deb into
// cacheDir/<package>_<version> the first time (depmod makes modules.dep
// there). Later calls with the same package version reuse the cache.
func FetchKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	pkg, err := dependency(ctx, KernelPackage)
	if err != nil {
		return Kernel{}, err
	}
	show, err := runner.Run(ctx, "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return Kernel{}, fmt.Errorf("find kernel package %s: %w", pkg, err)
	}
	version := field(show, "Version")
	if version == "" {
		return Kernel{}, fmt.Errorf("find kernel package %s: no version in apt-cache show", pkg)
	}
	dir := filepath.Join(cacheDir, pkg+"_"+version)
	if k, err := unpacked(pkg, version, dir); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".fetch-*")
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := runner.RunIn(ctx, tmp, nil, "apt-get", "download", pkg+"="+version); err != nil {
		return Kernel{}, fmt.Errorf("download %s (needs the Debian archive: apt-get update): %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("download %s: got %d packages", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := runner.Run(ctx, "dpkg-deb", "-x", debs[0], root); err != nil {
		return Kernel{}, fmt.Errorf("unpack %s: %w", pkg, err)
	}
	release, err := onlyEntry(filepath.Join(root, "lib", "modules"))
	if err != nil {
		return Kernel{}, fmt.Errorf("unpack %s: %w", pkg, err)
	}
	if _, err := runner.Run(ctx, "depmod", "-b", root, release); err != nil {
		return Kernel{}, fmt.Errorf("index modules of %s: %w", pkg, err)
	}
	if err := os.Rename(root, dir); err != nil && !errors.Is(err, fs.ErrExist) {
		// ErrExist: a concurrent fetch finished first; use its copy.
		return Kernel{}, fmt.Errorf("kernel cache: %w", err)
	}
	return unpacked(pkg, version, dir)
}

// unpacked describes the kernel unpacked at dir, if it is complete.
func unpacked(pkg, version, dir string) (Kernel, error) {
	release, err := onlyEntry(filepath.Join(dir, "lib", "modules"))
	if err != nil {
		return Kernel{}, err
	}
	k := Kernel{Package: pkg, Version: version, Release: release, Root: dir,
		Vmlinuz: filepath.Join(dir, "boot", "vmlinuz-"+release)}
	for _, p := range []string{k.Vmlinuz, filepath.Join(dir, "lib", "modules", release, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, err
		}
	}
	return k, nil
}

// dependency returns the package a meta-package depends on.
func dependency(ctx context.Context, meta string) (string, error) {
	out, err := runner.Run(ctx, "apt-cache", "depends", meta)
	if err != nil {
		return "", fmt.Errorf("resolve %s (apt-get update): %w", meta, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: "); ok {
			return dep, nil
		}
	}
	return "", fmt.Errorf("resolve %s: no dependency (apt-get update)", meta)
}

// field returns the value of an RFC 822 field in apt-cache show output.
func field(out []byte, name string) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// onlyEntry returns the name of the one entry in dir.
func onlyEntry(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("%s holds %d entries, want one", dir, len(ents))
	}
	return ents[0].Name(), nil
}

// Modules returns the files of the named modules and of everything they
// depend on, relative to the modules directory, in an order insmod can
// load them. Names may use - or _.
func (k Kernel) Modules(names []string) ([]string, error) {
	dir := filepath.Join(k.Root, "lib", "modules", k.Release)
	data, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	deps := map[string][]string{} // file → files it needs
	byName := map[string]string{} // module name → file
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[file] = strings.Fields(rest)
		byName[moduleName(file)] = file
	}
	builtin, _ := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	var order []string
	seen := map[string]bool{}
	var visit func(file string)
	visit = func(file string) {
		if seen[file] {
			return
		}
		seen[file] = true
		for _, d := range deps[file] {
			visit(d)
		}
		order = append(order, file)
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		file, ok := byName[n]
		if !ok {
			if bytes.Contains(builtin, []byte("/"+strings.ReplaceAll(n, "_", "-")+".ko")) ||
				bytes.Contains(builtin, []byte("/"+n+".ko")) {
				continue // built into the kernel
			}
			return nil, fmt.Errorf("kernel %s has no module %s", k.Release, n)
		}
		visit(file)
	}
	return order, nil
}

// moduleName is the module name of a module file: base name without the
// extensions, - as _.
func moduleName(file string) string {
	base := filepath.Base(file)
	base = base[:strings.Index(base, ".ko")]
	return strings.ReplaceAll(base, "-", "_")
}
