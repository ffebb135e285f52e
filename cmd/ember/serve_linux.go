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
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/api"
	"github.com/emberhq/ember/internal/apikey"
	"github.com/emberhq/ember/internal/network"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/rootfs/auto"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
	vmmauto "github.com/emberhq/ember/internal/vmm/auto"
)

type serveFlags struct {
	listen    string
	dataDir   string
	cacheDir  string
	accel     string
	rootfs    string
	slotFirst int
	slotCount int
	logLevel  string
	printKey  bool
	templates string
	noEgress  bool
	domain    string
	uplink    string
	poolSize  int
	netMode   string
	vmm       string
	fcBinary  string
	bridge    string
	bridgeNet string
	defTpl    string

	// Hardening: TLS for the API, admission control.
	tlsCert, tlsKey string
	capacity        capacityFlags
	confine         confineFlags
	cgroups         cgroupFlags
}

func serveCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ember daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", defaultListen, "address the API listens on")
	fl.StringVar(&f.dataDir, "data-dir", defaultDataDir, "directory for the database, API key, templates and sandboxes")
	fl.StringVar(&f.cacheDir, "cache-dir", envOr("EMBER_CACHE_DIR", defaultCacheDir), "directory for build caches (the guest kernel)")
	fl.StringVar(&f.vmm, "vmm", "", `"firecracker", "qemu" or "" (firecracker where its binary exists and KVM boots the default kernel)`)
	fl.StringVar(&f.fcBinary, "firecracker", "", "firecracker binary (default: firecracker on PATH)")
	fl.StringVar(&f.accel, "accel", "", `QEMU accelerator: "kvm", "tcg" or "" (per kernel: kvm where a probe boot shows KVM runs it)`)
	fl.StringVar(&f.rootfs, "rootfs", "", `root disk backend: "devmapper", "reflink", "qcow2", "copy" or "" (automatic)`)
	fl.IntVar(&f.slotFirst, "slot-first", 0, "first network slot index this daemon uses")
	fl.IntVar(&f.slotCount, "slot-count", 0, "how many slot indexes from --slot-first this daemon uses and reclaims (0: all above)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.templates, "template-dir", "", "template registry directory (default DATA_DIR/templates)")
	fl.StringVar(&f.defTpl, "default-template", template.DefaultName, "template a create that names none gets (its kernel also decides the VMM)")
	fl.StringVar(&f.domain, "domain", "localhost", "requests for <port>-<sandbox-id>.DOMAIN are proxied to that port in the sandbox")
	fl.StringVar(&f.uplink, "uplink", "", "interface sandbox egress leaves by (default: the default route's)")
	fl.IntVar(&f.poolSize, "slot-pool", network.DefaultPoolSize, "network slots kept built ahead of demand")
	fl.StringVar(&f.bridge, "bridge", network.DefaultBridge, "bridge interface of the bridge network mode")
	fl.StringVar(&f.bridgeNet, "bridge-cidr", network.DefaultBridgeCIDR.String(), "subnet of the bridge network mode (gateway first, guests after)")
	fl.StringVar(&f.netMode, "network-mode", network.ModeNetns, `"netns" (a namespace per sandbox) or "bridge" (one shared bridge)`)
	fl.BoolVar(&f.noEgress, "no-egress", false, "give sandboxes no route out (leaves host forwarding and NAT alone)")
	fl.BoolVar(&f.printKey, "print-api-key", false, "print the API key at start (make run does)")

	// Hardening.
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve the API over TLS with this certificate (PEM; with --tls-key)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	f.capacity.register(fl)
	f.confine.register(fl)
	f.cgroups.register(fl)
	return cmd
}

