package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
)

func eventsCmd() *cobra.Command {
	var f client.EventFilter
	var since time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow lifecycle events (created, paused, resumed, snapshot, timeout, failed, destroyed) as they happen",
		Example: `  ember events
  ember events --sandbox ID --since 10m
  ember events --type created --type failed --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			if since > 0 {
				f.Since = time.Now().Add(-since)
			}
			s, err := c.Events(cmd.Context(), f)
			if err != nil {
				return err
			}
			defer s.Close()
			for {
				e, err := s.Next()
				if err != nil {
					return err
				}
				if asJSON {
					if err := printJSONLine(e); err != nil {
						return err
					}
					continue
				}
				fmt.Println(eventLine(e))
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Sandbox, "sandbox", "", "only this sandbox's events")
	fl.StringSliceVar(&f.Types, "type", nil, "only events of this type (repeatable, or comma-separated)")
	fl.DurationVar(&since, "since", 0, "first show the events of this long ago that the daemon still holds (like 10m)")
	fl.BoolVar(&asJSON, "json", false, "print each event as a JSON line")
	return cmd
}

// eventLine is one event as `ember events` prints it.
func eventLine(e client.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-9s  %-20s  %s", e.Time.Local().Format("15:04:05.000"), e.Type, e.Sandbox, e.Template)
	if e.Op != "" {
		fmt.Fprintf(&b, "  op=%s", e.Op)
	}
	if e.State != "" {
		fmt.Fprintf(&b, "  state=%s", e.State)
	}
	if e.DurationMS > 0 {
		fmt.Fprintf(&b, "  %.0f ms", e.DurationMS)
	}
	if e.Snapshot != "" {
		fmt.Fprintf(&b, "  snapshot=%s", e.Snapshot)
	}
	if e.Error != "" {
		fmt.Fprintf(&b, "  error=%q", e.Error)
	}
	return b.String()
}

func statsCmd() *cobra.Command {
	var noStream bool
	var every time.Duration
	cmd := &cobra.Command{
		Use:   "stats [ID...]",
		Short: "Show running sandboxes' CPU, memory and disk use, live (like docker stats)",
		Long: "Show each sandbox's latest usage sample: CPU and memory as its guest reports them, and what its\n" +
			"VMM costs the host. Without IDs, every running sandbox. The daemon samples every few seconds\n" +
			"(ember serve --metrics-interval).",
		Example: `  ember stats
  ember stats --no-stream <id>`,
		RunE: func(cmd *cobra.Command, ids []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			tty := isTerminal(os.Stdout)
			for {
				rows, err := statsRows(cmd.Context(), c, ids)
				if err != nil {
					return err
				}
				if tty && !noStream {
					fmt.Print("\033[H\033[2J") // redraw in place
				}
				if err := printStats(os.Stdout, rows); err != nil {
					return err
				}
				if noStream {
					return nil
				}
				if !tty {
					fmt.Println()
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	cmd.Flags().BoolVar(&noStream, "no-stream", false, "print the latest samples once and exit")
	cmd.Flags().DurationVar(&every, "interval", 2*time.Second, "how often to refresh")
	return cmd
}

// statsRow is one sandbox's line: its latest sample, if it has one.
type statsRow struct {
	id     string
	sample *client.Sample
}

// statsRows reads the latest sample of each sandbox named, or of every
// running one.
func statsRows(ctx context.Context, c *client.Client, ids []string) ([]statsRow, error) {
	if len(ids) == 0 {
		sbs, err := c.ListSandboxes(ctx)
		if err != nil {
			return nil, err
		}
		for _, sb := range sbs {
			if sb.State == "running" {
				ids = append(ids, sb.ID)
			}
		}
	}
	rows := make([]statsRow, 0, len(ids))
	for _, id := range ids {
		samples, err := c.SandboxMetrics(ctx, id, time.Now().Add(-time.Minute), time.Time{})
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", id, err)
		}
		row := statsRow{id: id}
		if len(samples) > 0 {
			row.sample = &samples[len(samples)-1]
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func printStats(w io.Writer, rows []statsRow) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCPU %\tMEM USAGE / LIMIT\tMEM %\tDISK USAGE / SIZE\tHOST CPU %\tHOST MEM\tHOST DISK")
	for _, r := range rows {
		cpu, mem, memPct, disk, hcpu, hmem, hdisk := "--", "--", "--", "--", "--", "--", "--"
		if s := r.sample; s != nil {
			if g := s.Guest; g != nil {
				cpu = fmt.Sprintf("%.1f%%", g.CPUUsedPct)
				mem = humanBytes(g.MemUsed) + " / " + humanBytes(g.MemTotal)
				if g.MemTotal > 0 {
					memPct = fmt.Sprintf("%.1f%%", 100*float64(g.MemUsed)/float64(g.MemTotal))
				}
				disk = humanBytes(g.DiskUsed) + " / " + humanBytes(g.DiskTotal)
			}
			if h := s.Host; h != nil {
				hcpu, hmem, hdisk = fmt.Sprintf("%.1f%%", h.CPUUsedPct), humanBytes(h.MemBytes), humanBytes(h.DiskBytes)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.id, cpu, mem, memPct, disk, hcpu, hmem, hdisk)
	}
	return tw.Flush()
}

// isTerminal reports whether f is a terminal (a character device).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printJSONLine prints v as one line of JSON (a stream's record).
func printJSONLine(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }
