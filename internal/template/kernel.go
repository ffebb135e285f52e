package template

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/runner"
)

// kernelFragment is applied on top of `make tinyconfig`. Every option in it
// must survive olddefconfig (checked by verifyConfig).
//
//go:embed kernel/ember.config
var kernelFragment []byte

const (
	// kernelBuilderVersion changes whenever the build steps below change in a
	// way that can change the kernel, so cached kernels are rebuilt.
	kernelBuilderVersion = "1"
	// linuxSourcePackage is the Debian package holding the kernel source.
	linuxSourcePackage = "linux-source-6.1"
	// linuxSourceTarball is where that package installs the source.
	linuxSourceTarball = "/usr/src/linux-source-6.1.tar.xz"
	// DefaultCacheDir holds built kernels unless EMBER_CACHE_DIR says otherwise.
	DefaultCacheDir = "/var/cache/ember"
)

// kernelTools are the host programs a kernel build runs.
var kernelTools = []string{"tar", "xz", "make", "gcc", "ld", "flex", "bison", "bc", "perl"}

// ErrKernelConfig is returned when the config fragment does not survive
// `make olddefconfig`: a misspelt option or one whose dependencies are off.
var ErrKernelConfig = errors.New("kernel config does not match the fragment")

// ErrNoKernelSource is returned when the Debian kernel source package is not
// installed.
var ErrNoKernelSource = errors.New(linuxSourcePackage + " is not installed (apt-get install " + linuxSourcePackage + ")")

// Builder builds the guest kernel and the default template. The zero value is
// usable: it caches under EMBER_CACHE_DIR (default /var/cache/ember), logs
// nowhere and reports no progress.
type Builder struct {
	// CacheDir holds built kernels: <CacheDir>/kernel/<key>/{vmlinux,config}.
	CacheDir string
	// Log receives one record per finished step, with its duration.
	Log *slog.Logger
	// Progress, when set, is called with a short description as each step
	// starts (the daemon shows these on first start: the kernel takes
	// minutes).
	Progress func(step string)
	// Jobs is the number of parallel compile jobs; 0 means one per CPU.
	Jobs int
	// RootfsSize is the root filesystem image's size in bytes (the guest's
	// disk); 0 means DefaultRootfsSize.
	RootfsSize int64
	// KernelPath, when set, is a kernel the user supplies (an uncompressed
	// vmlinux with a PVH entry note, a PVM guest kernel say), used instead
	// of building ember's. It is checked with CheckKernel first.
	KernelPath string
}

// Kernel returns the path of the guest kernel (an uncompressed vmlinux with a
// PVH entry point), building it first unless a build with the same inputs is
// cached.
func (b *Builder) Kernel(ctx context.Context) (string, error) {
	k, err := b.kernel(ctx)
	return k.path, err
}

// builtKernel is a cached kernel and what it was built from.
type builtKernel struct {
	path   string // <dir>/vmlinux
	config string // <dir>/config
	key    string
	source string // Debian version of the source package
}

// kernel finds or builds the kernel for the current inputs, or checks and
// names the one the user supplied.
func (b *Builder) kernel(ctx context.Context) (builtKernel, error) {
	if b.KernelPath != "" {
		return userKernel(b.KernelPath)
	}
	version, err := sourceVersion(ctx)
	if err != nil {
		return builtKernel{}, err
	}
	k := b.cached(version)
	if k.exists() {
		return k, nil
	}
	root := filepath.Dir(filepath.Dir(k.path))
	if err := os.MkdirAll(root, 0o755); err != nil {
		return builtKernel{}, fmt.Errorf("create kernel cache %q: %w", root, err)
	}
	unlock, err := fsutil.Lock(ctx, filepath.Join(root, k.key+".lock"))
	if err != nil {
		return builtKernel{}, err
	}
	defer unlock()
	if k.exists() { // another process built it while we waited
		return k, nil
	}
	if err := b.buildKernel(ctx, root, k.key, version); err != nil {
		return builtKernel{}, fmt.Errorf("build guest kernel %s: %w", k.key[:12], err)
	}
	return k, nil
}

