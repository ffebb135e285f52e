// Package harness starts a real ember daemon (the bin/ember that make
// builds) on a private data directory, listen port and network slot range,
// for the VM-tier tests and the benchmarks, and checks afterwards that it
// left no kernel object, process or file behind.
package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/cgroup"
)

// Daemon is a running `ember serve`.
type Daemon struct {
	Bin       string
	DataDir   string
	Templates string
	URL       string
	APIKey    string
	SlotFirst int
	SlotCount int
	Client    *client.Client
	Log       *os.File
	Uplink    string
	Args      []string
	// HTTP is the client that reaches the API (it trusts TLSCert when
	// the daemon serves TLS).
	HTTP *http.Client
	// ExtraEnv is added to the daemon's environment at each start (a
	// failpoint to arm, say).
	ExtraEnv []string

	tlsCert, tlsKey string
	cmd             *exec.Cmd
	// done is closed once the daemon process has exited (and been reaped).
	done chan struct{}
}

// Options configure a daemon.
type Options struct {
	// Bin is bin/ember; Templates the registry holding the default template.
	Bin       string
	Templates string
	// DataDir is created if empty; SlotFirst and SlotCount keep its slots
	// apart from any other daemon's (SlotCount 0: every index above).
	DataDir   string
	SlotFirst int
	SlotCount int
	// Log receives the daemon's output.
	Log *os.File
	// Uplink, when set, gives sandboxes egress through that interface (a
	// test's own "outside" link); otherwise the daemon runs --no-egress.
	Uplink string
	// Args are more `ember serve` flags.
	Args []string
	// TLSCert and TLSKey, when set, have the daemon serve TLS with them;
	// the harness's client trusts TLSCert.
	TLSCert, TLSKey string
}

// Start starts a daemon and waits for its API.
func Start(ctx context.Context, o Options) (*Daemon, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	d := &Daemon{Bin: o.Bin, DataDir: o.DataDir, Templates: o.Templates, URL: "http://" + addr, SlotFirst: o.SlotFirst,
		SlotCount: o.SlotCount, Log: o.Log, Uplink: o.Uplink, Args: o.Args, HTTP: &http.Client{},
		tlsCert: o.TLSCert, tlsKey: o.TLSKey}
	if o.TLSCert != "" {
		pem, err := os.ReadFile(o.TLSCert)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", o.TLSCert)
		}
		d.URL = "https://" + addr
		d.HTTP = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	return d, d.start(ctx, addr)
}

