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
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/api"
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
	// execOutput is the most of each output stream the buffered exec keeps.
	execOutput int
	uplink     string
	poolSize   int
	netMode    string
	vmm        string
	fcBinary   string
	bridge     string
	bridgeNet  string
	defTpl     string
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
	fl.IntVar(&f.execOutput, "exec-output-limit", api.DefaultExecOutputLimit, "bytes of stdout, and of stderr, POST /exec keeps (the rest is dropped and the result says truncated)")
	fl.StringVar(&f.bridge, "bridge", network.DefaultBridge, "bridge interface of the bridge network mode")
	fl.StringVar(&f.bridgeNet, "bridge-cidr", network.DefaultBridgeCIDR.String(), "subnet of the bridge network mode (gateway first, guests after)")
	fl.StringVar(&f.netMode, "network-mode", network.ModeNetns, `"netns" (a namespace per sandbox) or "bridge" (one shared bridge)`)
	fl.BoolVar(&f.noEgress, "no-egress", false, "give sandboxes no route out (leaves host forwarding and NAT alone)")
	fl.BoolVar(&f.printKey, "print-api-key", false, "print the API key at start (make run does)")
	return cmd
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
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
	apiKey, err := loadAPIKey(filepath.Join(f.dataDir, "api-key"))
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
	driver, vmmReason, err := chooseVMM(ctx, f, def.Kernel, log)
	if err != nil {
		return err
	}
	for _, a := range accelerators(ctx, driver, reg) {
		log.Info("accelerator", "template", a.Template, "kernel", a.Kernel, "accel", a.Accel, "reason", a.Reason)
	}
	disks, diskReason, err := auto.Select(f.dataDir, f.rootfs, log)
	if err != nil {
		return err
	}
	if driver.Name() == "firecracker" && disks.Name() == "qcow2" {
		// Firecracker opens raw disks only.
		if f.rootfs == "qcow2" {
			return fmt.Errorf("--rootfs qcow2: firecracker needs raw disks (use devmapper, reflink or copy)")
		}
		disks, _, err = auto.Select(f.dataDir, "copy", log)
		if err != nil {
			return err
		}
		diskReason = "automatic: qcow2 passed over (firecracker opens raw disks only); sparse copies work everywhere"
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
		Handler:           api.New(api.Config{APIKey: apiKey, Domain: f.domain, Info: info, ExecOutputLimit: f.execOutput}, mgr, reg, log),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	fmt.Fprintf(os.Stderr, "ember: API       http://%s/v1 (X-API-Key from %s)\n", ln.Addr(), filepath.Join(f.dataDir, "api-key"))
	if f.printKey {
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
func chooseVMM(ctx context.Context, f serveFlags, kernel string, log *slog.Logger) (vmmDriver, string, error) {
	qemuBin, qerr := exec.LookPath("qemu-system-x86_64")
	var prober *accel.Prober
	if qerr == nil {
		prober = qemu.NewProber(qemuBin, f.cacheDir, 0, log)
	}
	fcCfg := firecracker.Config{Binary: f.fcBinary, Prober: prober}
	fcOK, fcWhy := firecracker.Available(fcCfg)
	useQEMU := func(why string) (vmmDriver, string, error) {
		d, err := qemu.New(qemu.Config{Accel: f.accel, Prober: prober}, log)
		if err != nil {
			return nil, "", err
		}
		if _, err := d.AccelFor(ctx, kernel); err != nil {
			return nil, "", fmt.Errorf("--accel %s: %w", f.accel, err)
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
	// kvmBoots says whether the probe finds that KVM boots the kernel.
	kvmBoots := func() (bool, string, error) {
		if prober == nil {
			return false, "no qemu-system-x86_64 to probe KVM with", nil
		}
		v, err := prober.Choose(ctx, kernel)
		if err != nil {
			return false, "", err
		}
		return v.Accel == accel.KVM, v.Reason, nil
	}
	switch f.vmm {
	case "":
		if !fcOK {
			return useQEMU("automatic: " + fcWhy)
		}
		ok, why, err := kvmBoots()
		if err != nil {
			return nil, "", err
		}
		if ok {
			return useFC("automatic: " + fcWhy + "; " + why)
		}
		return useQEMU("automatic: " + fcWhy + " found, but " + why)
	case "firecracker":
		if !fcOK {
			return nil, "", fmt.Errorf("--vmm firecracker: %s", fcWhy)
		}
		ok, why, err := kvmBoots()
		if err != nil {
			return nil, "", err
		}
		if !ok {
			return nil, "", fmt.Errorf("--vmm firecracker: %s", why)
		}
		return useFC("configured: " + fcWhy + "; " + why)
	case "qemu":
		if qerr != nil {
			return nil, "", fmt.Errorf("--vmm qemu: %w", qerr)
		}
		return useQEMU("configured")
	}
	return nil, "", fmt.Errorf("--vmm %q: want firecracker, qemu or empty for automatic", f.vmm)
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
