package template

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/failpoint"
	"github.com/emberhq/ember/internal/fsutil"
)

// EnsureDefault returns the default template ("base") from reg, first
// building whatever is missing or stale: the kernel (cached under CacheDir)
// and the root filesystem image holding agent. A template whose key matches
// the current inputs is returned at once. The new template replaces the old
// one atomically; a build that fails or is killed leaves the old one in place.
func (b *Builder) EnsureDefault(ctx context.Context, reg Registry, agent []byte) (Template, error) {
	return b.Build(ctx, reg, DefaultName, agent)
}

// Build returns the template called name from reg, first building it (from
// ember's kernel, or Builder.KernelPath when set, and the default root
// filesystem) unless one with the same inputs is there. The default
// template is rebuilt by the daemon from ember's own kernel, so a supplied
// kernel needs a name of its own.
func (b *Builder) Build(ctx context.Context, reg Registry, name string, agent []byte) (Template, error) {
	if err := checkName(name); err != nil {
		return Template{}, err
	}
	if b.KernelPath != "" && name == DefaultName {
		return Template{}, fmt.Errorf("template %q: %w: the daemon keeps %q on ember's own kernel; give a supplied kernel a template name of its own", name, ErrInvalidName, DefaultName)
	}
	t, err := b.ensure(ctx, reg, name, agent)
	if err != nil {
		return Template{}, fmt.Errorf("build template %q: %w", name, err)
	}
	return t, nil
}

func (b *Builder) ensure(ctx context.Context, reg Registry, name string, agent []byte) (Template, error) {
	if len(agent) == 0 {
		return Template{}, ErrNoAgent
	}
	start := time.Now()
	k, err := b.kernel(ctx)
	if err != nil {
		return Template{}, err
	}
	busybox, err := os.ReadFile(hostBusybox)
	if err != nil {
		return Template{}, fmt.Errorf("read busybox (apt-get install busybox-static): %w", err)
	}
	bash, err := os.ReadFile(hostBash)
	if err != nil {
		return Template{}, fmt.Errorf("read bash (apt-get install bash-static): %w", err)
	}
	size := b.rootfsSize()
	kernelSource := linuxSourcePackage + " " + k.source
	if b.KernelPath != "" {
		kernelSource = k.source
	}
	inputs := map[string]string{
		"kernel":         k.key,
		"linux_source":   kernelSource,
		"agent_sha256":   sha256Hex(agent),
		"busybox_sha256": sha256Hex(busybox),
		"bash_sha256":    sha256Hex(bash),
		"rootfs_recipe":  rootfsRecipeVersion,
	}
	key := rootfsKey(k.key, inputs["agent_sha256"], inputs["busybox_sha256"], inputs["bash_sha256"], size)
	if t, err := reg.Get(name); err == nil && t.Key == key {
		return t, nil
	}

	if err := os.MkdirAll(reg.Dir, 0o755); err != nil {
		return Template{}, fmt.Errorf("create registry %q: %w", reg.Dir, err)
	}
	unlock, err := fsutil.Lock(ctx, filepath.Join(reg.Dir, "."+name+".lock"))
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	if t, err := reg.Get(name); err == nil && t.Key == key {
		return t, nil // built by another process while we waited
	}
	if os.Geteuid() != 0 {
		b.log().Warn("building a template as non-root: files in the image are owned by the builder's uid", "template", name)
	}

	prefix := ".build-" + name + "-"
	stale, _ := filepath.Glob(filepath.Join(reg.Dir, prefix+"*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
	work, err := os.MkdirTemp(reg.Dir, prefix)
	if err != nil {
		return Template{}, fmt.Errorf("create template work dir: %w", err)
	}
	// On success this removes the replaced template, swapped into work/out.
	defer os.RemoveAll(work)

	t0 := time.Now()
	b.step("rootfs: staging busybox, bash, init and the agent")
	applets, err := busyboxApplets(ctx, hostBusybox)
	if err != nil {
		return Template{}, err
	}
	staging, out := filepath.Join(work, "staging"), filepath.Join(work, "out")
	for _, d := range []string{staging, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return Template{}, fmt.Errorf("create %q: %w", d, err)
		}
	}
	if err := stage(staging, recipe(agent, busybox, bash, applets)); err != nil {
		return Template{}, err
	}
	failpoint.Hit(failpoint.TemplateStaged)
	b.step(fmt.Sprintf("rootfs: mkfs.ext4 (%d MiB, sparse)", size>>20))
	image := filepath.Join(out, rootfsFile)
	if err := makeExt4(ctx, staging, image, size); err != nil {
		return Template{}, err
	}
	if err := syncFile(image); err != nil {
		return Template{}, err
	}
	failpoint.Hit(failpoint.TemplateImage)
	b.done("rootfs image made", t0)

	b.step("publishing template " + name)
	if err := linkOrCopy(k.path, filepath.Join(out, kernelFile)); err != nil {
		return Template{}, err
	}
	m := Template{Name: name, Key: key, BuiltAt: time.Now().UTC(), Inputs: inputs}
	if err := writeManifest(out, m); err != nil {
		return Template{}, fmt.Errorf("write manifest: %w", err)
	}
	if err := syncDir(out); err != nil {
		return Template{}, err
	}
	if err := publish(out, reg.path(name)); err != nil {
		return Template{}, err
	}
	t, err := reg.Get(name)
	if err != nil {
		return Template{}, fmt.Errorf("read back published template: %w", err)
	}
	b.log().Info("template built", "template", name, "key", key[:12],
		"rootfs_allocated", t.RootfsBytes, "rootfs_size", t.RootfsSizeBytes,
		"duration", time.Since(start).Round(time.Millisecond))
	return t, nil
}

func (b *Builder) rootfsSize() int64 {
	if b.RootfsSize > 0 {
		return b.RootfsSize
	}
	return DefaultRootfsSize
}
