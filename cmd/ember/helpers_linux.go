//go:build linux

package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/memory/uffd"
)

// helperCmds are the processes the daemon starts from its own binary,
// hidden from the CLI's help: a restored Firecracker machine's page server.
func helperCmds() []*cobra.Command {
	return []*cobra.Command{{
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
