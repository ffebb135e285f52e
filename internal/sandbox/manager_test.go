package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
)

// world is a set of fakes that record what is held, so a test can assert
// that nothing leaks.
type world struct {
	mu       sync.Mutex
	disks    map[string]bool
	slots    map[int]bool
	machines map[int]*fakeMachine
	policies map[int]slot.Policy
	nextPID  int

	// detached holds the disks kept for paused sandboxes; bases the image
	// each disk was prepared over; restored the state dir each machine
	// came from ("" for a cold boot).
	detached map[string]bool
	bases    map[string]string
	kernel   string
	// tplKey is the template's build key; "" turns template snapshots off.
	tplKey string
	// tplStart, tplReady and tplEnv are the template's start command,
	// ready command and environment.
	tplStart, tplReady string
	tplEnv             map[string]string

	failDisk, failSlot, failStart, failReady, failAdopt bool
	failInit                                            bool
	// slotErr and startErr, when set, are what Get and Start return;
	// console is what a machine's console log holds.
	slotErr, startErr                                error
	console                                          string
	failPause, failSnapshot, failRestore, failAttach bool
	failFlatten, failStop, failRemove                bool
	// released counts each release by resource ("remove sb1",
	// "detach sb1", "return 3", "stop 101").
	released map[string]int
	execFn   func(ctx context.Context, req agent.ExecRequest, stdout, stderr io.Writer) (agent.ExitStatus, error)
	// onReady, when set, runs at the start of every agent's WaitReady
	// (a test holds a create there); starts counts cold boots.
	onReady func()
	starts  int
	// failInits fails that many agent inits; maxSlots, when set, is how
	// many slots Get hands out.
	failInits int
	maxSlots  int
}

func newWorld() *world {
	return &world{disks: map[string]bool{}, slots: map[int]bool{}, machines: map[int]*fakeMachine{}, nextPID: 100,
		detached: map[string]bool{}, bases: map[string]string{}, kernel: "/k", released: map[string]int{}}
}

func (w *world) Get(name string) (template.Template, error) {
	if name != "base" {
		return template.Template{}, template.ErrNotFound
	}
	return template.Template{Name: "base", Kernel: w.kernel, Rootfs: "/r", RootfsSizeBytes: 1 << 30, Key: w.tplKey,
		StartCmd: w.tplStart, ReadyCmd: w.tplReady, Env: w.tplEnv}, nil
}

