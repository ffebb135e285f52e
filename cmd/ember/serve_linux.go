//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/api"
	"github.com/emberhq/ember/internal/api/e2b"
	"github.com/emberhq/ember/internal/apikey"
	"github.com/emberhq/ember/internal/build"
	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/doctor"
	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/metrics"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/usage"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/accel"
	vmmauto "github.com/emberhq/ember/internal/vmm/auto"
	"github.com/emberhq/ember/internal/vmm/qemu"
)

func serveCmd() *cobra.Command {
	var printConfig bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ember daemon",
		Long: "Run the ember daemon. Settings come from the configuration file (" + config.DefaultPath + ",\n" +
			"or --config), overridden by the flags below; every flag is also a key of the file.\n" +
			"The daemon checks the host first (the checks of `ember doctor`) and refuses to start\n" +
			"on a failing one, with its fix.",
		Example: "  ember serve\n" +
			"  ember serve --config /srv/ember/ember.toml --listen 0.0.0.0:7070\n" +
			"  ember serve --print-config",
		Args: cobra.NoArgs,
	}
	load := configFlags(cmd)
	cmd.Flags().BoolVar(&printConfig, "print-config", false, "print the effective configuration, each value with where it came from, and exit")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := load()
		if err != nil {
			return err
		}
		if printConfig {
			return cfg.Write(cmd.OutOrStdout())
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return serve(ctx, cfg)
	}
	return cmd
}

// configFlags gives cmd every daemon setting as a flag, and --config; the
// func it returns loads the effective configuration once the flags are
// parsed.
func configFlags(cmd *cobra.Command) func() (*config.Config, error) {
	var path string
	flagged := config.Flags(cmd.Flags())
	cmd.Flags().StringVar(&path, "config", "", "configuration file (default "+config.DefaultPath+" where it exists)")
	return func() (*config.Config, error) { return config.Load(path, cmd.Flags(), flagged, os.Getenv) }
}

