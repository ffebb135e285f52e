//go:build linux

// Package testhost runs Go tests inside a throwaway QEMU TCG virtual
// machine booted from a Debian kernel, for what this machine's kernel
// lacks (device-mapper, nbd, KVM: `-cpu max` gives the VM emulated SVM, so
// kvm_amd loads inside). The kernel package is downloaded and unpacked into
// a cache, never installed; an initramfs carries busybox, the modules the
// tests need, host tools with their shared libraries and the compiled test
// binaries. The console streams back and a final marker line carries the
// tests' exit status.
//
// Tests mark themselves for this tier by calling Require, which skips on a
// host without the feature and fails inside a test host that lacks it.
package testhost

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/runner"
)

// ExitMarker starts the console line that carries the tests' exit status.
const ExitMarker = "EMBER-TESTHOST-EXIT "

// DefaultModules are loaded when Config.Modules is nil.
var DefaultModules = []string{"loop", "dm-mod", "dm-snapshot", "dm-zero", "nbd", "kvm", "kvm-amd", "tun", "veth"}

// DefaultTools are copied in when Config.Tools is nil.
var DefaultTools = []string{"dmsetup", "mkfs.ext4"}

// Config says what a test-host run builds and runs.
type Config struct {
	// CacheDir holds unpacked kernels (one directory per package version).
	CacheDir string
	// Packages are the Go packages whose tests run inside, in order.
	Packages []string
	// Run, when set, is the -test.run pattern.
	Run string
	// Race builds the tests with the race detector (slower under TCG).
	Race bool
	// Modules are loaded, with their dependencies, before the tests.
	Modules []string
	// Tools are host programs the tests run, copied in with their shared
	// libraries.
	Tools []string
	// Env is extra environment for the tests; EMBER_REQUIRE_ALL is passed
	// through from this process's environment.
	Env []string
	// MemoryMiB and CPUs size the VM (default 2048 and 2).
	MemoryMiB, CPUs int
	// Timeout bounds the tests inside the VM (default 10 minutes).
	Timeout time.Duration
	// Output receives the VM's console, line by line.
	Output io.Writer
	// Log receives progress.
	Log *slog.Logger
}

// Run builds the initramfs, boots the VM and returns the tests' exit
// status: 0 when every package passed. An error means the run itself broke
// (no kernel, a build failure, no exit marker on the console).
func Run(ctx context.Context, cfg Config) (int, error) {
	if cfg.Modules == nil {
		cfg.Modules = DefaultModules
	}
	if cfg.Tools == nil {
		cfg.Tools = DefaultTools
	}
	cfg.MemoryMiB = cmp(cfg.MemoryMiB, 2048)
	cfg.CPUs = cmp(cfg.CPUs, 2)
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if cfg.Output == nil {
		cfg.Output = os.Stdout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	begin := time.Now()
	k, err := FetchKernel(ctx, cfg.CacheDir)
	if err != nil {
		return 0, err
	}
	log.Info("kernel ready", "package", k.Package, "version", k.Version, "duration", time.Since(begin))
	work, err := os.MkdirTemp("", "ember-testhost-*")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(work)

	begin = time.Now()
	a := archive{}
	if err := addTests(ctx, a, work, cfg); err != nil {
		return 0, err
	}
	log.Info("tests built", "packages", len(cfg.Packages), "duration", time.Since(begin))
	mods, err := k.Modules(cfg.Modules)
	if err != nil {
		return 0, err
	}
	var loads []string
	for _, m := range mods {
		dst := "lib/modules/" + filepath.Base(m)
		a.copyOf(dst, 0o644, filepath.Join(k.Root, "lib", "modules", k.Release, m))
		loads = append(loads, "/"+dst)
	}
	for _, tool := range cfg.Tools {
		if err := addProgram(ctx, a, tool); err != nil {
			return 0, err
		}
	}
	a.copyOf("bin/busybox", 0o755, "/bin/busybox")
	a.file("init", 0o755, initScript(loads, env(cfg), cfg))
	initrd := filepath.Join(work, "initrd.gz")
	if err := writeInitrd(initrd, a); err != nil {
		return 0, err
	}
	st, _ := os.Stat(initrd)
	log.Info("initramfs written", "bytes", st.Size())

	return boot(ctx, k, initrd, cfg, log)
}

func cmp(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// env is the tests' environment inside the VM.
func env(cfg Config) []string {
	e := []string{EnvInside + "=1"}
	if v := os.Getenv("EMBER_REQUIRE_ALL"); v != "" {
		e = append(e, "EMBER_REQUIRE_ALL="+v)
	}
	return append(e, cfg.Env...)
}

// addTests compiles each package's tests into the archive's /tests, named
// so they run in the given order.
func addTests(ctx context.Context, a archive, work string, cfg Config) error {
	var env []string
	args := []string{"test", "-c"}
	if cfg.Race {
		args = append(args, "-race")
	} else {
		env = append(env, "CGO_ENABLED=0") // static: no libraries to copy
	}
	for i, pkg := range cfg.Packages {
		name := fmt.Sprintf("%02d-%s.test", i, filepath.Base(pkg))
		out := filepath.Join(work, name)
		if _, err := runner.RunIn(ctx, "", env, "go", append(args, "-o", out, pkg)...); err != nil {
			return fmt.Errorf("build tests of %s: %w", pkg, err)
		}
		if _, err := os.Stat(out); err != nil {
			continue // no test files
		}
		if cfg.Race {
			if err := addLibraries(ctx, a, out); err != nil {
				return err
			}
		}
		a.copyOf("tests/"+name, 0o755, out)
	}
	return nil
}

// addProgram copies the host program name and its shared libraries into
// the archive at the same paths.
func addProgram(ctx context.Context, a archive, name string) error {
	p, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("test host tool %s: %w", name, err)
	}
	a.copyOf(p, 0o755, p)
	return addLibraries(ctx, a, p)
}

// addLibraries copies the shared libraries ldd lists for bin.
func addLibraries(ctx context.Context, a archive, bin string) error {
	out, err := runner.Run(ctx, "ldd", bin)
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) || strings.Contains(err.Error(), "not a dynamic executable") {
			return nil
		}
		return fmt.Errorf("libraries of %s: %w", bin, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0] // the dynamic loader
		default:
			continue
		}
		a.copyOf(lib, 0o755, lib)
	}
	return nil
}

