// Command testhost runs the test-host tier: the tests of the named Go
// packages (by default every package whose tests call testhost.Require)
// inside a QEMU TCG VM booted from a Debian kernel, with device-mapper,
// nbd and KVM available. It exits with the tests' status.
//
//	go run ./test/testhost [-run RE] [-race] [-env K=V] [-memory MiB] [packages]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/testhost"
)

// marker is the import that puts a package's tests in this tier.
const marker = "github.com/emberhq/ember/internal/testhost"

func main() {
	cache := flag.String("cache", "/var/cache/ember/testhost", "directory for unpacked kernels")
	run := flag.String("run", "", "run only tests matching this pattern")
	race := flag.Bool("race", false, "build the tests with the race detector")
	timeout := flag.Duration("timeout", 10*time.Minute, "bound on the tests inside the VM")
	mem := flag.Int("memory", 2048, "VM memory in MiB")
	var env []string
	flag.Func("env", "KEY=VALUE for the tests' environment (repeatable)", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("want KEY=VALUE, got %q", v)
		}
		env = append(env, v)
		return nil
	})
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pkgs := flag.Args()
	if len(pkgs) == 0 {
		var err error
		if pkgs, err = marked(ctx); err != nil {
			log.Error("find test-host packages", "err", err)
			os.Exit(2)
		}
	}
	log.Info("test host", "packages", pkgs)
	code, err := testhost.Run(ctx, testhost.Config{
		CacheDir: *cache, Packages: pkgs, Run: *run, Race: *race,
		Timeout: *timeout, MemoryMiB: *mem, Env: env, Log: log,
	})
	if err != nil {
		log.Error("test host", "err", err)
		os.Exit(2)
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "test host: tests failed (status %d)\n", code)
	}
	os.Exit(code)
}

// marked lists the packages whose tests import the testhost package.
func marked(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-e", "-f",
		`{{.ImportPath}} {{join .TestImports " "}} {{join .XTestImports " "}}`, "github.com/emberhq/ember/...").Output()
	if err != nil {
		return nil, err
	}
	var pkgs []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if f[0] == marker {
			pkgs = append(pkgs, f[0]) // its own tests check the tier
			continue
		}
		for _, imp := range f[1:] {
			if imp == marker {
				pkgs = append(pkgs, f[0])
				break
			}
		}
	}
	return pkgs, nil
}