// serve wires the daemon: config → lock → reclaim → construct → serve →
// shut down in reverse.
func serve(ctx context.Context, cfg *config.Config) error {
	f := cfg.Serve
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return fmt.Errorf("log-level %q: %w", f.LogLevel, err)
	}
	log, err := newLogger(f.LogFormat, level)
	if err != nil {
		return err
	}

	if err := os.MkdirAll(f.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	unlock, err := fsutil.TryLock(f.LockFile())
	if errors.Is(err, fsutil.ErrLocked) {
		return fmt.Errorf("another ember daemon is running on %s (lock %s)", f.DataDir, f.LockFile())
	} else if err != nil {
		return err
	}
	defer unlock()
	// The host checks of `ember doctor`: a host that cannot serve is
	// refused now, with the fix, instead of failing creates later.
	prober := newProber(f, log)
	if err := refuseUnfitHost(ctx, cfg, prober, log); err != nil {
		return err
	}
	keyFile, err := apikey.Open(filepath.Join(f.DataDir, apikey.FileName))
	if err != nil {
		return err
	}

	st, err := store.Open(ctx, filepath.Join(f.DataDir, "ember.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	reg := template.Registry{Dir: f.Templates()}
	start := time.Now()
	base, err := ensureDefaultTemplate(ctx, f.CacheDir, reg, log)
	if err != nil {
		return fmt.Errorf("build default template: %w", err)
	}
	built := time.Since(start)
	log.Info("default template ready", "template", template.DefaultName, "duration_ms", built.Milliseconds())

	def := base
	if f.DefaultTemplate != template.DefaultName {
		if def, err = reg.Get(f.DefaultTemplate); err != nil {
			return fmt.Errorf("default-template %q: %w (build it with `ember template build %s --kernel PATH`)", f.DefaultTemplate, err, f.DefaultTemplate)
		}
	}
	qemuConfine, err := qemuConfinement(f)
	if err != nil {
		return err
	}
	jailer, err := jailerConfig(f)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the ember binary for page servers and memory copies: %w", err)
	}
	driver, vmmReason, err := vmmauto.Select(ctx, vmmauto.Config{VMM: f.VMM, Accel: f.Accel,
		FirecrackerBinary: f.Firecracker, CacheDir: f.CacheDir, Kernel: def.Kernel, Prober: prober,
		QEMUConfine: qemuConfine, Jailer: jailer, Helper: []string{self}}, log)
	if err != nil {
		return err
	}
	for _, a := range accelerators(ctx, driver, reg) {
		log.Info("accelerator", "template", a.Template, "kernel", a.Kernel, "accel", a.Accel, "reason", a.Reason)
	}
	var formats []string
	if df, ok := driver.(vmm.DiskFormats); ok {
		formats = df.DiskFormats()
	}
	disks, diskReason, err := auto.Select(f.DataDir, f.Rootfs, formats, log)
	if err != nil {
		return err
	}
	if r, ok := disks.(rootfs.Reconciler); ok {
		if err := r.Reconcile(ctx); err != nil {
			return fmt.Errorf("reconcile %s disks: %w", disks.Name(), err)
		}
	}

	bridgeNet, err := netip.ParsePrefix(f.BridgeCIDR)
	if err != nil {
		return fmt.Errorf("bridge-cidr %q: %w", f.BridgeCIDR, err)
	}
	netCfg := network.Config{FirstIndex: f.SlotFirst, SlotCount: f.SlotCount, NoEgress: f.NoEgress, Uplink: f.Uplink,
		PoolSize: f.SlotPool, Mode: f.NetworkMode, Bridge: f.Bridge, BridgeCIDR: bridgeNet}
	pool, err := network.New(netCfg, log)
	if err != nil {
		return err
	}
	defer pool.Close()

	hc := &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}}
	mcfg := sandbox.DefaultConfig(filepath.Join(f.DataDir, "sandboxes"))
	mcfg.DefaultTemplate = def.Name
	var memDir string
	if md, ok := driver.(interface{ MemoryDir() string }); ok {
		memDir = md.MemoryDir()
	}
	if mcfg.Capacity, err = capacityFor(f, memDir); err != nil {
		return err
	}
	mcfg.Resources = cgroupDefaults(f)
	cgroups, err := cgroupManager(f, log)
	if err != nil {
		return err
	}
	if cgroups != nil {
		defer cgroups.Close()
	}
	confined := append(confinement(driver), cgroupMeasures(cgroups)...)
	for _, c := range confined {
		log.Info("sandbox confinement", "measure", c.Name, "on", c.On, "detail", c.Detail)
	}
	var sbCgroups sandbox.Cgroups
	if cgroups != nil {
		sbCgroups = cgroups
	}
	var mgr *sandbox.Manager
	events := event.NewHub(event.DefaultHistory)
	// The scrape-time figures are read from the manager, which exists by
	// the time anything is served.
	mtr := metrics.New(metrics.Config{
		Version: version, VMM: driver.Name(), Disk: disks.Name(), Log: log, Slots: pool.Stats,
		Sandboxes: func() []store.Sandbox { return mgr.ListAll() }, Templates: func() []string { return templateNames(reg) },
		Capacity: func() []metrics.Capacity { return capacityMetrics(mgr.Capacity()) },
	})
	mtr.Observe(sandbox.Op{Name: sandbox.OpTemplateBuild, Template: template.DefaultName, Duration: built})
	mgr, err = sandbox.NewManager(mcfg, sandbox.Deps{
		Store: st, Templates: reg, Disks: disks, Slots: pool, VMM: driver, Log: log, Cgroups: sbCgroups,
		Agent: func(addr netip.Addr, token string) sandbox.Agent {
			return agent.New(fmt.Sprintf("http://%s", netip.AddrPortFrom(addr, agent.Port)), token, hc)
		},
		Observer: mtr, Events: events, Meter: usage.ReadProcess,
	})
	if err != nil {
		return err
	}
	defer mgr.Close()

	// Reclaim: re-adopt what survived, then remove what nobody owns.
	keep, err := mgr.Recover(ctx)
	if err != nil {
		return err
	}
	plan := reclaimPlan(driver, pool, disks)
	if cgroups != nil {
		plan.Cgroups = reclaim.Func(func(ctx context.Context, k reclaim.Keep) (reclaim.Result, error) {
			// A sandbox's group lives while its machine runs.
			return cgroups.Reclaim(ctx, reclaim.Keep{Sandboxes: k.Running})
		})
	}
	if _, err := reclaim.Run(ctx, plan, keep, log); err != nil {
		log.Error("start-up reclaim left orphans", "err", err)
	}
	mgr.RunReaper(ctx, time.Second)
	mgr.RunSampler(ctx, f.MetricsEvery())
	if err := startWarmPools(ctx, f, mgr); err != nil {
		return err
	}

	// Template builds run in the daemon, in sandboxes of this manager.
	builds, err := newBuilds(ctx, f, reg, mgr, base, mtr.Observe, log)
	if err != nil {
		return err
	}

	info := func() client.Info {
		return client.Info{
			Version: version, VMM: driver.Name(), VMMReason: vmmReason,
			Rootfs: disks.Name(), RootfsReason: diskReason, Sandboxes: len(mgr.List()),
			Accelerators: accelerators(ctx, driver, reg),
			Warm:         api.WarmPools(mgr.WarmPools()),
			KSM:          client.KSM(usage.ReadKSM(os.ReadFile)),
			Capacity:     capacityInfo(mgr.Capacity()),
			Confinement:  confined,
			Goroutines:   runtime.NumGoroutine(),
		}
	}
	// Requests run under a context the shutdown cancels, so lifecycle
	// operations in flight settle (a create unwinds, a pause rolls back)
	// instead of being cut off by the exit.
	reqCtx, cancelRequests := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelRequests(api.ErrShuttingDown)
	srv := &http.Server{
		Handler: api.New(api.Config{APIKey: keyFile.Key, Domain: f.Domain, Info: info, Metrics: mtr, Events: events,
			ExecOutputLimit: f.ExecOutputLimit, Builds: builds, E2B: e2b.Config{Templates: f.E2BTemplateMap(),
				DefaultTemplate: f.DefaultTemplate, FilesDir: filepath.Join(f.DataDir, "e2b-files"), BuildContext: reqCtx}, Warm: mgr},
			mgr, reg, log),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	ln, err := net.Listen("tcp", f.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.Listen, err)
	}
	// TLS on the API's own listener when a certificate is given and no
	// separate tls-listen address takes it.
	mainTLS := f.TLSCert != "" && f.TLSListen == ""
	scheme := "http"
	if mainTLS {
		scheme = "https"
	} else if !loopback(ln.Addr()) {
		log.Warn("the API listens beyond loopback without TLS: the API key and every request cross the network in the clear; give tls-cert and tls-key", "addr", ln.Addr().String())
		fmt.Fprintf(os.Stderr, "ember: WARNING   %s is reachable from other hosts and not encrypted: use --tls-cert and --tls-key\n", ln.Addr())
	}
	fmt.Fprintf(os.Stderr, "ember: API       %s://%s/v1 (X-API-Key from %s)\n", scheme, ln.Addr(), keyFile.Path())
	if f.PrintAPIKey {
		fmt.Fprintf(os.Stderr, "ember: API key   %s\n", keyFile.Key())
	}
	fmt.Fprintf(os.Stderr, "ember: OpenAPI   %s://%s/openapi.yaml\n", scheme, ln.Addr())
	fmt.Fprintf(os.Stderr, "ember: test page %s://%s/test\n", scheme, ln.Addr())
	log.Info("serving", "addr", ln.Addr().String(), "tls", mainTLS, "vmm", driver.Name(), "vmm_reason", vmmReason)

	errc := make(chan error, 3)
	go func() {
		if mainTLS {
			errc <- srv.ServeTLS(ln, f.TLSCert, f.TLSKey)
			return
		}
		errc <- srv.Serve(ln)
	}()
	// The same server over TLS, for clients that speak only https (the
	// 1.x and early 2.x E2B SDKs).
	if f.TLSListen != "" {
		tln, err := net.Listen("tcp", f.TLSListen)
		if err != nil {
			return fmt.Errorf("tls-listen on %s: %w", f.TLSListen, err)
		}
		go func() { errc <- srv.ServeTLS(tln, f.TLSCert, f.TLSKey) }()
		fmt.Fprintf(os.Stderr, "ember: TLS       https://%s (certificate %s)\n", tln.Addr(), f.TLSCert)
	}
	if f.MetricsListen != "" {
		msrv, err := serveMetrics(f.MetricsListen, mtr.Handler(), errc)
		if err != nil {
			return err
		}
		defer msrv.Close()
		fmt.Fprintf(os.Stderr, "ember: metrics   http://%s/metrics (no key)\n", f.MetricsListen)
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: requests in flight are cancelled; sandboxes keep running and are re-adopted at the next start")
	cancelRequests(api.ErrShuttingDown)
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	// The handlers have returned; Close waits for any lifecycle operation
	// still settling (the reaper's) before the store closes.
	mgr.Close()
	log.Info("stopped")
	return err
}

