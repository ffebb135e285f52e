package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
)

// sandboxCall is a one-argument sandbox command printing the sandbox's new
// state (or all of it with --json).
func sandboxCall(use, short string, call func(ctx context.Context, c *client.Client, id string) (client.Sandbox, error)) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               use + " ID",
		Short:             short,
		Example:           "  ember " + use + " SANDBOX\n  ember " + use + " --json SANDBOX",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			sb, err := call(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sb)
			}
			fmt.Println(sb.State)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the whole sandbox as JSON")
	return cmd
}

func pauseCmd() *cobra.Command {
	return sandboxCall("pause", "Pause a sandbox: save its memory, stop its machine, keep its disk",
		func(ctx context.Context, c *client.Client, id string) (client.Sandbox, error) {
			return c.PauseSandbox(ctx, id)
		})
}

func resumeCmd() *cobra.Command {
	return sandboxCall("resume", "Resume a paused sandbox exactly as it was",
		func(ctx context.Context, c *client.Client, id string) (client.Sandbox, error) {
			return c.ResumeSandbox(ctx, id)
		})
}

func timeoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "timeout ID SECONDS",
		Short:             "Set a sandbox's end time to now + SECONDS",
		Example:           "  ember timeout SANDBOX 3600",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil {
				return fmt.Errorf("SECONDS %q: not a whole number", args[1])
			}
			c, err := apiClient()
			if err != nil {
				return err
			}
			sb, err := c.SetTimeout(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			fmt.Println(sb.ExpiresAt.Local().Format(time.RFC3339))
			return nil
		},
	}
}

func forkCmd() *cobra.Command {
	var n int
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "fork ID",
		Short:             "Make copies of a running sandbox as it is now and print their ids",
		Example:           "  ember fork SANDBOX\n  ember fork --count 3 SANDBOX",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			sbs, err := c.ForkSandbox(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sbs)
			}
			for _, sb := range sbs {
				fmt.Println(sb.ID)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 1, "how many copies")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new sandboxes as JSON")
	return cmd
}

func snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list and delete snapshots (sandboxes can be created from them)",
		Example: "  ember snapshot create SANDBOX kept\n" +
			"  ember create --snapshot kept\n" +
			"  ember snapshot ls\n" +
			"  ember snapshot rm kept",
	}
	create := &cobra.Command{
		Use:               "create ID NAME",
		Short:             "Snapshot a running or paused sandbox (it keeps running)",
		Example:           "  ember snapshot create SANDBOX kept",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			sn, err := c.CreateSnapshot(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return printJSON(sn)
		},
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots",
		Example: "  ember snapshot ls\n  ember snapshot ls --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			sns, err := c.ListSnapshots(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sns)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSANDBOX\tTEMPLATE\tVCPUS\tMEMORY\tDISK USED\tMEMORY USED\tAGE")
			now := time.Now()
			for _, sn := range sns {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\t%s\n", sn.Name, sn.Sandbox, sn.Template, sn.VCPUs, sn.MemoryMiB,
					mib(sn.DiskBytes), mib(sn.MemoryBytes), now.Sub(sn.CreatedAt).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete snapshots no sandbox was created from",
		Example: "  ember snapshot rm kept",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := c.DeleteSnapshot(cmd.Context(), name); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.AddCommand(create, ls, rm)
	return cmd
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
