//go:build linux

package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/doctor"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/vmm/accel"
)

func doctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host the way the daemon will use it, and say how to fix what is missing",
		Long: "Check this host the way `ember serve` will use it: root, the kernel, KVM (with the daemon's own\n" +
			"probe boot of the default template's kernel), QEMU, Firecracker, the disk backends the data\n" +
			"directory allows, /dev/shm against the configured capacity, cgroups, nftables, IP forwarding,\n" +
			"the uplink, userfaultfd, KSM, free disk and the API's port. One line per check: ok, warn or\n" +
			"fail, the finding and the fix. It reads the daemon's configuration file and takes its flags.\n" +
			"The exit code is 0 when the daemon can serve, 1 when a check failed; `ember serve` runs the\n" +
			"same checks at start and refuses to start on a failing one.",
		Example: "  ember doctor\n" +
			"  ember doctor --json | jq '.checks[] | select(.status != \"ok\")'\n" +
			"  ember doctor --config /srv/ember/ember.toml --data-dir /srv/ember",
		Args: cobra.NoArgs,
	}
	load := configFlags(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := load()
		if err != nil {
			return err
		}
		rep := checkHost(cmd.Context(), cfg, newProber(cfg.Serve, slog.New(slog.DiscardHandler)), false)
		if asJSON {
			err = rep.WriteJSON(os.Stdout)
		} else {
			err = rep.WriteText(os.Stdout)
		}
		if err != nil {
			return err
		}
		if !rep.CanServe {
			return exitError{code: 1}
		}
		return nil
	}
	return cmd
}

// checkHost runs the host checks for cfg with the daemon's prober;
// starting says the daemon itself asks, before it starts.
func checkHost(ctx context.Context, cfg *config.Config, prober *accel.Prober, starting bool) doctor.Report {
	return doctor.Run(ctx, cfg, doctor.System{Prober: prober},
		doctor.Options{Starting: starting, MemoryMiB: sandbox.DefaultConfig("").DefaultMemoryMiB})
}