func (d *Daemon) start(ctx context.Context, addr string) error {
	egress := []string{"--no-egress"}
	if d.Uplink != "" {
		egress = []string{"--uplink", d.Uplink}
	}
	if d.tlsCert != "" {
		egress = append(egress, "--tls-cert", d.tlsCert, "--tls-key", d.tlsKey)
	}
	d.cmd = exec.Command(d.Bin, append([]string{"serve", "--listen", addr, "--data-dir", d.DataDir,
		"--template-dir", d.Templates, "--slot-first", strconv.Itoa(d.SlotFirst), "--slot-count", strconv.Itoa(d.SlotCount),
		"--log-level", "debug"},
		append(egress, d.Args...)...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.Log, d.Log
	d.cmd.Env = append(os.Environ(), d.ExtraEnv...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", d.Bin, err)
	}
	d.done = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		select {
		case <-d.done:
			return fmt.Errorf("daemon exited during start: %v (log %s)", d.cmd.ProcessState, d.Log.Name())
		default:
		}
		if resp, err := d.HTTP.Get(d.URL + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.Kill()
			return fmt.Errorf("daemon did not answer on %s (log %s)", d.URL, d.Log.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	key, err := os.ReadFile(filepath.Join(d.DataDir, "api-key"))
	if err != nil {
		return err
	}
	d.APIKey = strings.TrimSpace(string(key))
	d.Client = client.New(d.URL, d.APIKey).WithHTTPClient(d.HTTP)
	return nil
}

// Pid is the daemon process's pid (for its memory use, say), 0 when it
// does not run.
func (d *Daemon) Pid() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// RSS is the daemon's resident memory in bytes, from /proc.
func (d *Daemon) RSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.Pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", d.Pid())
}

// Stop ends the daemon with SIGTERM (its sandboxes keep running). Stopping
// a stopped daemon does nothing.
func (d *Daemon) Stop() error {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	select {
	case <-d.done:
		return nil
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(30 * time.Second):
		d.Kill()
		return errors.New("daemon ignored SIGTERM")
	}
}

// PID returns the daemon's process id.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// WaitExit waits up to timeout for the daemon to exit on its own (a
// failpoint's SIGKILL) and reports whether it did.
func (d *Daemon) WaitExit(timeout time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Kill ends the daemon with SIGKILL.
func (d *Daemon) Kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Kill()
	<-d.done
}

// Restart stops the daemon and starts it again on the same address and data.
func (d *Daemon) Restart(ctx context.Context) error {
	if err := d.Stop(); err != nil {
		return err
	}
	return d.start(ctx, strings.TrimPrefix(strings.TrimPrefix(d.URL, "http://"), "https://"))
}

// DestroyAll empties the daemon's warm pools and destroys every sandbox
// it lists.
func (d *Daemon) DestroyAll(ctx context.Context) error {
	pools, err := d.Client.WarmPools(ctx)
	if err != nil {
		return err
	}
	for _, p := range pools {
		if _, err := d.Client.SetWarmPool(ctx, p.Template, 0); err != nil {
			return err
		}
	}
	sbs, err := d.Client.ListSandboxes(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, sb := range sbs {
		if err := d.Client.DeleteSandbox(ctx, sb.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leaks lists what the daemon's sandboxes left behind: network namespaces,
// host veths and their nftables set elements in its slot range (slots up
// to SlotFirst+span), processes whose command line names its data
// directory (VMMs, page servers), sandbox cgroups, loop devices over its
// files, and sandbox directories.
func (d *Daemon) Leaks(span int) []string {
	var out []string
	// The host table's set of live slots' veths.
	set, _ := exec.Command("nft", "list", "set", "inet", "ember", "slots").Output()
	for i := d.SlotFirst; i < d.SlotFirst+span; i++ {
		if _, err := os.Stat(fmt.Sprintf("/run/netns/ember-ns-%d", i)); err == nil {
			out = append(out, fmt.Sprintf("netns ember-ns-%d", i))
		}
		if _, err := os.Stat(fmt.Sprintf("/sys/class/net/ember-v%d", i)); err == nil {
			out = append(out, fmt.Sprintf("link ember-v%d", i))
		}
		if strings.Contains(string(set), fmt.Sprintf("%q", fmt.Sprintf("ember-v%d", i))) {
			out = append(out, fmt.Sprintf("nftables element ember-v%d", i))
		}
	}
	out = append(out, Processes(d.DataDir)...)
	out = append(out, Cgroups(d.DataDir)...)
	out = append(out, LoopDevices(d.DataDir)...)
	if entries, err := os.ReadDir(filepath.Join(d.DataDir, "sandboxes")); err == nil {
		for _, e := range entries {
			out = append(out, "dir "+e.Name())
		}
	}
	return out
}

// LeaksWhileRunning is Leaks for a daemon that still runs: its pool keeps
// network slots built ahead of demand, so only processes and sandbox
// directories can be judged; Leaks after Stop judges the slots too.
func (d *Daemon) LeaksWhileRunning() []string {
	var out []string
	for _, l := range d.Leaks(0) {
		if !strings.HasPrefix(l, "netns ") && !strings.HasPrefix(l, "link ") && !strings.HasPrefix(l, "nftables ") {
			out = append(out, l)
		}
	}
	return out
}

// Cgroups lists the sandbox cgroups left under the parent group of the
// daemon on dataDir, in any hierarchy.
func Cgroups(dataDir string) []string {
	var out []string
	v1, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", cgroup.ParentFor(dataDir), "*"))
	v2, _ := filepath.Glob(filepath.Join(cgroup.Root, cgroup.ParentFor(dataDir), "*"))
	for _, d := range append(v1, v2...) {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			out = append(out, "cgroup "+d)
		}
	}
	return out
}

// CgroupParents lists the parent groups of the daemon on dataDir, which it
// removes when it stops.
func CgroupParents(dataDir string) []string {
	var out []string
	v1, _ := filepath.Glob(filepath.Join(cgroup.Root, "*", cgroup.ParentFor(dataDir)))
	v2, _ := filepath.Glob(filepath.Join(cgroup.Root, cgroup.ParentFor(dataDir)))
	for _, d := range append(v1, v2...) {
		out = append(out, "cgroup parent "+d)
	}
	return out
}

// LoopDevices lists loop devices whose backing file is under dir.
func LoopDevices(dir string) []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(string(b), dir+"/") {
			out = append(out, "loop "+filepath.Base(filepath.Dir(filepath.Dir(f)))+" "+strings.TrimSpace(string(b)))
		}
	}
	return out
}

// Processes lists live processes whose command line mentions dir.
func Processes(dir string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), dir+"/") {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
			continue
		}
		out = append(out, "process "+e.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
	}
	return out
}

// Env returns the environment for running the CLI against this daemon.
func (d *Daemon) Env() []string {
	return append(os.Environ(), "EMBER_URL="+d.URL, "EMBER_API_KEY="+d.APIKey)
}
