package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/presets"
	"github.com/emberhq/ember/wire"
)

func templateCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "template", Short: "Manage templates",
		Example: "  ember template ls\n  ember template build code --preset code\n  ember template build app -f Dockerfile .\n  ember template rm app\n  ember template warm base 4"}
	cmd.AddCommand(templateLsCmd(), templateBuildCmd(), templateRmCmd(), templateWarmCmd())
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
			fmt.Fprintln(tw, "NAME\tKERNEL\tROOTFS (ALLOCATED)\tDISK\tSOURCE\tSHARES STEPS WITH\tBUILT")
			for _, t := range tpls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%s\t%s\t%s\n", t.Name, humanBytes(t.KernelBytes), humanBytes(t.RootfsBytes),
					t.DiskMiB, orDash(t.Source), shares(t.SharedWith), t.BuiltAt.Local().Format("2006-01-02 15:04"))
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

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shares lists the templates a template shares build cache steps with:
// "code (3)".
func shares(with map[string]int) string {
	if len(with) == 0 {
		return "-"
	}
	names := make([]string, 0, len(with))
	for n := range with {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		names[i] = fmt.Sprintf("%s (%d)", n, with[n])
	}
	return strings.Join(names, ", ")
}

func templateRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"delete"},
		Short:   "Delete templates (refused while a sandbox or snapshot needs one)",
		Example: "  ember template rm app",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := c.DeleteTemplate(cmd.Context(), name); err != nil {
					return err
				}
				fmt.Println(name)
			}
			return nil
		},
	}
}

// buildFlags are `ember template build`'s options for a build in the
// daemon, from a Dockerfile or a preset.
type buildFlags struct {
	file, preset, startCmd, readyCmd string
	args                             []string
	diskMiB                          int
	noCache                          bool
}

// remote says whether the flags ask for a build in the daemon.
func (f buildFlags) remote(args []string) bool {
	return f.file != "" || f.preset != "" || len(args) > 1
}

func templateBuildCmd() *cobra.Command {
	var f buildFlags
	var dir, kernel string
	cmd := &cobra.Command{
		Use:   "build NAME [-f Dockerfile] [DIR]",
		Short: "Build a template from a Dockerfile or a preset (in the daemon), or the default template locally",
		Long: `With -f (a Dockerfile) or --preset, the daemon builds template NAME: from the
Dockerfile's FROM (an image in a registry, an OCI layout or image tarball on
the daemon's host, an ember template, or ember's built-in Debian bookworm for
debian:bookworm and ember/debian), each RUN in a build sandbox, every step
cached so a rebuild reuses the unchanged ones. DIR (default .) is the build
context COPY reads from. Progress shows each step n/m, its output as it runs
and the time so far; the template's size ends it.

Without them, the template is built locally, no daemon needed: the default
template ("base") from ember's own kernel, or NAME around a kernel you supply
(--kernel: an uncompressed x86-64 vmlinux with a PVH entry note, such as a
PVM guest kernel).`,
		Example: `  ember template build code --preset code
  ember template build app -f Dockerfile .
  ember template build web -f Dockerfile --start-cmd 'python3 -m http.server 8000' --ready-cmd 'curl -sf localhost:8000' ./web
  ember create --template app
  ember template build
  ember template build pvm --kernel /boot/vmlinux-pvm`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.remote(args) {
				if len(args) == 0 {
					return errors.New("name the template: ember template build NAME -f Dockerfile [DIR]")
				}
				ctxDir := "."
				if len(args) == 2 {
					ctxDir = args[1]
				}
				return remoteBuild(cmd.Context(), args[0], ctxDir, f)
			}
			return localBuild(cmd, args, dir, kernel)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "the Dockerfile (default DIR/Dockerfile when DIR is given)")
	fl.StringVar(&f.preset, "preset", "", "build a ready-made template instead: "+strings.Join(presets.Names(), ", "))
	fl.StringArrayVar(&f.args, "build-arg", nil, "KEY=VALUE for an ARG (repeatable)")
	fl.StringVar(&f.startCmd, "start-cmd", "", "a process sandboxes of the template start with (overrides CMD/ENTRYPOINT)")
	fl.StringVar(&f.readyCmd, "ready-cmd", "", "a command that exits 0 once the start command's process is ready")
	fl.IntVar(&f.diskMiB, "disk-mib", 0, "the template's disk size (default 4096)")
	fl.BoolVar(&f.noCache, "no-cache", false, "run every step again (the results are still cached)")
	fl.StringVar(&dir, "dir", filepath.Join(defaultDataDir, "templates"), "local builds: the template registry directory")
	fl.StringVar(&kernel, "kernel", "", "local builds: build around this kernel (uncompressed vmlinux with a PVH entry note) instead of ember's")
	return cmd
}