// serve wires the daemon: config → lock → reclaim → construct → serve →
// shut down in reverse.
func serve(ctx context.Context, f serveFlags) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %w", f.logLevel, err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	unlock, err := lockDataDir(f.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together: give both or neither")
	}
	keyFile, err := apikey.Open(filepath.Join(f.dataDir, apikey.FileName))
	if err != nil {
		return err
	}

	st, err := store.Open(ctx, filepath.Join(f.dataDir, "ember.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	if f.templates == "" {
		f.templates = filepath.Join(f.dataDir, "templates")
	}
	reg := template.Registry{Dir: f.templates}
	start := time.Now()
	base, err := ensureDefaultTemplate(ctx, f.cacheDir, reg, log)
	if err != nil {
		return fmt.Errorf("build default template: %w", err)
	}
	log.Info("default template ready", "template", template.DefaultName, "duration_ms", time.Since(start).Milliseconds())

	def := base
	if f.defTpl != template.DefaultName {
		if def, err = reg.Get(f.defTpl); err != nil {
			return fmt.Errorf("--default-template %q: %w (build it with `ember template build %s --kernel PATH`)", f.defTpl, err, f.defTpl)
		}
	}
	qemuConfine, err := f.confine.qemu()
	if err != nil {
		return err
	}
	jailer, err := f.confine.firecracker()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the ember binary for page servers and memory copies: %w", err)
	}
	driver, vmmReason, err := vmmauto.Select(ctx, vmmauto.Config{VMM: f.vmm, Accel: f.accel,
		FirecrackerBinary: f.fcBinary, CacheDir: f.cacheDir, Kernel: def.Kernel,
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
	disks, diskReason, err := auto.Select(f.dataDir, f.rootfs, formats, log)
	if err != nil {
		return err
	}
	if r, ok := disks.(rootfs.Reconciler); ok {
		if err := r.Reconcile(ctx); err != nil {
			return fmt.Errorf("reconcile %s disks: %w", disks.Name(), err)
		}
	}

	bridgeNet, err := netip.ParsePrefix(f.bridgeNet)
	if err != nil {
		return fmt.Errorf("--bridge-cidr %q: %w", f.bridgeNet, err)
	}
	netCfg := network.Config{FirstIndex: f.slotFirst, SlotCount: f.slotCount, NoEgress: f.noEgress, Uplink: f.uplink,
		PoolSize: f.poolSize, Mode: f.netMode, Bridge: f.bridge, BridgeCIDR: bridgeNet}
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
	mcfg := sandbox.DefaultConfig(filepath.Join(f.dataDir, "sandboxes"))
	mcfg.DefaultTemplate = def.Name
	var memDir string
	if md, ok := driver.(interface{ MemoryDir() string }); ok {
		memDir = md.MemoryDir()
	}
	if mcfg.Capacity, err = f.capacity.capacity(memDir); err != nil {
		return err
	}
	if mcfg.Resources, err = f.cgroups.defaults(); err != nil {
		return err
	}
	cgroups, err := f.cgroups.manager(f.dataDir, log)
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
	mgr, err := sandbox.NewManager(mcfg, sandbox.Deps{
		Store: st, Templates: reg, Disks: disks, Slots: pool, VMM: driver, Log: log, Cgroups: sbCgroups,
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

	info := func() client.Info {
		return client.Info{
			Version: version, VMM: driver.Name(), VMMReason: vmmReason,
			Rootfs: disks.Name(), RootfsReason: diskReason, Sandboxes: len(mgr.List()),
			Accelerators: accelerators(ctx, driver, reg),
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
		Handler:           api.New(api.Config{APIKey: keyFile.Key, Domain: f.domain, Info: info}, mgr, reg, log),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	scheme := "http"
	if f.tlsCert != "" {
		scheme = "https"
	} else if !loopback(ln.Addr()) {
		log.Warn("the API listens beyond loopback without TLS: the API key and every request cross the network in the clear; give --tls-cert and --tls-key", "addr", ln.Addr().String())
		fmt.Fprintf(os.Stderr, "ember: WARNING   %s is reachable from other hosts and not encrypted: use --tls-cert and --tls-key\n", ln.Addr())
	}
	fmt.Fprintf(os.Stderr, "ember: API       %s://%s/v1 (X-API-Key from %s)\n", scheme, ln.Addr(), keyFile.Path())
	if f.printKey {
		fmt.Fprintf(os.Stderr, "ember: API key   %s\n", keyFile.Key())
	}
	fmt.Fprintf(os.Stderr, "ember: OpenAPI   %s://%s/openapi.yaml\n", scheme, ln.Addr())
	fmt.Fprintf(os.Stderr, "ember: test page %s://%s/test\n", scheme, ln.Addr())
	log.Info("serving", "addr", ln.Addr().String(), "tls", f.tlsCert != "", "vmm", driver.Name(), "vmm_reason", vmmReason)

	errc := make(chan error, 1)
	go func() {
		if f.tlsCert != "" {
			errc <- srv.ServeTLS(ln, f.tlsCert, f.tlsKey)
			return
		}
		errc <- srv.Serve(ln)
	}()
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

// lockDataDir takes the single-instance lock: two daemons on one data dir
// would fight over its sandboxes and network slots.
func lockDataDir(dir string) (func(), error) {
	path := filepath.Join(dir, "ember.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another ember daemon is running on %s (lock %s): %w", dir, path, err)
	}
	return func() { f.Close() }, nil
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