func (w *world) Name() string { return "fake" }
func (w *world) Prepare(ctx context.Context, id, dir, base string, size int64) (rootfs.Disk, error) {
	if w.failDisk {
		return rootfs.Disk{}, errors.New("disk full")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.disks[id] = true
	w.bases[id] = base
	return rootfs.Disk{Path: filepath.Join(dir, "disk"), Format: "raw"}, nil
}
func (w *world) Remove(ctx context.Context, id, dir string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failRemove {
		return errors.New("device busy")
	}
	w.released["remove "+id]++
	delete(w.disks, id)
	delete(w.detached, id)
	return nil
}
func (w *world) Usage(ctx context.Context, id, dir string) (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.disks[id] {
		return 0, rootfs.ErrNotFound
	}
	return 4096, nil
}
func (w *world) Detach(ctx context.Context, id, dir string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.disks[id] {
		return rootfs.ErrNotFound
	}
	for _, m := range w.machines {
		if m.disk == id {
			return errors.New("disk still open by a vmm")
		}
	}
	w.released["detach "+id]++
	w.detached[id] = true
	return nil
}
func (w *world) Attach(ctx context.Context, id, dir string) (rootfs.Disk, error) {
	if w.failAttach {
		return rootfs.Disk{}, errors.New("loop device busy")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.disks[id] {
		return rootfs.Disk{}, rootfs.ErrNotFound
	}
	delete(w.detached, id)
	return rootfs.Disk{Path: filepath.Join(dir, "disk"), Format: "raw"}, nil
}
func (w *world) Flatten(ctx context.Context, id, dir, dst string) error {
	if w.failFlatten {
		return errors.New("no space")
	}
	w.mu.Lock()
	ok := w.disks[id]
	w.mu.Unlock()
	if !ok {
		return rootfs.ErrNotFound
	}
	return os.WriteFile(dst, []byte("image of "+id), 0o600)
}

type fakeSlots struct{ w *world }

func (s fakeSlots) Get(ctx context.Context) (*slot.Slot, error) {
	w := s.w
	if w.failSlot {
		return nil, errors.New("no slot")
	}
	if w.slotErr != nil {
		return nil, w.slotErr
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.maxSlots > 0 && len(w.slots) >= w.maxSlots {
		return nil, fmt.Errorf("all %d slots taken: %w", w.maxSlots, slot.ErrNoCapacity)
	}
	for i := 0; ; i++ {
		if !w.slots[i] {
			w.slots[i] = true
			return &slot.Slot{Index: i, HostAddr: netip.AddrFrom4([4]byte{10, 11, 0, byte(i + 1)})}, nil
		}
	}
}
func (s fakeSlots) Return(ctx context.Context, sl *slot.Slot) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.released[fmt.Sprint("return ", sl.Index)]++
	delete(s.w.slots, sl.Index)
	return nil
}

// Park is Return: the namespace mode keeps nothing for a paused sandbox.
func (s fakeSlots) Park(ctx context.Context, sl *slot.Slot) (bool, error) {
	return false, s.Return(ctx, sl)
}
func (s fakeSlots) Unpark(ctx context.Context, _ int) (*slot.Slot, error) { return s.Get(ctx) }
func (s fakeSlots) Reserve(int) (bool, error)                             { return false, nil }
func (s fakeSlots) Unreserve(int)                                         {}
func (s fakeSlots) Movable() error                                        { return nil }

func (s fakeSlots) SetPolicy(ctx context.Context, sl *slot.Slot, pol slot.Policy) error {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if !s.w.slots[sl.Index] {
		return errors.New("policy on a slot not held")
	}
	if s.w.policies == nil {
		s.w.policies = map[int]slot.Policy{}
	}
	s.w.policies[sl.Index] = pol
	return nil
}

func (s fakeSlots) Adopt(index int) (*slot.Slot, error) {
	if s.w.failAdopt {
		return nil, errors.New("netns gone")
	}
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.slots[index] = true
	return &slot.Slot{Index: index}, nil
}

type fakeDriver struct{ w *world }

func (d fakeDriver) Name() string { return "fake" }
func (d fakeDriver) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	w := d.w
	if w.failStart {
		return nil, errors.New("qemu exploded")
	}
	if w.startErr != nil {
		return nil, w.startErr
	}
	if w.console != "" {
		if err := os.WriteFile(vmm.ConsoleLog(spec.Dir), []byte(w.console), 0o600); err != nil {
			return nil, err
		}
	}
	w.mu.Lock()
	w.starts++
	w.mu.Unlock()
	return w.newMachine(spec, ""), nil
}

func (w *world) newMachine(spec vmm.Spec, from string) *fakeMachine {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextPID++
	m := &fakeMachine{w: w, pid: w.nextPID, done: make(chan struct{}), disk: spec.ID, from: from, spec: spec}
	w.machines[m.pid] = m
	return m
}

// Restore checks what a real driver needs: a state directory written by
// Snapshot and the snapshot's shape.
func (d fakeDriver) Restore(ctx context.Context, spec vmm.Spec, dir string) (vmm.Machine, error) {
	if d.w.failRestore {
		return nil, errors.New("incoming migration failed")
	}
	b, err := os.ReadFile(filepath.Join(dir, "mem"))
	if err != nil {
		return nil, err
	}
	if want := fmt.Sprintf("vcpus=%d mem=%d", spec.VCPUs, spec.MemoryMiB); string(b) != want {
		return nil, fmt.Errorf("state %q, spec %q", b, want)
	}
	if _, err := os.Stat(spec.Kernel); err != nil {
		return nil, fmt.Errorf("restore without its template's kernel: %w", err)
	}
	return d.w.newMachine(spec, dir), nil
}
func (d fakeDriver) Attach(ctx context.Context, spec vmm.Spec, pid int) (vmm.Machine, error) {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	m, ok := d.w.machines[pid]
	if !ok {
		return nil, vmm.ErrNotRunning
	}
	return m, nil
}

type fakeMachine struct {
	w    *world
	pid  int
	disk string
	from string
	once sync.Once
	done chan struct{}

	mu     sync.Mutex
	paused bool
	spec   vmm.Spec
}

func (m *fakeMachine) PID() int { return m.pid }
func (m *fakeMachine) Pause(ctx context.Context) error {
	if m.w.failPause {
		return errors.New("qmp stop failed")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.paused = true
	return nil
}
func (m *fakeMachine) Resume(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.paused = false
	return nil
}
func (m *fakeMachine) isPaused() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.paused }

// State reports the vCPUs' state, as QEMU and Firecracker do.
func (m *fakeMachine) State(context.Context) (vmm.State, error) {
	if m.isPaused() {
		return vmm.StatePaused, nil
	}
	return vmm.StateRunning, nil
}

// Snapshot writes a state file naming the machine's shape.
func (m *fakeMachine) Snapshot(ctx context.Context, dir string, _ vmm.SnapshotOptions) error {
	if m.w.failSnapshot {
		os.WriteFile(filepath.Join(dir, "partial"), []byte("x"), 0o600)
		return errors.New("migration failed")
	}
	if !m.isPaused() {
		return errors.New("snapshot of a running machine")
	}
	return os.WriteFile(filepath.Join(dir, "mem"), []byte(fmt.Sprintf("vcpus=%d mem=%d", m.spec.VCPUs, m.spec.MemoryMiB)), 0o600)
}
func (m *fakeMachine) Done() <-chan struct{} { return m.done }
func (m *fakeMachine) Stop(ctx context.Context) error {
	if m.w.failStop {
		return errors.New("qemu will not die")
	}
	m.w.mu.Lock()
	m.w.released[fmt.Sprint("stop ", m.pid)]++
	m.w.mu.Unlock()
	m.crash()
	return nil
}

// crash ends the machine as if its process died.
func (m *fakeMachine) crash() {
	m.once.Do(func() {
		m.w.mu.Lock()
		delete(m.w.machines, m.pid)
		m.w.mu.Unlock()
		close(m.done)
	})
}

// fakeAgent runs commands in a world; its file and terminal calls are
// not part of it (the VM tier and the agent's own tests cover them).
type fakeAgent struct {
	w *world
	guestOnly
}

// guestOnly answers the calls only a real guest can.
type guestOnly struct{}

var errGuestOnly = errors.New("not in the fake world")

func (guestOnly) SendStdin(context.Context, uint32, []byte) error { return errGuestOnly }
func (guestOnly) CloseStdin(context.Context, uint32) error        { return errGuestOnly }
func (guestOnly) ReadFile(context.Context, string, string) (io.ReadCloser, int64, error) {
	return nil, 0, errGuestOnly
}
func (guestOnly) WriteFile(context.Context, string, string, io.Reader, int64) (agent.Entry, error) {
	return agent.Entry{}, errGuestOnly
}
func (guestOnly) Stat(context.Context, string, string) (agent.Entry, error) {
	return agent.Entry{}, errGuestOnly
}
func (guestOnly) List(context.Context, string, string, int) ([]agent.Entry, error) {
	return nil, errGuestOnly
}
func (guestOnly) MakeDir(context.Context, string, string) (agent.Entry, error) {
	return agent.Entry{}, errGuestOnly
}
func (guestOnly) Move(context.Context, string, string, string) (agent.Entry, error) {
	return agent.Entry{}, errGuestOnly
}
func (guestOnly) Remove(context.Context, string, string) error { return errGuestOnly }
func (guestOnly) StartTerminal(context.Context, agent.TerminalRequest) (*agent.Terminal, error) {
	return nil, errGuestOnly
}

func (a fakeAgent) WaitReady(ctx context.Context) error {
	if a.w.onReady != nil {
		a.w.onReady()
	}
	if a.w.failReady {
		return errors.New("no answer")
	}
	return nil
}
func (a fakeAgent) Init(ctx context.Context, env map[string]string) error {
	a.w.mu.Lock()
	defer a.w.mu.Unlock()
	if a.w.failInits > 0 {
		a.w.failInits--
		return errors.New("init refused")
	}
	if a.w.failInit {
		return errors.New("init refused")
	}
	return nil
}
func (a fakeAgent) Rekey(ctx context.Context, env map[string]string, token string) error {
	if token == "" {
		return errors.New("rekey with an empty token")
	}
	return a.Init(ctx, env)
}
func (a fakeAgent) Exec(ctx context.Context, req agent.ExecRequest, stdout, stderr io.Writer) (agent.ExitStatus, error) {
	if a.w.execFn != nil {
		return a.w.execFn(ctx, req, stdout, stderr)
	}
	if req.Cmd == "true" {
		return agent.ExitStatus{}, nil
	}
	fmt.Fprint(stdout, req.Cmd)
	return agent.ExitStatus{Code: 7}, nil
}

// leaks lists every resource the world still holds.
func (w *world) leaks() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for id := range w.disks {
		out = append(out, "disk "+id)
	}
	for i := range w.slots {
		out = append(out, fmt.Sprint("slot ", i))
	}
	for pid := range w.machines {
		out = append(out, fmt.Sprint("machine ", pid))
	}
	return out
}