// initScript is the VM's /init: mount the basics, load the modules, run
// every test binary and print the exit marker, then power off.
func initScript(modules, env []string, cfg Config) []byte {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=90% tmp /tmp
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod %s || echo 'testhost: insmod %s failed'\n", m, filepath.Base(m))
	}
	b.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp\n")
	b.WriteString("export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n")
	for _, e := range env {
		fmt.Fprintf(&b, "export %s\n", shellQuote(e))
	}
	args := "-test.v -test.count=1 -test.timeout=" + cfg.Timeout.String()
	if cfg.Run != "" {
		args += " -test.run=" + shellQuote(cfg.Run)
	}
	fmt.Fprintf(&b, `rc=0
for t in /tests/*.test; do
	[ -e "$t" ] || continue
	echo "=== testhost: $t"
	mkdir -p /tmp/work && cd /tmp/work
	"$t" %s || rc=1
	cd / && rm -rf /tmp/work
done
echo "%s$rc"
sync
reboot -f
`, args, ExitMarker)
	return []byte(b.String())
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// writeInitrd writes the archive gzipped.
func writeInitrd(path string, a archive) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	z, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err := a.write(z, os.ReadFile); err != nil {
		return err
	}
	if err := z.Close(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// boot runs the VM to the end and returns the status its marker carries.
func boot(ctx context.Context, k Kernel, initrd string, cfg Config, log *slog.Logger) (int, error) {
	khz, err := tscKHz()
	if err != nil {
		return 0, err
	}
	// Under TCG the kernel must be told the TSC's frequency, or about a
	// third of boots hang calibrating it (HZ is 250).
	appendLine := fmt.Sprintf("console=ttyS0 loglevel=3 panic=-1 rdinit=/init tsc_early_khz=%d lpj=%d no_timer_check",
		khz, khz*1000/250)
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35", "-cpu", "max", "-accel", "tcg",
		"-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs),
		"-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", k.Vmlinuz, "-initrd", initrd, "-append", appendLine)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start test host: %w", err)
	}
	code := -1
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(cfg.Output, line)
		if v, ok := strings.CutPrefix(line, ExitMarker); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				code = n
			}
		}
	}
	werr := cmd.Wait()
	log.Info("test host finished", "duration", time.Since(begin), "status", code)
	if code < 0 {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("test host: no exit status before the deadline: %w", ctx.Err())
		}
		return 0, fmt.Errorf("test host: no exit status on the console (qemu: %v: %s)", werr, strings.TrimSpace(stderr.String()))
	}
	return code, nil
}

// tscKHz is the host's TSC frequency in kHz, from /proc/cpuinfo's "cpu
// MHz" (a constant TSC runs at it) unless the kernel exports it.
func tscKHz() (int64, error) {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if khz, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && khz > 0 {
			return khz, nil
		}
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
				return int64(math.Round(mhz * 1000)), nil
			}
		}
	}
	return 0, errors.New("host tsc frequency: no cpu MHz in /proc/cpuinfo")
}
