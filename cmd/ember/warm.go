package main

import (
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
)

// templateWarmCmd lists the warm pools, or sets one template's.
func templateWarmCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm [TEMPLATE COUNT]",
		Short: "List the warm pools, or set how many sandboxes of a template are kept restored ahead of demand",
		Long: "Without arguments, list each template's warm pool. With a template and a count, keep that many\n" +
			"of its sandboxes restored ahead of demand: a create of the template's default shape claims one\n" +
			"in a fraction of a restore. Lowering a pool returns once the surplus is gone. The size lasts\n" +
			"until the daemon restarts, which starts from its warm setting (ember serve --warm base=4).",
		Example: "  ember template warm\n  ember template warm base 4\n  ember template warm base 0",
		Args: cobra.MatchAll(cobra.MaximumNArgs(2), func(_ *cobra.Command, args []string) error {
			if len(args) == 1 {
				return fmt.Errorf("give a template and a count, or neither")
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			var pools []client.WarmPool
			if len(args) == 2 {
				n, err := strconv.Atoi(args[1])
				if err != nil || n < 0 {
					return fmt.Errorf("count %q: want 0 or more", args[1])
				}
				p, err := c.SetWarmPool(cmd.Context(), args[0], n)
				if err != nil {
					return err
				}
				pools = []client.WarmPool{p}
			} else if pools, err = c.WarmPools(cmd.Context()); err != nil {
				return err
			}
			if asJSON {
				return printJSON(pools)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TEMPLATE\tTARGET\tREADY\tSTARTING\tLAST ERROR")
			for _, p := range pools {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", p.Template, p.Target, p.Ready, p.Starting, p.LastError)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printKSMAndWarm adds the host's page merging and the warm pools to
// `ember info`.
func printKSMAndWarm(info client.Info) {
	fmt.Printf("ksm:        %s (%d pages sharing)\n", info.KSM.State, info.KSM.PagesSharing)
	for _, p := range info.Warm {
		fmt.Printf("warm:       %s: %d of %d ready, %d starting\n", p.Template, p.Ready, p.Target, p.Starting)
	}
}
