package accel

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/fsutil"
)

// DefaultTimeout bounds a probe boot. A kernel that boots under KVM reaches
// the end of its start-up in well under a second; one that does not either
// makes QEMU exit at once or hangs without a word.
const DefaultTimeout = 5 * time.Second

// startupMarkers are console lines a guest kernel prints only once its
// start-up is over: it got as far as mounting a root filesystem (a probe
// boots with no disk, so that fails) or running init.
var startupMarkers = []string{
	"VFS: Cannot open root device",
	"VFS: Unable to mount root",
	"Freeing unused kernel",
	"Run /",
}

// Verdict is the accelerator a kernel gets on this host, and why.
type Verdict struct {
	// Kernel is the SHA-256 of the kernel image, in hex.
	Kernel string `json:"kernel_sha256"`
	// Accel is KVM or TCG.
	Accel string `json:"accel"`
	// Reason explains Accel in one line, starting with it:
	// "tcg: /dev/kvm is PVM (kvm_pvm) and kernel 8f1c8f73 does not boot under it (...)".
	Reason string `json:"reason"`
	// Probed is when the probe boot ran; zero when none was needed (no
	// KVM at all, or the accelerator was configured).
	Probed  time.Time `json:"probed,omitzero"`
	ProbeMS float64   `json:"probe_ms,omitempty"`
	// Output is the end of what the probe's QEMU and guest printed.
	Output string `json:"output,omitempty"`
}

// ShortKernel is the first 8 hex digits of the kernel's hash, as the reasons
// name it.
func (v Verdict) ShortKernel() string { return short(v.Kernel) }

func short(hash string) string {
	if len(hash) > 8 {
		return hash[:8]
	}
	return hash
}

// Prober decides per guest kernel whether KVM boots it. It is safe for
// concurrent use, also across processes sharing CacheDir: a kernel is
// probed once and every later question is answered from the cache.
type Prober struct {
	// QEMU is the qemu-system-x86_64 binary the probe runs.
	QEMU string
	// Args returns QEMU's arguments for a probe boot of kernel under
	// accel, with the guest's serial console on standard output and no
	// disk. The VMM driver supplies it, so the probe boots the machine
	// shape the driver runs.
	Args func(accel, kernel string) []string
	// CacheDir holds verdicts (<CacheDir>/accel/<kernel>-<host>.json);
	// empty keeps them in memory only.
	CacheDir string
	// Timeout bounds a probe boot; 0 means DefaultTimeout.
	Timeout time.Duration
	// Root is the host root ReadHost reads; empty is this machine.
	Root string
	Log  *slog.Logger

	hostOnce    sync.Once
	host        Host
	qemuVersion string

	// mu guards memo: verdicts by kernel file identity, so a kernel is
	// hashed once per process.
	mu   sync.Mutex
	memo map[string]Verdict

	probes atomic.Int64
}

// Probes returns how many probe boots this Prober has run.
func (p *Prober) Probes() int64 { return p.probes.Load() }

// Host returns the host as the Prober sees it.
func (p *Prober) Host() Host {
	p.readHost()
	return p.host
}

func (p *Prober) readHost() {
	p.hostOnce.Do(func() {
		p.host = ReadHost(p.Root)
		if out, err := exec.Command(p.QEMU, "-version").Output(); err == nil {
			p.qemuVersion, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
		}
	})
}

func (p *Prober) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (p *Prober) timeout() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	return DefaultTimeout
}

// Choose returns the accelerator kernel gets here: KVM when a probe boot
// under KVM reaches the end of the kernel's start-up, TCG otherwise. The
// error is for a kernel that cannot be read or a probe that could not run
// (ctx ended); a kernel that does not boot is a TCG verdict, not an error.
func (p *Prober) Choose(ctx context.Context, kernel string) (Verdict, error) {
	p.readHost()
	id, err := fileIdentity(kernel)
	if err != nil {
		return Verdict{}, err
	}
	p.mu.Lock()
	v, ok := p.memo[id]
	p.mu.Unlock()
	if ok {
		return v, nil
	}
	sum, err := hashFile(kernel)
	if err != nil {
		return Verdict{}, err
	}
	if v, err = p.verdict(ctx, kernel, sum); err != nil {
		return Verdict{}, err
	}
	p.mu.Lock()
	if p.memo == nil {
		p.memo = map[string]Verdict{}
	}
	p.memo[id] = v
	p.mu.Unlock()
	return v, nil
}

// verdict answers from the disk cache or, under its lock, probes and fills
// it.
func (p *Prober) verdict(ctx context.Context, kernel, sum string) (Verdict, error) {
	h := p.host
	if !h.KVM {
		return Verdict{Kernel: sum, Accel: TCG, Reason: "tcg: " + h.Describe()}, nil
	}
	if p.CacheDir == "" {
		return p.probe(ctx, kernel, sum)
	}
	dir := filepath.Join(p.CacheDir, "accel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Verdict{}, fmt.Errorf("create verdict cache %s: %w", dir, err)
	}
	base := filepath.Join(dir, short(sum)+"-"+short(h.ID(p.qemuVersion)))
	if v, ok := readVerdict(base+".json", sum); ok {
		return v, nil
	}
	unlock, err := fsutil.Lock(ctx, base+".lock")
	if err != nil {
		return Verdict{}, err
	}
	defer unlock()
	if v, ok := readVerdict(base+".json", sum); ok {
		return v, nil // probed by another process while we waited
	}
	v, err := p.probe(ctx, kernel, sum)
	if err != nil {
		return Verdict{}, err
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	if err := fsutil.WriteFileAtomic(base+".json", append(b, '\n'), 0o644); err != nil {
		return Verdict{}, fmt.Errorf("write verdict %s.json: %w", base, err)
	}
	return v, nil
}

func readVerdict(path, sum string) (Verdict, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Verdict{}, false
	}
	var v Verdict
	if json.Unmarshal(b, &v) != nil || v.Kernel != sum || (v.Accel != KVM && v.Accel != TCG) {
		return Verdict{}, false
	}
	return v, true
}

// probe boots kernel under KVM, bounded by the Prober's timeout, and turns
// what happened into a verdict.
func (p *Prober) probe(ctx context.Context, kernel, sum string) (Verdict, error) {
	p.probes.Add(1)
	h := p.host
	begin := time.Now()
	booted, why, output, err := p.boot(ctx, kernel)
	if err != nil {
		return Verdict{}, err
	}
	took := time.Since(begin)
	v := Verdict{Kernel: sum, Probed: begin.UTC(), ProbeMS: float64(took.Microseconds()) / 1000, Output: output}
	k := "kernel " + short(sum)
	switch {
	case booted:
		v.Accel = KVM
		v.Reason = fmt.Sprintf("kvm: %s boots under %s (start-up done in %d ms)", k, h.Describe(), took.Milliseconds())
	case h.Kind == KindPVM:
		v.Accel = TCG
		v.Reason = fmt.Sprintf("tcg: /dev/kvm is %s and %s does not boot under it (%s)", h.Describe(), k, why)
	default:
		v.Accel = TCG
		v.Reason = fmt.Sprintf("tcg: %s does not boot under %s (%s)", k, h.Describe(), why)
	}
	p.log().Info("accelerator probed", "kernel", short(sum), "accel", v.Accel, "reason", v.Reason, "duration_ms", took.Milliseconds())
	return v, nil
}

// maxOutput bounds what a probe keeps of QEMU's output.
const maxOutput = 4096

// boot runs the probe QEMU until the guest's console shows a start-up
// marker, QEMU exits, or the bound passes; QEMU's process group is killed
// whichever comes first. why says what happened when the kernel did not
// boot.
func (p *Prober) boot(ctx context.Context, kernel string) (booted bool, why, output string, err error) {
	cmd := exec.Command(p.QEMU, p.Args(KVM, kernel)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// An exit counts when QEMU's process ends, even if something it left
	// behind still holds its output open.
	cmd.WaitDelay = 100 * time.Millisecond
	out := &tailBuffer{max: maxOutput}
	cmd.Stderr = out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return false, "", "", fmt.Errorf("probe %s: %w", kernel, err)
	}
	if err := cmd.Start(); err != nil {
		return false, "", "", fmt.Errorf("probe %s: run %s: %w", kernel, p.QEMU, err)
	}
	marker := make(chan struct{})
	go func() {
		var once sync.Once
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			out.Write([]byte(line + "\n"))
			for _, m := range startupMarkers {
				if strings.Contains(line, m) {
					once.Do(func() { close(marker) })
				}
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// The pipe's reader may still hold a line when QEMU exits: give it a
	// moment before calling an exit a failure.
	timer := time.NewTimer(p.timeout())
	defer timer.Stop()
	kill := func() {
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		<-exited
	}
	select {
	case <-marker:
		kill()
		return true, "", out.String(), nil
	case werr := <-exited:
		select {
		case <-marker:
			return true, "", out.String(), nil
		case <-time.After(50 * time.Millisecond):
		}
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		return false, fmt.Sprintf("qemu exited (%v): %s", werr, out.lastLines(3)), out.String(), nil
	case <-timer.C:
		kill()
		if s := out.lastLines(1); s != "" {
			return false, fmt.Sprintf("start-up not done after %s; last output: %s", p.timeout(), s), out.String(), nil
		}
		return false, fmt.Sprintf("no console output in %s", p.timeout()), out.String(), nil
	case <-ctx.Done():
		kill()
		return false, "", "", fmt.Errorf("probe %s: %w", kernel, context.Cause(ctx))
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// lastLines returns the last n non-empty lines, joined by "; ".
func (t *tailBuffer) lastLines(n int) string {
	var lines []string
	for _, l := range strings.Split(t.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// fileIdentity names a file's content as far as its metadata tells: a
// rebuilt kernel gets a new one.
func fileIdentity(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("stat kernel %s: %w", path, err)
	}
	return fmt.Sprintf("%s\x00%d\x00%d\x00%d\x00%d", path, st.Dev, st.Ino, st.Size, st.Mtim.Nano()), nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read kernel %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read kernel %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// KVMBoots says whether KVM boots kernel here, and why, for choosing a VMM
// that runs under KVM only: the verdict of Choose. A nil Prober (no QEMU to
// probe with) says no.
func (p *Prober) KVMBoots(ctx context.Context, kernel string) (bool, string, error) {
	if p == nil {
		return false, "no qemu-system-x86_64 to probe KVM with", nil
	}
	v, err := p.Choose(ctx, kernel)
	if err != nil {
		return false, "", err
	}
	return v.Accel == KVM, v.Reason, nil
}
