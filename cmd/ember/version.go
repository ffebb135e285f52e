package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/config"
)

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ember's version, commit, Go version and the VMMs and disk backends it can use",
		Long: "Print this binary's version, commit and Go version, the VMM drivers and disk backends it\n" +
			"chooses among (`ember doctor` says which this host gets, and why), and, when a daemon\n" +
			"answers, the daemon's version and choices: after an upgrade the two should agree.",
		Example: "  ember version\n  EMBER_URL=http://10.0.0.5:7070 ember version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), versionText(), daemonVersion(cmd.Context()), "\n")
			return err
		},
	}
}

// versionText describes this binary.
func versionText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ember %s\n", version)
	fmt.Fprintf(&b, "commit:  %s\n", buildCommit())
	fmt.Fprintf(&b, "go:      %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "vmm:     %s (automatic: firecracker where its binary exists and KVM boots the default kernel, else qemu)\n",
		strings.Join(config.Choices("vmm"), ", "))
	fmt.Fprintf(&b, "rootfs:  %s (automatic: the first this host runs, in that order)\n", strings.Join(config.Choices("rootfs"), ", "))
	return b.String()
}

// buildCommit is the commit the Makefile stamps in, else the one the Go
// toolchain recorded, else "unknown".
func buildCommit() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// daemonVersion says which daemon answers and what it chose, in one line.
func daemonVersion(ctx context.Context) string {
	c, err := apiClient()
	if err != nil {
		return "daemon:  not asked (" + err.Error() + ")"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return "daemon:  none answering (" + err.Error() + ")"
	}
	return fmt.Sprintf("daemon:  %s, vmm %s, rootfs %s", info.Version, info.VMM, info.Rootfs)
}

// completionExamples gives cobra's completion commands examples, as every
// command has.
func completionExamples(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(ember completion bash)\n" +
			"  ember completion zsh > \"${fpath[1]}/_ember\"\n" +
			"  ember completion fish > ~/.config/fish/completions/ember.fish"
		for _, sh := range c.Commands() {
			sh.Example = "  ember completion " + sh.Name() + " > ember." + sh.Name()
		}
	}
}

// completeSandbox completes a command's first argument with the ids of the
// daemon's sandboxes.
func completeSandbox(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return completeSandboxes(cmd, args, "")
}

// completeSandboxes completes any argument with the ids of the daemon's
// sandboxes (with their state as the description); none when no daemon
// answers.
func completeSandboxes(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	c, err := apiClient()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	sbs, err := c.ListSandboxes(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	out := make([]string, 0, len(sbs))
	for _, sb := range sbs {
		out = append(out, sb.ID+"\t"+sb.State+" "+sb.Template)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
