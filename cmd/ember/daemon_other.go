//go:build !linux

package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// errLinuxOnly is what the daemon's commands say on other systems: the CLI
// talks to a daemon anywhere (EMBER_URL), but the daemon and local template
// builds need Linux.
var errLinuxOnly = errors.New("the daemon runs on Linux: run this on the host that serves sandboxes, or point EMBER_URL at it")

func serveCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "serve",
		Short:   "Run the ember daemon (Linux only)",
		Example: "  ember serve",
		Args:    cobra.ArbitraryArgs,
		RunE:    func(*cobra.Command, []string) error { return errLinuxOnly },
	}
}

func doctorCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "doctor",
		Short:   "Check the host the daemon runs on (Linux only)",
		Example: "  ember doctor",
		Args:    cobra.ArbitraryArgs,
		RunE:    func(*cobra.Command, []string) error { return errLinuxOnly },
	}
}

// localBuild is a local template build, which needs Linux.
func localBuild(*cobra.Command, []string, string, string) error { return errLinuxOnly }
