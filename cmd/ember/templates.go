package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func templateCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "template", Short: "Manage templates",
		Example: "  ember template ls\n  ember template build\n  ember template warm base 4"}
	cmd.AddCommand(templateLsCmd(), templateBuildCmd(), templateWarmCmd())
	return cmd
}

func templateLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List templates with their sizes",
		Example: "  ember template ls\n  ember template ls --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			tpls, err := c.ListTemplates(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(tpls)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKERNEL\tROOTFS (ALLOCATED)\tDISK\tBUILT")
			for _, t := range tpls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%s\n", t.Name, humanBytes(t.KernelBytes), humanBytes(t.RootfsBytes),
					t.DiskMiB, t.BuiltAt.Local().Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
