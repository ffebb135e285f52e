// Command benchtemplates measures template builds on a real daemon
// (bin/ember, QEMU guests, packages from the host's Debian mirror) and
// prints `BENCH <name> <value> <unit>` lines: the cold build of the code
// preset, a rebuild with only its last step changed as a ratio of that
// cold build, and create→first exec from the code template as a ratio of
// the same from the default template, measured in the same run.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/presets"
	"github.com/emberhq/ember/test/harness"
	"github.com/emberhq/ember/wire"
)

func main() {
	bin := flag.String("ember", "bin/ember", "the ember binary")
	templates := flag.String("templates", "/var/cache/ember/test-templates", "template registry holding the default template")
	uplink := flag.String("uplink", "", "the host interface toward the Debian mirror the build's apt-get reaches")
	n := flag.Int("n", 5, "creates from each template")
	slot := flag.Int("slot-first", 5400, "the daemon's first network slot")
	flag.Parse()
	if err := run(*bin, *templates, *uplink, *n, *slot); err != nil {
		fmt.Fprintln(os.Stderr, "benchtemplates:", err)
		os.Exit(1)
	}
}

func run(bin, templates, uplink string, n, slot int) error {
	ctx := context.Background()
	dataDir, err := os.MkdirTemp("", "ember-benchtemplates-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	// The daemon builds into a registry of its own, holding the default
	// template.
	registry, err := os.MkdirTemp("", "ember-benchtemplates-registry-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(registry)
	if err := harness.LinkDefaultTemplate(templates, registry); err != nil {
		return err
	}
	logf, err := os.CreateTemp("", "ember-benchtemplates-*.log")
	if err != nil {
		return err
	}
	defer os.Remove(logf.Name())
	d, err := harness.Start(ctx, harness.Options{Bin: bin, Templates: registry, DataDir: dataDir,
		SlotFirst: slot, SlotCount: 40, Log: logf, Uplink: uplink})
	if err != nil {
		return err
	}
	defer func() {
		d.DestroyAll(ctx)
		d.Stop()
		if leaks := d.Leaks(40); len(leaks) > 0 {
			fmt.Fprintln(os.Stderr, "benchtemplates: leaked:", leaks)
		}
	}()
	c := d.Client

	df, err := presets.Dockerfile("code")
	if err != nil {
		return err
	}
	cold, err := build(ctx, c, "code", df)
	if err != nil {
		return fmt.Errorf("cold build of the code preset (daemon log %s): %w", logf.Name(), err)
	}
	fmt.Printf("BENCH template_code_build_s %.1f s\n", cold.Seconds())
	// The same Dockerfile with only its last step changed.
	changed := append(bytes.TrimRight(df, "\n"), []byte(" && echo changed\n")...)
	warm, err := build(ctx, c, "code-rebuilt", changed)
	if err != nil {
		return fmt.Errorf("rebuild with the last step changed: %w", err)
	}
	fmt.Printf("BENCH template_rebuild_last_step_s %.1f s\n", warm.Seconds())
	fmt.Printf("BENCH template_rebuild_last_step_vs_cold %.3f ratio (target <= 0.1)\n", warm.Seconds()/cold.Seconds())

	// create→first exec, alternating templates so both see the same host;
	// a first create of each (the one that boots and snapshots it) is
	// left out.
	times := map[string][]time.Duration{}
	for i := 0; i <= n; i++ {
		for _, tpl := range []string{"base", "code"} {
			dt, err := createExec(ctx, c, tpl)
			if err != nil {
				return fmt.Errorf("create from %s: %w", tpl, err)
			}
			if i > 0 {
				times[tpl] = append(times[tpl], dt)
			}
		}
	}
	base, code := median(times["base"]), median(times["code"])
	fmt.Printf("BENCH create_to_first_exec_base_p50 %.1f ms\n", ms(base))
	fmt.Printf("BENCH create_to_first_exec_code_p50 %.1f ms\n", ms(code))
	fmt.Printf("BENCH create_code_vs_base %.3f ratio (target <= 1.3)\n", code.Seconds()/base.Seconds())
	return nil
}

// build builds a template from a Dockerfile, returning how long it took.
func build(ctx context.Context, c *client.Client, name string, dockerfile []byte) (time.Duration, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), Typeflag: tar.TypeReg}); err != nil {
		return 0, err
	}
	tw.Write(dockerfile)
	if err := tw.Close(); err != nil {
		return 0, err
	}
	var last []string
	start := time.Now()
	_, err := c.BuildTemplate(ctx, client.BuildTemplateRequest{Name: name}, &buf, func(ev client.BuildEvent) {
		if ev.Type == wire.BuildStep {
			fmt.Fprintf(os.Stderr, "%s: [%d/%d] %s (cached %v) at %s\n", name, ev.Step, ev.Total, ev.Instruction, ev.Cached, time.Since(start).Round(time.Second))
		}
		if ev.Type == wire.BuildOutput {
			last = append(last, strings.Split(strings.TrimRight(string(ev.Data), "\n"), "\n")...)
			last = last[max(0, len(last)-20):]
		}
	})
	if err != nil {
		return 0, fmt.Errorf("%w\n%s", err, strings.Join(last, "\n"))
	}
	return time.Since(start), nil
}

// createExec is one create→first exec from a template, the sandbox
// deleted after.
func createExec(ctx context.Context, c *client.Client, tpl string) (time.Duration, error) {
	start := time.Now()
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: tpl})
	if err != nil {
		return 0, err
	}
	defer c.DeleteSandbox(ctx, sb.ID)
	if _, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