// userKernel checks a kernel the user supplies and keys it by its content.
func userKernel(path string) (builtKernel, error) {
	if err := CheckKernel(path); err != nil {
		return builtKernel{}, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return builtKernel{}, fmt.Errorf("read kernel %q: %w", path, err)
	}
	return builtKernel{path: path, key: sha256Hex(data), source: "supplied " + path}, nil
}

// cached returns where the kernel built from the embedded fragment and the
// given source version lives in the cache, built or not.
func (b *Builder) cached(version string) builtKernel {
	key := kernelKey(kernelFragment, version)
	dir := filepath.Join(b.cacheDir(), "kernel", key)
	return builtKernel{path: filepath.Join(dir, kernelFile), config: filepath.Join(dir, "config"), key: key, source: version}
}

func (k builtKernel) exists() bool {
	for _, p := range []string{k.path, k.config} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// buildKernel unpacks the source into a work directory next to the cache
// entry, configures and compiles it, keeps only vmlinux and config, and
// renames the work directory into place. The caller holds the key's lock.
func (b *Builder) buildKernel(ctx context.Context, root, key, version string) (err error) {
	if err := requireTools(kernelTools); err != nil {
		return err
	}
	// Leftovers of a killed build: nobody else can be using them, we hold
	// the lock.
	prefix := ".build-" + key[:16] + "-"
	stale, _ := filepath.Glob(filepath.Join(root, prefix+"*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
	work, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return fmt.Errorf("create kernel work dir: %w", err)
	}
	defer func() {
		// On success this removes the swapped-out old entry, if any.
		if rerr := os.RemoveAll(work); rerr != nil && err == nil {
			b.log().Warn("remove kernel work dir", "dir", work, "err", rerr)
		}
	}()
	src := filepath.Join(work, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return fmt.Errorf("create kernel source dir: %w", err)
	}
	start := time.Now()
	// Fixed build metadata so the same inputs give the same kernel.
	env := []string{"KBUILD_BUILD_USER=ember", "KBUILD_BUILD_HOST=ember", "KBUILD_BUILD_TIMESTAMP=" + version}
	mk := func(args ...string) error {
		_, err := runner.RunIn(ctx, "", env, "make", append([]string{"-C", src}, args...)...)
		return err
	}

	b.step("kernel: unpacking " + linuxSourcePackage + " " + version)
	if _, err := runner.Run(ctx, "tar", "-xf", linuxSourceTarball, "-C", src, "--strip-components=1"); err != nil {
		return fmt.Errorf("unpack kernel source: %w", err)
	}
	b.done("kernel source unpacked", start)

	t := time.Now()
	b.step("kernel: configuring")
	if err := mk("tinyconfig"); err != nil {
		return fmt.Errorf("configure kernel: %w", err)
	}
	if err := appendFile(filepath.Join(src, ".config"), kernelFragment); err != nil {
		return fmt.Errorf("configure kernel: %w", err)
	}
	if err := mk("olddefconfig"); err != nil {
		return fmt.Errorf("configure kernel: %w", err)
	}
	config, err := os.ReadFile(filepath.Join(src, ".config"))
	if err != nil {
		return fmt.Errorf("configure kernel: %w", err)
	}
	if err := verifyConfig(kernelFragment, config); err != nil {
		return fmt.Errorf("configure kernel: %w", err)
	}
	b.done("kernel configured", t)

	t = time.Now()
	b.step(fmt.Sprintf("kernel: compiling vmlinux with %d jobs (takes minutes)", b.jobs()))
	if err := mk("-j", strconv.Itoa(b.jobs()), "vmlinux"); err != nil {
		return fmt.Errorf("compile kernel: %w", err)
	}
	b.done("kernel compiled", t)

	stage := filepath.Join(work, "out")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return fmt.Errorf("stage kernel: %w", err)
	}
	for from, to := range map[string]string{"vmlinux": kernelFile, ".config": "config"} {
		dst := filepath.Join(stage, to)
		if err := os.Rename(filepath.Join(src, from), dst); err != nil {
			return fmt.Errorf("stage kernel: %w", err)
		}
		if err := syncFile(dst); err != nil {
			return fmt.Errorf("stage kernel: %w", err)
		}
	}
	if err := CheckKernel(filepath.Join(stage, kernelFile)); err != nil {
		return fmt.Errorf("check kernel: %w", err)
	}
	// The source tree is ~1.3 GB: drop it before publishing.
	if err := os.RemoveAll(src); err != nil {
		return fmt.Errorf("remove kernel source: %w", err)
	}
	if err := publish(stage, filepath.Join(root, key)); err != nil {
		return err
	}
	b.log().Info("kernel built", "key", key, "source", version, "duration", time.Since(start).Round(time.Millisecond))
	return nil
}

// kernelKey names a kernel build by everything that goes into it.
func kernelKey(fragment []byte, sourceVersion string) string {
	h := sha256.New()
	fmt.Fprintf(h, "ember kernel\nbuilder %s\nsource %s %s\n", kernelBuilderVersion, linuxSourcePackage, sourceVersion)
	h.Write(fragment)
	return hex.EncodeToString(h.Sum(nil))
}

// sourceVersion returns the installed version of the kernel source package.
func sourceVersion(ctx context.Context) (string, error) {
	out, err := runner.Run(ctx, "dpkg-query", "-W", "-f", "${Version}", linuxSourcePackage)
	v := strings.TrimSpace(string(out))
	if err != nil || v == "" {
		return "", fmt.Errorf("read %s version: %w", linuxSourcePackage, errors.Join(ErrNoKernelSource, err))
	}
	if _, err := os.Stat(linuxSourceTarball); err != nil {
		return "", fmt.Errorf("read kernel source: %w", errors.Join(ErrNoKernelSource, err))
	}
	return v, nil
}

// parseConfig reads Kconfig assignments: "CONFIG_X=value" and
// "# CONFIG_X is not set" (recorded as "n"). Other lines are ignored.
func parseConfig(data []byte) (names []string, values map[string]string) {
	values = make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		var name, value string
		switch {
		case strings.HasPrefix(line, "CONFIG_"):
			var ok bool
			if name, value, ok = strings.Cut(line, "="); !ok {
				continue
			}
		case strings.HasPrefix(line, "# CONFIG_") && strings.HasSuffix(line, " is not set"):
			name = strings.TrimSuffix(strings.TrimPrefix(line, "# "), " is not set")
			value = "n"
		default:
			continue
		}
		if _, seen := values[name]; !seen {
			names = append(names, name)
		}
		values[name] = value
	}
	return names, values
}