func newManager(t *testing.T, w *world, st *store.Store, dir string) *Manager {
	t.Helper()
	return newManagerWith(t, w, st, dir, nil)
}

// newManagerWith is newManager with its config and parts adjusted by tune.
func newManagerWith(t *testing.T, w *world, st *store.Store, dir string, tune func(*Config, *Deps)) *Manager {
	t.Helper()
	cfg := DefaultConfig(dir)
	cfg.BootTimeout = time.Second
	d := Deps{
		Store: st, Templates: w, Disks: w, Slots: fakeSlots{w}, VMM: fakeDriver{w},
		Agent: func(netip.Addr, string) Agent { return fakeAgent{w: w} },
		Log:   slog.New(slog.NewTextHandler(testLogOut(t), nil)),
	}
	if tune != nil {
		tune(&cfg, &d)
	}
	m, err := NewManager(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func setup(t *testing.T) (*world, *store.Store, string, *Manager) {
	t.Helper()
	return setupWith(t, nil)
}

// setupWith is setup with the manager's config and parts adjusted by tune.
func setupWith(t *testing.T, tune func(*Config, *Deps)) (*world, *store.Store, string, *Manager) {
	t.Helper()
	w := newWorld()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "ember.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	sbDir := filepath.Join(dir, "sandboxes")
	w.kernel = filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(w.kernel, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	return w, st, sbDir, newManagerWith(t, w, st, sbDir, tune)
}

// assertEmpty checks that no record, directory or resource remains.
func assertEmpty(t *testing.T, w *world, st *store.Store, m *Manager, dir string) {
	t.Helper()
	if l := w.leaks(); len(l) > 0 {
		t.Errorf("leaked: %v", l)
	}
	if recs, _ := st.ListSandboxes(context.Background()); len(recs) > 0 {
		t.Errorf("records left: %+v", recs)
	}
	if l := m.List(); len(l) > 0 {
		t.Errorf("manager still lists %+v", l)
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("sandbox dirs left: %v", entries)
	}
}

func TestCreateExecDestroy(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{Env: map[string]string{"A": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StateRunning || r.VCPUs != 1 || r.MemoryMiB != 256 || r.Template != "base" || r.DiskMiB != 1024 {
		t.Fatalf("record %+v", r)
	}
	if got := r.ExpiresAt.Sub(r.CreatedAt); got != 5*time.Minute {
		t.Fatalf("default timeout %s", got)
	}
	for _, phase := range []string{"disk", "network", "boot", "agent", "total"} {
		if _, ok := r.TimingsMS[phase]; !ok {
			t.Errorf("no %s timing in %v", phase, r.TimingsMS)
		}
	}
	if stored, err := st.GetSandbox(ctx, r.ID); err != nil || stored.State != StateRunning || stored.VMMPID == 0 {
		t.Fatalf("stored %+v, %v", stored, err)
	}
	var out stringsBuilder
	res, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "hi"}, &out, io.Discard)
	if err != nil || res.ExitCode != 7 || out.String() != "hi" {
		t.Fatalf("exec: %+v %v %q", res, err, out.String())
	}
	if err := m.Destroy(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, w, st, m, dir)
	if err := m.Destroy(ctx, r.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("destroy twice: %v", err)
	}
}

type stringsBuilder struct {
	mu sync.Mutex
	b  []byte
}

func (s *stringsBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}
func (s *stringsBuilder) String() string { s.mu.Lock(); defer s.mu.Unlock(); return string(s.b) }

func TestCreateRejectsBadInputLeavingNothing(t *testing.T) {
	cases := []struct {
		name  string
		req   CreateRequest
		field string
		want  error
	}{
		{"unknown template", CreateRequest{Template: "nope"}, "", ErrTemplateNotFound},
		{"negative vcpus", CreateRequest{VCPUs: -1}, "vcpus", ErrInvalid},
		{"absurd vcpus", CreateRequest{VCPUs: 1000}, "vcpus", ErrInvalid},
		{"tiny memory", CreateRequest{MemoryMiB: 8}, "memory_mib", ErrInvalid},
		{"absurd memory", CreateRequest{MemoryMiB: 1 << 30}, "memory_mib", ErrInvalid},
		{"negative timeout", CreateRequest{TimeoutS: -5}, "timeout_s", ErrInvalid},
		{"absurd timeout", CreateRequest{TimeoutS: 1 << 30}, "timeout_s", ErrInvalid},
		{"bad env name", CreateRequest{Env: map[string]string{"A=B": "x"}}, "env", ErrInvalid},
		{"disk below the template's", CreateRequest{DiskMiB: 512}, "disk_mib", ErrInvalid},
		{"absurd disk", CreateRequest{DiskMiB: 1 << 30}, "disk_mib", ErrInvalid},
		{"auto-resume without auto-pause", CreateRequest{AutoResume: true}, "auto_resume", ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			_, err := m.Create(context.Background(), tc.req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			var inv *InvalidError
			if tc.field != "" && (!errors.As(err, &inv) || inv.Field != tc.field) {
				t.Fatalf("err = %v, want field %s", err, tc.field)
			}
			assertEmpty(t, w, st, m, dir)
		})
	}
}

func TestCreateFailureUnwindsEverything(t *testing.T) {
	qemuExit := &vmm.ExitError{VMM: "qemu", During: "during start",
		Log: "qemu-system-x86_64: -netdev tap,id=net0,ifname=tap0: could not open /dev/net/tun: No such device\n"}
	cases := []struct {
		name string
		set  func(w *world)
		// kind is the OpError's kind; cause what its Cause must say.
		kind  error
		cause string
	}{
		{"disk", func(w *world) { w.failDisk = true }, ErrDisk, "disk full"},
		{"slot", func(w *world) { w.failSlot = true }, ErrNetwork, "no slot"},
		{"no capacity", func(w *world) { w.slotErr = fmt.Errorf("indexes 0..9 taken: %w", slot.ErrNoCapacity) }, ErrNoSlots, "indexes 0..9 taken: no free network slot"},
		{"vmm", func(w *world) { w.failStart = true }, ErrVMMStart, "qemu exploded"},
		{"vmm exits", func(w *world) { w.startErr = fmt.Errorf("start sb: %w", qemuExit) }, ErrVMMStart,
			"qemu-system-x86_64: -netdev tap,id=net0,ifname=tap0: could not open /dev/net/tun: No such device"},
		{"agent", func(w *world) { w.failReady = true }, ErrBoot, "no answer"},
		{"agent with a console", func(w *world) {
			w.failReady, w.console = true, "booting\nKernel panic - not syncing: VFS: Unable to mount root fs\n"
		},
			ErrBoot, "no answer; the guest console's last line: Kernel panic - not syncing: VFS: Unable to mount root fs"},
		{"init", func(w *world) { w.failInit = true }, ErrAgent, "init refused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, st, dir, m := setup(t)
			tc.set(w)
			_, err := m.Create(context.Background(), CreateRequest{})
			var op *OpError
			if !errors.As(err, &op) || !errors.Is(err, tc.kind) {
				t.Fatalf("create: %v, want an *OpError of %v", err, tc.kind)
			}
			if op.Op != "create" || op.ID == "" || op.Cause() != tc.cause {
				t.Fatalf("op %q id %q cause %q, want create and cause %q", op.Op, op.ID, op.Cause(), tc.cause)
			}
			if want := "create sandbox " + op.ID + ": "; !strings.HasPrefix(op.Summary(), want) || !strings.HasSuffix(op.Summary(), tc.cause) {
				t.Fatalf("summary %q", op.Summary())
			}
			assertEmpty(t, w, st, m, dir)
		})
	}
}

func TestExecErrors(t *testing.T) {
	w, _, _, m := setup(t)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Exec(ctx, r.ID, ExecRequest{}, io.Discard, io.Discard); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty cmd: %v", err)
	}
	if _, err := m.Exec(ctx, "nope", ExecRequest{Cmd: "x"}, io.Discard, io.Discard); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	w.execFn = func(ctx context.Context, _ agent.ExecRequest, _, _ io.Writer) (agent.ExitStatus, error) {
		<-ctx.Done()
		return agent.ExitStatus{}, ctx.Err()
	}
	if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "sleep", Timeout: 50 * time.Millisecond}, io.Discard, io.Discard); !errors.Is(err, ErrExecTimeout) {
		t.Fatalf("timeout: %v", err)
	}
}