// refuseUnfitHost runs the host checks, logs every warning with its fix,
// and returns an error naming each failing check with its fix.
func refuseUnfitHost(ctx context.Context, cfg *config.Config, prober *accel.Prober, log *slog.Logger) error {
	rep := checkHost(ctx, cfg, prober, true)
	var fine []string
	for _, c := range rep.Checks {
		switch c.Status {
		case doctor.OK:
			fine = append(fine, c.Name)
		case doctor.Warn:
			log.Warn("host check", "check", c.Name, "finding", c.Finding, "fix", c.Fix)
		}
	}
	if err := rep.Err(); err != nil {
		return err
	}
	log.Info("host checks ok", "checks", strings.Join(fine, " "))
	return nil
}

// loopback reports whether addr is reachable from this host only.
func loopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// reclaimPlan names each resource's reclaimer; package reclaim orders them.
func reclaimPlan(driver vmm.Driver, slots network.Slots, disks rootfs.Backend) reclaim.Plan {
	plan := reclaim.Plan{Slots: slots, Dirs: reclaim.Dirs}
	if r, ok := driver.(vmm.ProcessReclaimer); ok {
		plan.Processes = reclaim.Func(r.ReclaimProcesses)
	}
	if r, ok := driver.(vmm.MemoryReclaimer); ok {
		plan.Memory = reclaim.Func(r.ReclaimMemory)
	}
	if r, ok := disks.(reclaim.Reclaimer); ok {
		plan.Devices = r
	}
	return plan
}

