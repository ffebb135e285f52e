// Command ember is the ember daemon (`ember serve`) and its command-line
// client (every other subcommand, built on the Go SDK in client/).
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/config"
)

// version and commit are set at build time with -ldflags "-X main.version=...
// -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

// Defaults the daemon and the CLI agree on.
const (
	defaultListen   = config.DefaultListen
	defaultDataDir  = config.DefaultDataDir
	defaultCacheDir = config.DefaultCacheDir
)

// exitError carries a command's exit code out of cobra without printing.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	if err := newRoot().Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "ember:", err)
		os.Exit(1)
	}
}

// newRoot returns the ember command with every subcommand.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "ember",
		Short: "Run untrusted code in microVM sandboxes on a host you own",
		Long: "Run untrusted code in microVM sandboxes on a host you own. `ember serve` is the daemon\n" +
			"(check its host first with `ember doctor`); every other command talks to a daemon, the local\n" +
			"one or the one EMBER_URL names (with EMBER_API_KEY).",
		Example: "  sudo ember doctor\n" +
			"  sudo ember serve\n" +
			"  id=$(ember create) && ember exec $id -- uname -a && ember rm $id",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), doctorCmd(), createCmd(), lsCmd(), getCmd(), execCmd(), rmCmd(), networkCmd(), templateCmd(), infoCmd(),
		pauseCmd(), resumeCmd(), timeoutCmd(), forkCmd(), snapshotCmd(), versionCmd(), statsCmd(), eventsCmd(),
		cpCmd(), filesCmd(), shellCmd(), keyCmd())
	root.AddCommand(helperCmds()...)
	completionExamples(root)
	return root
}

// apiClient returns an SDK client for the daemon named by EMBER_URL and
// EMBER_API_KEY, falling back to the local daemon and its key file.
func apiClient() (*client.Client, error) {
	url := os.Getenv("EMBER_URL")
	if url == "" {
		url = "http://" + defaultListen
	}
	key := os.Getenv("EMBER_API_KEY")
	if key == "" {
		dir := os.Getenv("EMBER_DATA_DIR")
		if dir == "" {
			dir = defaultDataDir
		}
		b, err := os.ReadFile(filepath.Join(dir, "api-key"))
		if err != nil {
			return nil, fmt.Errorf("no API key: set EMBER_API_KEY or run as a user who can read %s/api-key: %w", dir, err)
		}
		key = strings.TrimSpace(string(b))
	}
	return client.New(url, key), nil
}

// envOr returns the environment variable name, or def when it is unset.
func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
