package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
)

// Slots 5600–5799 are the hardening tests'.

// vmmOf returns the pid of a sandbox's VMM.
func vmmOf(t *testing.T, d *harness.Daemon, id string) int {
	t.Helper()
	procs := harness.Processes(filepath.Join(d.DataDir, "sandboxes", id))
	if len(procs) != 1 {
		t.Fatalf("vmm of %s: %v", id, procs)
	}
	var pid int
	if _, err := fmtSscan(procs[0], &pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

func readInt(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestConfinedSandbox checks a sandbox's QEMU as the kernel sees it: an
// unprivileged user, seccomp filter mode, chrooted, in a cgroup of its own
// whose files hold the sandbox's limits; a guest that fills its memory
// stays inside them; ember info says which measures are in force; a create
// may lower the limits and not raise them.
func TestConfinedSandbox(t *testing.T) {
	d := start(t, 5600)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{Limits: &client.Limits{Pids: 200}})
	if err != nil {
		t.Fatal(err)
	}
	pid := vmmOf(t, d, sb.ID)
	st := testutil.ProcStatus(t, pid)
	if uid := strings.Fields(st["Uid"]); len(uid) != 4 || uid[0] == "0" || uid[1] == "0" {
		t.Errorf("qemu uid %q, want an unprivileged user", st["Uid"])
	}
	if st["Seccomp"] != "2" {
		t.Errorf("qemu Seccomp %q, want 2 (filter)", st["Seccomp"])
	}
	root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil || root != filepath.Join(d.DataDir, "sandboxes", sb.ID, "vmm-root") {
		t.Errorf("qemu root %q %v", root, err)
	}
	t.Logf("qemu %d: Uid %s, Seccomp %s, CapEff %s, root %s", pid, st["Uid"], st["Seccomp"], st["CapEff"], root)

	// Its cgroup holds it and the limits: 256 MiB + the VMM overhead
	// (192 MiB by default), one CPU for one vCPU, the lowered pids bound.
	group := cgroup.ParentFor(d.DataDir) + "/" + sb.ID
	procs, err := os.ReadFile(filepath.Join(cgroup.Root, "memory", group, "cgroup.procs"))
	if err != nil || !strings.Contains(string(procs), strconv.Itoa(pid)) {
		t.Fatalf("qemu %d not in memory cgroup %s: %q %v", pid, group, procs, err)
	}
	limit := readInt(t, filepath.Join(cgroup.Root, "memory", group, "memory.limit_in_bytes"))
	if want := int64(256+192) << 20; limit != want {
		t.Errorf("memory.limit_in_bytes %d, want %d", limit, want)
	}
	if q := readInt(t, filepath.Join(cgroup.Root, "cpu", group, "cpu.cfs_quota_us")); q != 100000 {
		t.Errorf("cpu.cfs_quota_us %d, want 100000", q)
	}
	if p := readInt(t, filepath.Join(cgroup.Root, "pids", group, "pids.max")); p != 200 {
		t.Errorf("pids.max %d, want the lowered 200", p)
	}
	if sb.Limits == nil || sb.Limits.Pids != 200 || sb.Limits.MemoryMiB != 448 {
		t.Errorf("limits in the answer: %+v", sb.Limits)
	}

	// The guest fills most of its RAM with a tmpfs file: QEMU's memory
	// grows and stays under the limit, and the guest lives on.
	res, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{User: "root", Cmd: "/bin/sh", Args: []string{"-c",
		"mount -t tmpfs -o size=220m none /mnt && dd if=/dev/urandom of=/mnt/fill bs=1M count=200 2>/dev/null && echo done"}, TimeoutS: 120})
	if err != nil || !strings.Contains(string(res.Stdout), "done") {
		t.Fatalf("fill guest memory: %+v %v", res, err)
	}
	peak := readInt(t, filepath.Join(cgroup.Root, "memory", group, "memory.max_usage_in_bytes"))
	usage := readInt(t, filepath.Join(cgroup.Root, "memory", group, "memory.usage_in_bytes"))
	t.Logf("after filling 200 MiB in the guest: cgroup usage %d MiB, peak %d MiB, limit %d MiB", usage>>20, peak>>20, limit>>20)
	if peak > limit {
		t.Errorf("peak %d over the limit %d", peak, limit)
	}
	got, err := d.Client.GetSandbox(ctx, sb.ID)
	if err != nil || got.State != "running" || got.Usage == nil || got.Usage.MemoryBytes == 0 || got.Usage.CPUNanos == 0 {
		t.Fatalf("sandbox after the fill: %+v %v", got, err)
	}
	if r, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "echo", Args: []string{"alive"}}); err != nil || string(r.Stdout) != "alive\n" {
		t.Fatalf("guest after the fill: %+v %v", r, err)
	}

	// ember info lists the measures.
	cmd := exec.Command(d.Bin, "info")
	cmd.Env = d.Env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ember info: %v\n%s", err, out)
	}
	for _, want := range []string{"confine:    seccomp on", "confine:    user on", "confine:    chroot on",
		"confine:    cgroup memory on", "confine:    cgroup blkio", "capacity:   memory"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ember info lacks %q:\n%s", want, out)
		}
	}
	t.Logf("ember info:\n%s", out)

	// A create may not raise a limit, nor bound memory under its RAM.
	for _, l := range []client.Limits{{CPUs: 4}, {Pids: 100000}, {MemoryMiB: 128}} {
		if _, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{Limits: &l}); !client.IsCode(err, "invalid_argument") {
			t.Errorf("limits %+v: %v, want invalid_argument", l, err)
		}
	}
	if err := d.Client.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
		t.Fatalf("leaked: %v", leaks)
	}
}

