package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/apikey"
)

// keyCmd manages the daemon's API key, on the daemon's host.
func keyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage the daemon's API key",
		Example: "  sudo ember key rotate"}
	var dataDir string
	rotate := &cobra.Command{
		Use:     "rotate",
		Short:   "Replace the API key; the running daemon takes the new one at once and refuses the old",
		Example: "  sudo ember key rotate\n  sudo ember key rotate --data-dir /srv/ember",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := apikey.Rotate(filepath.Join(dataDir, apikey.FileName))
			if err != nil {
				return err
			}
			fmt.Fprintln(os.Stdout, key)
			return nil
		},
	}
	rotate.Flags().StringVar(&dataDir, "data-dir", envOr("EMBER_DATA_DIR", defaultDataDir), "the daemon's data directory, which holds the key")
	cmd.AddCommand(rotate)
	return cmd
}
