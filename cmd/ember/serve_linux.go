//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/api"
	"github.com/emberhq/ember/internal/config"
	"github.com/emberhq/ember/internal/doctor"
	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/accel"
	"github.com/emberhq/ember/internal/vmm/firecracker"
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

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// serve wires the daemon: config → lock → reclaim → construct → serve →
// shut down in reverse.
func serve(ctx context.Context, cfg *config.Config) error {
	f := cfg.Serve
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return fmt.Errorf("log-level %q: %w", f.LogLevel, err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

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
	apiKey, err := loadAPIKey(filepath.Join(f.DataDir, "api-key"))
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
	log.Info("default template ready", "template", template.DefaultName, "duration_ms", time.Since(start).Milliseconds())

	def := base
	if f.DefaultTemplate != template.DefaultName {
		if def, err = reg.Get(f.DefaultTemplate); err != nil {
			return fmt.Errorf("default-template %q: %w (build it with `ember template build %s --kernel PATH`)", f.DefaultTemplate, err, f.DefaultTemplate)
		}
	}
	driver, vmmReason, err := chooseVMM(ctx, f, prober, def.Kernel, log)
	if err != nil {
		return err
	}
	for _, a := range accelerators(ctx, driver, reg) {
		log.Info("accelerator", "template", a.Template, "kernel", a.Kernel, "accel", a.Accel, "reason", a.Reason)
	}
	// Firecracker opens raw disks only.
	disks, diskReason, err := auto.Select(f.DataDir, f.Rootfs, driver.Name() == "firecracker", log)
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
	mgr, err := sandbox.NewManager(mcfg, sandbox.Deps{
		Store: st, Templates: reg, Disks: disks, Slots: pool, VMM: driver, Log: log,
		Agent: func(addr netip.Addr, token string) sandbox.Agent {
			return agent.New(fmt.Sprintf("http://%s", netip.AddrPortFrom(addr, agent.Port)), token, hc)
		},
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
	if _, err := reclaim.Run(ctx, reclaimPlan(driver, pool, disks, log), keep, log); err != nil {
		log.Error("start-up reclaim left orphans", "err", err)
	}
	mgr.RunReaper(ctx, time.Second)

	info := func() client.Info {
		return client.Info{
			Version: version, VMM: driver.Name(), VMMReason: vmmReason,
			Rootfs: disks.Name(), RootfsReason: diskReason, Sandboxes: len(mgr.List()),
			Accelerators: accelerators(ctx, driver, reg),
		}
	}
	// Requests run under a context the shutdown cancels, so lifecycle
	// operations in flight settle (a create unwinds, a pause rolls back)
	// instead of being cut off by the exit.
	reqCtx, cancelRequests := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelRequests(api.ErrShuttingDown)
	srv := &http.Server{
		Handler:           api.New(api.Config{APIKey: apiKey, Domain: f.Domain, Info: info}, mgr, reg, log),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	ln, err := net.Listen("tcp", f.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.Listen, err)
	}
	fmt.Fprintf(os.Stderr, "ember: API       http://%s/v1 (X-API-Key from %s)\n", ln.Addr(), filepath.Join(f.DataDir, "api-key"))
	if f.PrintAPIKey {
		fmt.Fprintf(os.Stderr, "ember: API key   %s\n", apiKey)
	}
	fmt.Fprintf(os.Stderr, "ember: OpenAPI   http://%s/openapi.yaml\n", ln.Addr())
	fmt.Fprintf(os.Stderr, "ember: test page http://%s/test\n", ln.Addr())
	log.Info("serving", "addr", ln.Addr().String(), "vmm", driver.Name(), "vmm_reason", vmmReason)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
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

// loadAPIKey reads the API key, creating it (mode 0600) on first start.
func loadAPIKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if k := strings.TrimSpace(string(b)); k != "" {
			return k, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read API key: %w", err)
	}
	raw := make([]byte, 24)
	rand.Read(raw)
	key := "ember_" + hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write API key: %w", err)
	}
	return key, nil
}

// reclaimPlan names each resource's reclaimer; package reclaim orders them.
func reclaimPlan(driver vmm.Driver, slots network.Slots, disks rootfs.Backend, log *slog.Logger) reclaim.Plan {
	plan := reclaim.Plan{Slots: slots, Dirs: reclaim.Dirs}
	if r, ok := driver.(vmm.ProcessReclaimer); ok {
		plan.Processes = reclaim.Func(r.ReclaimProcesses)
	} else {
		plan.Processes = reclaim.Func(func(_ context.Context, keep reclaim.Keep) (reclaim.Result, error) {
			n, err := reclaim.Processes(keep.Dir, keep.PIDs, log)
			return reclaim.Result{Found: n, Removed: n}, err
		})
	}
	if r, ok := driver.(vmm.MemoryReclaimer); ok {
		plan.Memory = reclaim.Func(r.ReclaimMemory)
	} else if q, ok := driver.(*qemu.Driver); ok {
		plan.Memory = reclaim.Func(func(context.Context, reclaim.Keep) (reclaim.Result, error) {
			files, err := q.ReclaimMemory()
			return reclaim.Result{Found: len(files), Removed: len(files)}, err
		})
	}
	if r, ok := disks.(reclaim.Reclaimer); ok {
		plan.Devices = r
	}
	return plan
}

// vmmDriver is what the daemon needs of a VMM driver.
type vmmDriver interface {
	vmm.Driver
	vmm.Restorer
	vmm.Accelerator
}

// chooseVMM picks Firecracker where a firecracker binary exists and the
// accelerator probe says KVM boots the default template's kernel, QEMU
// otherwise; --vmm overrides. With --accel kvm, a kernel KVM does not boot
// is an error here, before anything is started. It returns why.
func chooseVMM(ctx context.Context, f config.Serve, prober *accel.Prober, kernel string, log *slog.Logger) (vmmDriver, string, error) {
	fcCfg := firecracker.Config{Binary: f.Firecracker, Prober: prober}
	fcOK, fcWhy := firecracker.Available(fcCfg)
	useQEMU := func(why string) (vmmDriver, string, error) {
		d, err := qemu.New(qemu.Config{Accel: f.Accel, Prober: prober}, log)
		if err != nil {
			return nil, "", err
		}
		if _, err := d.AccelFor(ctx, kernel); err != nil {
			return nil, "", fmt.Errorf("accel %s: %w", f.Accel, err)
		}
		return d, why, nil
	}
	useFC := func(why string) (vmmDriver, string, error) {
		d, err := firecracker.New(fcCfg, log)
		if err != nil {
			return nil, "", err
		}
		return d, why, nil
	}
	name, why, err := vmm.Choose(f.VMM, fcOK, fcWhy, func() (bool, string, error) { return prober.KVMBoots(ctx, kernel) })
	switch {
	case err != nil:
		return nil, "", err
	case name == "firecracker":
		return useFC(why)
	case f.VMM == "qemu" && prober == nil:
		return nil, "", errors.New("vmm qemu: qemu-system-x86_64 not on PATH (apt-get install qemu-system-x86)")
	}
	return useQEMU(why)
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
