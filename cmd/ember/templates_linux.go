//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/template"
)

// localBuild builds the default template, or one around a supplied
// kernel, into the registry directory dir, without a daemon.
func localBuild(cmd *cobra.Command, args []string, dir, kernel string) error {
	name := template.DefaultName
	if len(args) == 1 {
		name = args[0]
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	t, err := buildTemplate(cmd.Context(), envOr("EMBER_CACHE_DIR", defaultCacheDir), template.Registry{Dir: dir}, name, kernel, log)
	if errors.Is(err, template.ErrInvalidKernel) {
		return fmt.Errorf("invalid_kernel: %w", err)
	}
	if err != nil {
		return err
	}
	fmt.Printf("%s: kernel %s, rootfs %s allocated (%d MiB disk) in %s\n", t.Name, humanBytes(t.KernelBytes),
		humanBytes(t.RootfsBytes), t.RootfsSizeBytes>>20, filepath.Dir(t.Rootfs))
	return nil
}

// ensureDefaultTemplate builds the default template into reg if it is
// missing or stale, printing each step (the first build compiles a kernel).
func ensureDefaultTemplate(ctx context.Context, cacheDir string, reg template.Registry, log *slog.Logger) (template.Template, error) {
	return buildTemplate(ctx, cacheDir, reg, template.DefaultName, "", log)
}

// buildTemplate builds the template name into reg if it is missing or
// stale, around kernel when set, printing each step.
func buildTemplate(ctx context.Context, cacheDir string, reg template.Registry, name, kernel string, log *slog.Logger) (template.Template, error) {
	agentBin, err := template.AgentBinary()
	if err != nil {
		return template.Template{}, err
	}
	b := &template.Builder{CacheDir: cacheDir, Log: log, KernelPath: kernel, Progress: func(step string) {
		fmt.Fprintf(os.Stderr, "ember: template %s: %s\n", name, step)
	}}
	return b.Build(ctx, reg, name, agentBin)
}