// verifyConfig checks that every option the fragment sets has that value in
// the final config. Kconfig silently drops an option it does not know or
// whose dependencies are unmet; this turns that into an error naming it.
func verifyConfig(fragment, config []byte) error {
	names, want := parseConfig(fragment)
	_, got := parseConfig(config)
	var bad []string
	for _, name := range names {
		g, ok := got[name]
		if !ok {
			g = "n" // absent: unknown, or hidden behind an unmet dependency
		}
		if g != want[name] {
			bad = append(bad, fmt.Sprintf("%s (want %s, got %s)", name, want[name], g))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrKernelConfig, strings.Join(bad, ", "))
	}
	return nil
}

func appendFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(append([]byte("\n"), data...)); err != nil {
		f.Close()
		return fmt.Errorf("append to %q: %w", path, err)
	}
	return f.Close()
}

// requireTools names every missing program at once, so one apt-get fixes all.
func requireTools(tools []string) error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools on PATH: %s: %w", strings.Join(missing, ", "), fs.ErrNotExist)
	}
	return nil
}

func (b *Builder) cacheDir() string {
	if b.CacheDir != "" {
		return b.CacheDir
	}
	if d := os.Getenv("EMBER_CACHE_DIR"); d != "" {
		return d
	}
	return DefaultCacheDir
}

func (b *Builder) jobs() int {
	if b.Jobs > 0 {
		return b.Jobs
	}
	return runtime.NumCPU()
}

func (b *Builder) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.New(slog.DiscardHandler)
}

// step reports the start of a step to the progress callback.
func (b *Builder) step(s string) {
	if b.Progress != nil {
		b.Progress(s)
	}
}

// done logs a finished step with its duration.
func (b *Builder) done(msg string, start time.Time) {
	b.log().Debug(msg, "duration", time.Since(start).Round(time.Millisecond))
}