// newLogger returns the daemon's logger in the format asked for.
func newLogger(format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log-format %q: want text or json", format)
}

// serveMetrics serves the metrics alone, unauthenticated, on addr: the
// address a Prometheus on a monitoring network scrapes. A failure to serve
// is sent to errc.
func serveMetrics(addr string, h http.Handler, errc chan<- error) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("metrics: %w", err)
		}
	}()
	return srv, nil
}

// templateNames lists the registry's templates, for the metrics.
func templateNames(reg template.Registry) []string {
	tpls, err := reg.List()
	if err != nil {
		return nil
	}
	names := make([]string, len(tpls))
	for i, t := range tpls {
		names[i] = t.Name
	}
	return names
}

// newProber returns the accelerator prober the daemon, its VMM choice and
// its host checks share, so a kernel is probed once; nil when there is no
// QEMU to probe with.
func newProber(f config.Serve, log *slog.Logger) *accel.Prober {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil
	}
	return qemu.NewProber(bin, f.CacheDir, 0, log)
}

// accelerators reports the accelerator each template's kernel gets, and
// why, for `ember info` and the start-up log.
func accelerators(ctx context.Context, d vmm.Accelerator, reg template.Registry) []client.AccelInfo {
	tpls, err := reg.List()
	if err != nil {
		return []client.AccelInfo{{Reason: "list templates: " + err.Error()}}
	}
	out := make([]client.AccelInfo, 0, len(tpls))
	for _, t := range tpls {
		ai := client.AccelInfo{Template: t.Name}
		if v, err := d.AccelFor(ctx, t.Kernel); err != nil {
			ai.Reason = err.Error()
		} else {
			ai.Kernel, ai.Accel, ai.Reason = v.ShortKernel(), v.Accel, v.Reason
		}
		out = append(out, ai)
	}
	return out
}

// startWarmPools keeps the warm pools the warm setting names filled; a
// template it names that does not exist stops the start.
func startWarmPools(ctx context.Context, f config.Serve, mgr *sandbox.Manager) error {
	pools, err := f.WarmPools()
	if err != nil {
		return err
	}
	mgr.RunWarm(ctx)
	for _, p := range pools {
		if _, err := mgr.SetWarm(ctx, p.Template, p.Count); err != nil {
			return fmt.Errorf("warm %s=%d: %w", p.Template, p.Count, err)
		}
	}
	return nil
}

// builds is the daemon's template builder with the manager's checks for
// deletes (api.Builds).
type builds struct {
	*build.Builder
	mgr *sandbox.Manager
	reg template.Registry
	// observe hears of every build as it ends (the lifecycle metrics).
	observe func(sandbox.Op)
}

// Build builds a template and reports the build to the metrics, whatever
// front end asked for it (/v1 or E2B's template SDK).
func (b builds) Build(ctx context.Context, req build.Request, emit func(build.Event)) (template.Template, error) {
	start := time.Now()
	t, err := b.Builder.Build(ctx, req, emit)
	if b.observe != nil {
		b.observe(sandbox.Op{Name: sandbox.OpTemplateBuild, Template: req.Spec.Name, Duration: time.Since(start), Err: err})
	}
	return t, err
}

// DeleteTemplate deletes a template no sandbox or snapshot needs.
func (b builds) DeleteTemplate(ctx context.Context, name string) error {
	return b.mgr.DeleteTemplate(ctx, name, b.reg)
}

// newBuilds makes the template builder: build sandboxes boot the default
// template's kernel, steps are cached under the data directory, the
// built-in Debian base under the cache directory. What a build a previous
// daemon died in left is cleaned up first.
func newBuilds(ctx context.Context, f config.Serve, reg template.Registry, mgr *sandbox.Manager, base template.Template,
	observe func(sandbox.Op), log *slog.Logger) (builds, error) {
	agentBin, err := template.AgentBinary()
	if err != nil {
		return builds{}, err
	}
	b := &build.Builder{
		Registry: reg, Sandboxes: mgr, Kernel: base.Kernel, KernelKey: base.Inputs["kernel"], Agent: agentBin,
		CacheDir: f.CacheDir, StepDir: filepath.Join(f.DataDir, "build-cache"), WorkDir: filepath.Join(f.DataDir, "builds"),
		CacheMax: int64(f.BuildCacheGiB) << 30, Log: log,
	}
	if err := b.Reclaim(ctx); err != nil {
		log.Error("reclaim what interrupted template builds left", "err", err)
	}
	return builds{Builder: b, mgr: mgr, reg: reg, observe: observe}, nil
}