// crashAndWait kills r's machine as if its process died and waits for the
// manager to mark the sandbox failed.
func crashAndWait(t *testing.T, w *world, m *Manager, r store.Sandbox) {
	t.Helper()
	w.mu.Lock()
	mach := w.machines[r.VMMPID]
	w.mu.Unlock()
	mach.crash()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := m.Get(r.ID)
		if got.State == StateError {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %s after the machine died", got.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMachineDeathMarksErrorAndReleases(t *testing.T) {
	w, st, _, m := setup(t)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	crashAndWait(t, w, m, r)
	if l := w.leaks(); len(l) > 0 {
		t.Fatalf("leaked after machine death: %v", l)
	}
	stored, _ := st.GetSandbox(ctx, r.ID)
	if stored.State != StateError || stored.Error == "" {
		t.Fatalf("stored %+v", stored)
	}
	if _, err := m.Exec(ctx, r.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); !errors.Is(err, ErrConflict) {
		t.Fatalf("exec on failed sandbox: %v", err)
	}
	if err := m.Destroy(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverAdoptsSurvivorsAndMarksTheLost(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	alive, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	lost, err := m.Create(ctx, CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// A create interrupted by a crash: a record in "creating".
	half := store.Sandbox{ID: "halfway", State: StateCreating, SlotIndex: -1, Dir: filepath.Join(dir, "halfway"), CreatedAt: time.Now()}
	if err := st.PutSandbox(ctx, half); err != nil {
		t.Fatal(err)
	}
	m.Close() // the daemon goes away; its machines stay

	w.mu.Lock()
	lostMachine := w.machines[lost.VMMPID]
	w.mu.Unlock()
	lostMachine.crash()
	// The lost sandbox's slot is still marked used: the network reclaim,
	// not the manager, removes it; model that by clearing the fake.
	w.mu.Lock()
	w.slots = map[int]bool{}
	w.mu.Unlock()

	m2 := newManager(t, w, st, dir)
	keep, err := m2.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slots := keep.Slots
	if !slots[alive.SlotIndex] || len(slots) != 1 {
		t.Fatalf("slots in use %v, want only %d", slots, alive.SlotIndex)
	}
	if !keep.PIDs[alive.VMMPID] || len(keep.PIDs) != 1 {
		t.Fatalf("vmm pids kept %v, want only %d", keep.PIDs, alive.VMMPID)
	}
	if got, _ := m2.Get(alive.ID); got.State != StateRunning {
		t.Fatalf("survivor is %s", got.State)
	}
	for _, id := range []string{lost.ID, "halfway"} {
		got, err := m2.Get(id)
		if err != nil || got.State != StateError || got.Error == "" {
			t.Fatalf("%s: %+v %v", id, got, err)
		}
	}
	if _, err := m2.Exec(ctx, alive.ID, ExecRequest{Cmd: "x"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("exec in adopted sandbox: %v", err)
	}
	for _, id := range []string{alive.ID, lost.ID, "halfway"} {
		if err := m2.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	assertEmpty(t, w, st, m2, dir)
}

func TestReaperDestroysExpired(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	r, err := m.Create(ctx, CreateRequest{TimeoutS: 1})
	if err != nil {
		t.Fatal(err)
	}
	keep, err := m.Create(ctx, CreateRequest{TimeoutS: 3600})
	if err != nil {
		t.Fatal(err)
	}
	m.reap(ctx, time.Now().Add(2*time.Second))
	if _, err := m.Get(r.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired sandbox still there: %v", err)
	}
	if _, err := m.Get(keep.ID); err != nil {
		t.Fatalf("unexpired sandbox gone: %v", err)
	}
	if err := m.Destroy(ctx, keep.ID); err != nil {
		t.Fatal(err)
	}
	assertEmpty(t, w, st, m, dir)
}

func TestConcurrentCreateDestroy(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := m.Create(ctx, CreateRequest{})
			if err != nil {
				t.Error(err)
				return
			}
			m.List()
			if err := m.Destroy(ctx, r.ID); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	assertEmpty(t, w, st, m, dir)
}

func TestNetworkPolicyAtCreateAndWhileRunning(t *testing.T) {
	w, st, dir, m := setup(t)
	ctx := context.Background()
	allow := netip.MustParsePrefix("198.18.0.0/15")
	r, err := m.Create(ctx, CreateRequest{Network: &slot.Policy{Internet: false, Allow: []netip.Prefix{allow}}})
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	got := w.policies[r.SlotIndex]
	w.mu.Unlock()
	if got.Internet || len(got.Allow) != 1 || got.Allow[0] != allow {
		t.Fatalf("slot policy %+v", got)
	}
	if r.Network.Internet || r.Network.Allow[0] != "198.18.0.0/15" {
		t.Fatalf("record policy %+v", r.Network)
	}

	deny := netip.MustParsePrefix("198.19.0.0/16")
	r2, err := m.SetNetwork(ctx, r.ID, slot.Policy{Internet: true, Deny: []netip.Prefix{deny}})
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	got = w.policies[r.SlotIndex]
	w.mu.Unlock()
	if !got.Internet || got.Deny[0] != deny || !r2.Network.Internet {
		t.Fatalf("after SetNetwork: slot %+v record %+v", got, r2.Network)
	}
	stored, _ := st.GetSandbox(ctx, r.ID)
	back, err := Policy(stored.Network)
	if err != nil || !back.Internet || back.Deny[0] != deny {
		t.Fatalf("stored policy %+v → %+v, %v", stored.Network, back, err)
	}

	bad := slot.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}}
	if _, err := m.SetNetwork(ctx, r.ID, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("host bits: %v", err)
	}
	if _, err := m.SetNetwork(ctx, "nope", slot.DefaultPolicy); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	if err := m.Destroy(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, CreateRequest{Network: &bad}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("create with bad policy: %v", err)
	}
	assertEmpty(t, w, st, m, dir)
}

func testLogOut(t *testing.T) io.Writer {
	if os.Getenv("DBG") != "" {
		return os.Stderr
	}
	return io.Discard
}
