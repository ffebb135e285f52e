package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/emberhq/ember/client"
)

func createCmd() *cobra.Command {
	var req client.CreateSandboxRequest
	var env, meta, allow, deny []string
	var asJSON, noInternet bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and print its id",
		Example: "  ember create\n" +
			"  ember create --template base --memory 512 --vcpus 2 --env GREETING=hello\n" +
			"  ember create --snapshot kept --auto-pause --timeout 3600\n" +
			"  ember create --no-internet --allow 10.0.0.0/8 --json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if req.Env, err = keyValues("--env", env); err != nil {
				return err
			}
			if req.Metadata, err = keyValues("--metadata", meta); err != nil {
				return err
			}
			if req.Snapshot != "" && !cmd.Flags().Changed("template") {
				req.Template = "" // the snapshot names its template
			}
			if noInternet || len(allow) > 0 || len(deny) > 0 {
				internet := !noInternet
				req.Network = &client.NetworkPolicy{Internet: &internet, Allow: allow, Deny: deny}
			}
			c, err := apiClient()
			if err != nil {
				return err
			}
			sb, err := c.CreateSandbox(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sb)
			}
			fmt.Println(sb.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&req.Template, "template", "t", "base", "template to create the sandbox from")
	f.StringVar(&req.Snapshot, "snapshot", "", "snapshot to restore instead of booting the template")
	f.BoolVar(&req.AutoPause, "auto-pause", false, "pause instead of destroying the sandbox at its end time")
	f.IntVar(&req.VCPUs, "vcpus", 0, "virtual CPUs (default: the daemon's, 1)")
	f.IntVar(&req.MemoryMiB, "memory", 0, "memory in MiB (default: the daemon's, 256)")
	f.IntVar(&req.DiskMiB, "disk", 0, "root disk size in MiB (default: the template's)")
	f.IntVar(&req.TimeoutS, "timeout", 0, "seconds until the sandbox is destroyed, or paused with --auto-pause (default: the daemon's, 300)")
	f.StringArrayVarP(&env, "env", "e", nil, "KEY=VALUE default environment of every command (repeatable)")
	f.StringArrayVar(&meta, "metadata", nil, "KEY=VALUE metadata (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the whole sandbox as JSON")
	policyFlags(f, &noInternet, &allow, &deny)
	return cmd
}

func policyFlags(f *pflag.FlagSet, noInternet *bool, allow, deny *[]string) {
	f.BoolVar(noInternet, "no-internet", false, "reach only the --allow prefixes")
	f.StringArrayVar(allow, "allow", nil, "CIDR reachable even with --no-internet (repeatable)")
	f.StringArrayVar(deny, "deny", nil, "CIDR never reachable; beats --allow (repeatable)")
}

func networkCmd() *cobra.Command {
	var allow, deny []string
	var noInternet bool
	cmd := &cobra.Command{
		Use:   "network ID",
		Short: "Replace a running sandbox's egress policy (takes effect at once)",
		Example: "  ember network SANDBOX --no-internet --allow 198.51.100.0/24\n" +
			"  ember network SANDBOX --deny 10.0.0.0/8",
		Long: "Replace a running sandbox's egress policy. A destination in --deny is refused; else one in\n" +
			"--allow is reached; else the internet is reachable unless --no-internet. The host, other\n" +
			"sandboxes and 169.254.169.254 are never reachable.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			internet := !noInternet
			sb, err := c.SetNetwork(cmd.Context(), args[0], client.NetworkPolicy{Internet: &internet, Allow: allow, Deny: deny})
			if err != nil {
				return err
			}
			return printJSON(sb.Network)
		},
	}
	policyFlags(cmd.Flags(), &noInternet, &allow, &deny)
	return cmd
}