// TestFiftySimultaneousCreates sends 50 creates at once to a daemon whose
// capacity takes three machines: each create either succeeds or gets a
// clean 429 capacity_exhausted with Retry-After, all within 30 s; none
// hangs, and nothing leaks.
func TestFiftySimultaneousCreates(t *testing.T) {
	d := startWith(t, harness.Options{SlotFirst: 5650, Args: []string{
		"--capacity-memory-mib", strconv.Itoa(3 * (256 + 192)), "--max-parallel-creates", "2", "--create-queue", "8"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 50
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]string, n)
	took := make([]time.Duration, n)
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
			ids[i], errs[i], took[i] = sb.ID, err, time.Since(start)
		})
	}
	wg.Wait()
	var ok, refused int
	var slowest429 time.Duration
	for i, err := range errs {
		var ae *client.APIError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &ae) && ae.Status == 429 && ae.Code == "capacity_exhausted" && ae.RetryAfter > 0:
			refused++
			slowest429 = max(slowest429, took[i])
		default:
			t.Errorf("create %d: %v after %s", i, err, took[i])
		}
	}
	t.Logf("50 creates: %d created, %d refused with 429 (slowest refusal %s), all answered in %s", ok, refused, slowest429, time.Since(start))
	if ok == 0 || ok > 3 {
		t.Errorf("%d created, want 1 to 3 (the capacity)", ok)
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("answers took %s", time.Since(start))
	}
	for _, id := range ids {
		if id != "" {
			if err := d.Client.DeleteSandbox(context.Background(), id); err != nil {
				t.Error(err)
			}
		}
	}
	info, err := d.Client.Info(context.Background())
	if err != nil || info.Capacity == nil || info.Capacity.Machines != 0 || info.Capacity.MemoryMiB != 0 || info.Capacity.Waiting != 0 {
		t.Errorf("capacity after destroying all: %+v %v", info.Capacity, err)
	}
	if leaks := d.LeaksWhileRunning(); len(leaks) > 0 {
		t.Fatalf("leaked: %v", leaks)
	}
}

// TestKeyRotationAndTLS serves the API over TLS and rotates the key with
// `ember key rotate` while the daemon runs: the old key is refused at
// once, the new one accepted, with no restart.
func TestKeyRotationAndTLS(t *testing.T) {
	cert, key := selfSigned(t)
	d := startWith(t, harness.Options{SlotFirst: 5700, SlotCount: 20, TLSCert: cert, TLSKey: key})
	ctx := context.Background()
	if !strings.HasPrefix(d.URL, "https://") {
		t.Fatalf("url %s", d.URL)
	}
	if _, err := d.Client.ListSandboxes(ctx); err != nil {
		t.Fatalf("over tls: %v", err)
	}
	cmd := exec.Command(d.Bin, "key", "rotate", "--data-dir", d.DataDir)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	newKey := strings.TrimSpace(out.String())
	if newKey == "" || newKey == d.APIKey {
		t.Fatalf("rotate printed %q", newKey)
	}
	old := d.Client
	d.APIKey, d.Client = newKey, client.New(d.URL, newKey).WithHTTPClient(d.HTTP)
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, oldErr := old.ListSandboxes(ctx)
		_, newErr := d.Client.ListSandboxes(ctx)
		if client.IsCode(oldErr, "unauthorized") && newErr == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after rotation: old key %v, new key %v", oldErr, newErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(d.Log.Name())
	if strings.Contains(string(log), "without TLS") {
		t.Errorf("a loopback daemon with TLS warned about plain text")
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certPath, keyPath string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ember test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}
