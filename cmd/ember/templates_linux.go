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

func templateBuildCmd() *cobra.Command {
	var dir, kernel string
	cmd := &cobra.Command{
		Use:   "build [NAME]",
		Short: "Build a template locally if it is missing or stale (no daemon needed)",
		Long: `Build a template into the registry directory: the default template ("base")
from ember's own kernel, or a template named NAME around a kernel you supply
(--kernel: an uncompressed x86-64 vmlinux with a PVH entry note, such as a
PVM guest kernel). The daemon decides each kernel's accelerator with a probe
boot, so a kernel that boots under this host's KVM runs under KVM.`,
		Example: `  ember template build
  ember template build pvm --kernel /boot/vmlinux-pvm
  ember create --template pvm`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
		},
	}
	cmd.Flags().StringVar(&dir, "dir", filepath.Join(defaultDataDir, "templates"), "template registry directory")
	cmd.Flags().StringVar(&kernel, "kernel", "", "build around this kernel (uncompressed vmlinux with a PVH entry note) instead of ember's")
	return cmd
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