func keyValues(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func lsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Example: "  ember ls\n" +
			"  ember ls --json | jq -r '.[] | select(.state == \"paused\") | .id'",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			sbs, err := c.ListSandboxes(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(sbs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tTEMPLATE\tVCPUS\tMEMORY\tUSED\tCPU\tAGE\tEXPIRES IN")
			now := time.Now()
			for _, sb := range sbs {
				// USED and CPU are what the sandbox's cgroup says its
				// processes use now, out of its limit.
				used, cpu := "-", "-"
				if u := sb.Usage; u != nil {
					used = fmt.Sprintf("%d MiB", u.MemoryBytes>>20)
					if sb.Limits != nil && sb.Limits.MemoryMiB > 0 {
						used += fmt.Sprintf("/%d", sb.Limits.MemoryMiB)
					}
					cpu = (time.Duration(u.CPUNanos) * time.Nanosecond).Round(10 * time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\t%s\t%s\n", sb.ID, sb.State, sb.Template, sb.VCPUs,
					sb.MemoryMiB, used, cpu, now.Sub(sb.CreatedAt).Round(time.Second), sb.ExpiresAt.Sub(now).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func getCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "get ID",
		Short:             "Show one sandbox as JSON",
		Example:           "  ember get SANDBOX\n  ember get SANDBOX | jq .timings_ms",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			sb, err := c.GetSandbox(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printJSON(sb)
		},
	}
}

func execCmd() *cobra.Command {
	var env []string
	var cwd, user string
	var timeout int
	var stdin bool
	cmd := &cobra.Command{
		Use:   "exec ID -- CMD [ARGS...]",
		Short: "Run a command in a sandbox, streaming its output; exits with its exit code",
		Example: "  ember exec SANDBOX -- uname -a\n" +
			"  ember exec -e NAME=world -w /tmp SANDBOX -- sh -c 'echo hello $NAME'\n" +
			"  echo data | ember exec -i SANDBOX -- cat",
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: completeSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := keyValues("--env", env)
			if err != nil {
				return err
			}
			req := client.ExecRequest{Cmd: args[1], Args: args[2:], Env: e, Cwd: cwd, User: user, TimeoutS: timeout}
			c, err := apiClient()
			if err != nil {
				return err
			}
			var in io.Reader
			if stdin {
				// Streamed as it is read: each line typed reaches the
				// command at once; the end of input closes its stdin.
				in = os.Stdin
			}
			res, err := c.ExecPipe(cmd.Context(), args[0], req, in, os.Stdout, os.Stderr)
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return exitError{res.ExitCode}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "KEY=VALUE environment variable (repeatable)")
	f.StringVarP(&cwd, "cwd", "w", "", "working directory")
	f.StringVarP(&user, "user", "u", "", "guest user to run as (default user, the unprivileged account)")
	f.IntVar(&timeout, "timeout", 0, "seconds before the command is killed (default: the daemon's, 60)")
	f.BoolVarP(&stdin, "stdin", "i", false, "stream this command's standard input to the command")
	return cmd
}

func rmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm ID...",
		Aliases: []string{"kill"},
		Short:   "Destroy sandboxes",
		Example: "  ember rm SANDBOX\n" +
			"  ember rm $(ember ls --json | jq -r '.[].id')",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeSandboxes,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			var failed bool
			for _, id := range args {
				if err := c.DeleteSandbox(cmd.Context(), id); err != nil {
					fmt.Fprintf(os.Stderr, "ember: rm %s: %v\n", id, err)
					failed = true
				}
			}
			if failed {
				return exitError{1}
			}
			return nil
		},
	}
}

func infoCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "info",
		Short:   "Show which VMM, accelerators and disk backend the daemon uses, and why",
		Example: "  ember info\n  EMBER_URL=http://10.0.0.5:7070 EMBER_API_KEY=... ember info",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			info, err := c.Info(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Printf("version:    %s\nvmm:        %s (%s)\nrootfs:     %s (%s)\nsandboxes:  %d\n",
				info.Version, info.VMM, info.VMMReason, info.Rootfs, info.RootfsReason, info.Sandboxes)
			for _, a := range info.Accelerators {
				fmt.Printf("accel:      %s: %s\n", a.Template, a.Reason)
			}
			printKSMAndWarm(info)
			if c := info.Capacity; c != nil {
				fmt.Printf("capacity:   memory %d/%d MiB (%d MiB per vmm), vcpus %d/%d, shm %d/%d MiB, %d machines; creates %d/%d running, %d/%d queued (wait %d ms)\n",
					c.MemoryMiB, c.MemoryLimitMiB, c.OverheadMiB, c.VCPUs, c.VCPULimit, c.ShmMiB, c.ShmLimitMiB, c.Machines,
					c.Running, c.MaxParallel, c.Waiting, c.MaxQueue, c.QueueWaitMillis)
			}
			for _, c := range info.Confinement {
				state := "off"
				if c.On {
					state = "on"
				}
				fmt.Printf("confine:    %s %s: %s\n", c.Name, state, c.Detail)
			}
			return nil
		},
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