// remoteBuild sends the context and the Dockerfile to the daemon and shows
// its progress.
func remoteBuild(ctx context.Context, name, ctxDir string, f buildFlags) error {
	c, err := apiClient()
	if err != nil {
		return err
	}
	req := client.BuildTemplateRequest{Name: name, StartCmd: f.startCmd, ReadyCmd: f.readyCmd, DiskMiB: f.diskMiB,
		NoCache: f.noCache, BuildArgs: map[string]string{}}
	for _, a := range f.args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("--build-arg %q: want KEY=VALUE", a)
		}
		req.BuildArgs[k] = v
	}
	// The Dockerfile travels in the context: where it is when it is in
	// DIR, under a name of its own when it is elsewhere or a preset.
	var extra []byte
	switch {
	case f.preset != "":
		if extra, err = presets.Dockerfile(f.preset); err != nil {
			return err
		}
	case f.file == "":
		req.Dockerfile = "Dockerfile"
	default:
		if rel, err := filepath.Rel(ctxDir, f.file); err == nil && !strings.HasPrefix(rel, "..") {
			req.Dockerfile = filepath.ToSlash(rel)
		} else if extra, err = os.ReadFile(f.file); err != nil {
			return fmt.Errorf("read Dockerfile: %w", err)
		}
	}
	if extra != nil {
		req.Dockerfile = extraDockerfile
	}
	if _, err := os.Stat(ctxDir); err != nil {
		return fmt.Errorf("build context: %w", err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeContext(pw, ctxDir, extra)) }()
	p := &progress{out: os.Stderr, start: time.Now()}
	t, err := c.BuildTemplate(ctx, req, pr, p.show)
	pr.Close()
	if err != nil {
		var be *client.BuildError
		if errors.As(err, &be) {
			return fmt.Errorf("build of %s failed: %s", name, be.Event.Message)
		}
		return err
	}
	fmt.Printf("%s: built in %s: rootfs %s allocated (%d MiB disk)\n", t.Name, time.Since(p.start).Round(100*time.Millisecond),
		humanBytes(t.RootfsBytes), t.DiskMiB)
	return nil
}

// extraDockerfile is where a Dockerfile from outside the context (or a
// preset's) travels in it.
const extraDockerfile = ".ember-dockerfile"

// writeContext writes dir as a tar stream, and the extra Dockerfile
// when there is one.
func writeContext(w io.Writer, dir string, extra []byte) error {
	tw := tar.NewWriter(w)
	if err := addTree(tw, dir, ""); err != nil {
		return fmt.Errorf("send build context: %w", err)
	}
	if extra != nil {
		if err := tw.WriteHeader(&tar.Header{Name: extraDockerfile, Mode: 0o644, Size: int64(len(extra)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(extra); err != nil {
			return err
		}
	}
	return tw.Close()
}

// progress prints a build's events: each step n/m with the time so far,
// the running step's output as it comes, and a failure's last lines.
type progress struct {
	out   io.Writer
	start time.Time
}

func (p *progress) show(ev client.BuildEvent) {
	at := time.Duration(ev.ElapsedMS * float64(time.Millisecond)).Round(100 * time.Millisecond)
	switch ev.Type {
	case wire.BuildStep:
		cached := ""
		if ev.Cached {
			cached = " (cached)"
		}
		fmt.Fprintf(p.out, "[%d/%d %s] %s%s\n", ev.Step, ev.Total, at, ev.Instruction, cached)
	case wire.BuildOutput:
		p.out.Write(ev.Data)
	case wire.BuildStepDone:
		if !ev.Cached {
			fmt.Fprintf(p.out, "  step %d/%d done in %s\n", ev.Step, ev.Total, time.Duration(ev.DurationMS*float64(time.Millisecond)).Round(10*time.Millisecond))
		}
	case wire.BuildLog:
		fmt.Fprintf(p.out, "  %s\n", ev.Message)
	case wire.BuildWarning:
		fmt.Fprintf(p.out, "warning: %s\n", ev.Message)
	case wire.BuildError:
		fmt.Fprintf(p.out, "[error %s] %s (%s)\n", at, ev.Message, ev.Code)
		if ev.ExitCode != nil && len(ev.Output) > 0 {
			fmt.Fprintf(p.out, "  last output of step %d/%d:\n", ev.Step, ev.Total)
			for _, l := range ev.Output {
				fmt.Fprintf(p.out, "  | %s\n", l)
			}
		}
	}
}
