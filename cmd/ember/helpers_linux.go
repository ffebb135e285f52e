//go:build linux

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/memory/uffd"
	"github.com/emberhq/ember/internal/vmm/qemu"
)

// helperCmds are the processes the daemon starts from its own binary,
// hidden from the CLI's help: a restored Firecracker machine's page server,
// and the copy of a restored QEMU machine's RAM made in its cgroup.
func helperCmds() []*cobra.Command {
	return []*cobra.Command{{
		Use:                qemu.CopyCommand + " SRC DST",
		Short:              "Copy a snapshot's guest RAM into a machine's RAM file (started by the daemon)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return qemu.RunCopy(cmd.Context(), args)
		},
	}, {
		Use:                uffd.HelperCommand,
		Short:              "Serve a restored machine's memory (started by the daemon)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return uffd.RunHelper(ctx, args, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		},
	}}
}
