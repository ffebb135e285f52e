// Command benchfiles measures moving files in and out of a real sandbox
// (bin/ember, a QEMU guest) and prints `BENCH <name> <value> <unit>` lines:
// upload and download throughput of a file through the file API, each
// against the same bytes through exec's stdin and stdout in the same run;
// the daemon's resident memory growth while a large file downloads; and
// the keystroke-to-echo latency of a terminal against a one-byte exec
// round trip.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/test/harness"
)

func main() {
	bin := flag.String("ember", "bin/ember", "the ember binary")
	templates := flag.String("templates", "/var/cache/ember/test-templates", "template registry holding the default template")
	size := flag.Int("mib", 64, "MiB moved each way for the throughput figures")
	big := flag.Int("big-mib", 256, "MiB of the download the daemon's memory is watched during")
	echoes := flag.Int("echoes", 50, "keystrokes timed on the terminal (and one-byte execs)")
	flag.Parse()
	if err := run(*bin, *templates, *size, *big, *echoes); err != nil {
		fmt.Fprintln(os.Stderr, "benchfiles:", err)
		os.Exit(1)
	}
}

func bench(name string, v float64, unit string) { fmt.Printf("BENCH %s %.2f %s\n", name, v, unit) }

// payload is n bytes that neither compress nor repeat.
func payload(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{'e', 'm', 'b', 'e', 'r'})
	r.Read(b)
	return b
}

func mibps(n int, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

func run(bin, templates string, sizeMiB, bigMiB, echoes int) error {
	ctx := context.Background()
	dataDir, err := os.MkdirTemp("", "ember-benchfiles-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	logf, err := os.CreateTemp("", "ember-benchfiles-*.log")
	if err != nil {
		return err
	}
	defer os.Remove(logf.Name())
	d, err := harness.Start(ctx, harness.Options{Bin: bin, Templates: templates, DataDir: dataDir, SlotFirst: 5150, SlotCount: 50, Log: logf})
	if err != nil {
		return err
	}
	defer func() {
		d.DestroyAll(ctx)
		d.Stop()
		if leaks := d.Leaks(50); len(leaks) > 0 {
			fmt.Fprintln(os.Stderr, "benchfiles: leaked:", leaks)
		}
	}()
	c := d.Client
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{DiskMiB: 2048, TimeoutS: 1800})
	if err != nil {
		return err
	}
	id := sb.ID
	data := payload(sizeMiB << 20)
	// Files live on the guest's disk (/root), not in its RAM (/tmp).
	sh := func(script string) error {
		res, err := c.Exec(ctx, id, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script}, TimeoutS: 600})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("%s: exit %d: %s", script, res.ExitCode, res.Stderr)
		}
		return err
	}

	// Upload: file API, then the same bytes into cat through exec's stdin.
	t0 := time.Now()
	if _, err := c.WriteFile(ctx, id, "/home/user/up.bin", bytes.NewReader(data)); err != nil {
		return err
	}
	upFiles := time.Since(t0)
	t0 = time.Now()
	res, err := c.ExecPipe(ctx, id, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "cat > /home/user/up-exec.bin"}, TimeoutS: 600},
		bytes.NewReader(data), io.Discard, io.Discard)
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("cat through exec exited %d", res.ExitCode)
	}
	if err != nil {
		return err
	}
	upExec := time.Since(t0)
	if err := sh("cmp /home/user/up.bin /home/user/up-exec.bin"); err != nil {
		return fmt.Errorf("the two uploads differ: %w", err)
	}

	// Download: file API, then cat's stdout through the exec stream.
	t0 = time.Now()
	n, err := download(ctx, c, id, "/home/user/up.bin", io.Discard)
	if err != nil || n != int64(len(data)) {
		return fmt.Errorf("download: %d bytes, %v", n, err)
	}
	downFiles := time.Since(t0)
	t0 = time.Now()
	var counted countWriter
	if _, err := c.ExecStream(ctx, id, client.ExecRequest{Cmd: "cat", Args: []string{"/home/user/up.bin"}, TimeoutS: 600}, &counted, io.Discard); err != nil || int(counted) != len(data) {
		return fmt.Errorf("cat through exec: %d bytes, %v", counted, err)
	}
	downExec := time.Since(t0)

	up, upE := mibps(len(data), upFiles), mibps(len(data), upExec)
	down, downE := mibps(len(data), downFiles), mibps(len(data), downExec)
	bench("files_upload_mib_s", up, "MiB/s")
	bench("exec_stdin_upload_mib_s", upE, "MiB/s")
	bench("files_vs_exec_upload", up/upE, "x")
	bench("files_download_mib_s", down, "MiB/s")
	bench("exec_stdout_download_mib_s", downE, "MiB/s")
	bench("files_vs_exec_download", down/downE, "x")

	// The daemon's memory while a big file streams through it.
	if err := sh(fmt.Sprintf("rm -f /home/user/up-exec.bin && dd if=/dev/zero of=/home/user/big.bin bs=1048576 count=%d 2>/dev/null", bigMiB)); err != nil {
		return err
	}
	before, err := d.RSS()
	if err != nil {
		return err
	}
	peak := before
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if rss, err := d.RSS(); err == nil {
					peak = max(peak, rss)
				}
			}
		}
	}()
	t0 = time.Now()
	n, err = download(ctx, c, id, "/home/user/big.bin", io.Discard)
	close(stop)
	<-sampled
	if err != nil || n != int64(bigMiB)<<20 {
		return fmt.Errorf("big download: %d bytes, %v", n, err)
	}
	bench("files_download_big_mib_s", mibps(int(n), time.Since(t0)), "MiB/s")
	bench("files_download_rss_before_mib", float64(before)/(1<<20), "MiB")
	bench("files_download_rss_peak_mib", float64(peak)/(1<<20), "MiB")
	bench("files_download_rss_growth_mib", float64(peak-before)/(1<<20), "MiB")

	// Keystroke to echo on a terminal (the terminal's own echo, through
	// the WebSocket, the daemon and the agent), against a one-byte exec.
	term, err := c.OpenTerminal(ctx, id, client.TerminalOptions{Cmd: "cat", Cols: 80, Rows: 24})
	if err != nil {
		return err
	}
	defer term.Close()
	var ptyLat, execLat []time.Duration
	buf := make([]byte, 64)
	for i := range echoes {
		key := []byte{byte('a' + i%26)}
		t0 := time.Now()
		if _, err := term.Write(key); err != nil {
			return err
		}
		for {
			n, err := term.Read(buf)
			if err != nil {
				return fmt.Errorf("read the echo: %w", err)
			}
			if bytes.Contains(buf[:n], key) {
				break
			}
		}
		ptyLat = append(ptyLat, time.Since(t0))
	}
	for range echoes {
		t0 := time.Now()
		res, err := c.Exec(ctx, id, client.ExecRequest{Cmd: "cat", Stdin: []byte("x")})
		if err != nil || string(res.Stdout) != "x" {
			return fmt.Errorf("one-byte exec: %q, %v", res.Stdout, err)
		}
		execLat = append(execLat, time.Since(t0))
	}
	p50 := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	bench("pty_echo_p50_ms", p50(ptyLat), "ms")
	bench("exec_1byte_roundtrip_p50_ms", p50(execLat), "ms")
	bench("pty_echo_vs_exec_roundtrip", p50(ptyLat)/p50(execLat), "x")
	return nil
}

// download streams a file out of the sandbox into w.
func download(ctx context.Context, c *client.Client, id, path string, w io.Writer) (int64, error) {
	body, err := c.ReadFile(ctx, id, path)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	n, err := io.Copy(w, body)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
