// Package sandbox owns the sandbox lifecycle: it turns a template into a
// running microVM (disk, network slot, VMM, agent), runs commands in it through
// the guest agent, destroys it, reaps it at its end time and, after a daemon
// restart, re-adopts the machines that survived and cleans up those that did not.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/cleanup"
	"github.com/emberhq/ember/internal/resource"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/internal/vmm"
)

// States a sandbox moves through.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopping = "stopping"
	// StatePaused: the machine's state is saved in the sandbox directory,
	// no VMM runs and no slot is held; its disk is kept, detached.
	StatePaused = "paused"
	// StatePausing and StateResuming mark a pause or resume in progress, so
	// Recover can finish or undo one a crash interrupted.
	StatePausing  = "pausing"
	StateResuming = "resuming"
	// StateError: the sandbox's machine is gone (it failed, or did not survive
	// a daemon restart); its resources are released and its record kept so a
	// client sees what happened. Deleting it removes the record.
	StateError = "error"
)

// Templates finds templates by name.
type Templates interface {
	Get(name string) (template.Template, error)
}

// Slots hands out network slots and applies their egress policy (see
// network.Slots, which implements it). How a paused sandbox's slot is kept
// is the provider's business: Park says whether it holds an address for
// Unpark.
type Slots interface {
	Get(ctx context.Context) (*slot.Slot, error)
	Park(ctx context.Context, s *slot.Slot) (held bool, err error)
	Unpark(ctx context.Context, index int) (*slot.Slot, error)
	Reserve(index int) (held bool, err error)
	Unreserve(index int)
	Adopt(index int) (*slot.Slot, error)
	SetPolicy(ctx context.Context, s *slot.Slot, pol slot.Policy) error
	// Movable says whether a machine saved on one slot restores on
	// another: nil, or why not (named snapshots, forks and template
	// snapshots need it; pause does not).
	Movable() error
}

// Agent is the host side of one sandbox's guest agent (agent.Client).
type Agent interface {
	WaitReady(ctx context.Context) error
	Init(ctx context.Context, env map[string]string) error
	Exec(ctx context.Context, req agent.ExecRequest, stdout, stderr io.Writer) (agent.ExitStatus, error)
	SendStdin(ctx context.Context, pid uint32, data []byte) error
	CloseStdin(ctx context.Context, pid uint32) error
	ReadFile(ctx context.Context, user, path string) (io.ReadCloser, int64, error)
	WriteFile(ctx context.Context, user, path string, src io.Reader, size int64) (agent.Entry, error)
	Stat(ctx context.Context, user, path string) (agent.Entry, error)
	List(ctx context.Context, user, path string, depth int) ([]agent.Entry, error)
	MakeDir(ctx context.Context, user, path string) (agent.Entry, error)
	Move(ctx context.Context, user, from, to string) (agent.Entry, error)
	Remove(ctx context.Context, user, path string) error
	StartTerminal(ctx context.Context, req agent.TerminalRequest) (*agent.Terminal, error)
}

// Terminal is a program on a terminal in a sandbox (agent.Terminal).
type Terminal interface {
	Pid() uint32
	Recv() (data []byte, st *agent.ExitStatus, err error)
	Write(ctx context.Context, p []byte) error
	Resize(ctx context.Context, cols, rows uint32) error
	Close() error
}

// Rekeyer is an Agent that can hand its guest a new access token (the
// agent's /init), which the guest requires from then on. A sandbox
// restored from a snapshot gets a token of its own this way instead of
// sharing the snapshot's with every other sandbox made from it.
type Rekeyer interface {
	Rekey(ctx context.Context, env map[string]string, token string) error
}

// Cgroups gives each running sandbox a cgroup that holds its VMM and
// helpers and bounds what they use (package cgroup implements it).
type Cgroups interface {
	Create(id string, l resource.Limits) error
	Place(id string, pid int) error
	Remove(id string) error
	Usage(id string) (resource.Usage, error)
}

// AgentDialer returns the agent client of a guest reachable at addr.
type AgentDialer func(addr netip.Addr, token string) Agent

// Sandbox is one sandbox held by the manager.
type Sandbox struct {
	// mu serialises lifecycle operations (create, destroy) on this sandbox.
	mu sync.Mutex
	// rec is the published record: replaced whole on every change so readers
	// never take mu (which a slow create or destroy may hold for seconds).
	rec atomic.Pointer[store.Sandbox]

	// held is the release of everything the sandbox holds, registered by
	// whoever acquired it (create, resume, a restart's re-adoption) and
	// run by whoever ends it (pause, fail, destroy): see hold.go. Guarded
	// by mu.
	held cleanup.Stack

	// Set while running; guarded by mu for writes.
	machine vmm.Machine
	slot    *slot.Slot
	// parked says the slot provider held the address of the slot the
	// sandbox last ran on when it paused (the bridge network mode).
	parked bool
	// live is set while the sandbox is running: its agent and the address
	// the host reaches the guest at. Read without mu (by Exec and the port
	// proxy); written with mu held.
	live atomic.Pointer[live]

	// samples is its usage history (RunSampler), under a lock of its own.
	samples samples
}

// live is what a running sandbox offers the host.
type live struct {
	agent Agent
	addr  netip.Addr
}

func (s *Sandbox) setLive(a Agent, addr netip.Addr) {
	if a == nil {
		s.live.Store(nil)
		return
	}
	s.live.Store(&live{agent: a, addr: addr})
}

func (s *Sandbox) getAgent() Agent {
	if l := s.live.Load(); l != nil {
		return l.agent
	}
	return nil
}

// Record returns a copy of the sandbox's current record.
func (s *Sandbox) Record() store.Sandbox { return *s.rec.Load() }

func (s *Sandbox) publish(r store.Sandbox) { s.rec.Store(&r) }

// CreateRequest is what a client asks for; zero values take the defaults.
type CreateRequest struct {
	Template  string
	VCPUs     int
	MemoryMiB int
	// DiskMiB is the root disk's size; 0 keeps the template's, smaller is
	// an error.
	DiskMiB  int
	TimeoutS int
	Env      map[string]string
	Metadata map[string]string
	// Network is the egress policy; nil takes slot.DefaultPolicy.
	Network *slot.Policy
	// Snapshot names a snapshot to restore instead of booting a template;
	// VCPUs, MemoryMiB and DiskMiB then default to (and must equal) the
	// snapshot's.
	Snapshot string
	// AutoPause pauses the sandbox at its end time instead of destroying it.
	AutoPause bool
	// Image, for a template build's sandbox, boots an image that is no
	// template yet instead of Template (see build.go).
	Image *Image
	// AutoResume resumes the sandbox, once paused, when traffic for it
	// reaches the port proxy.
	AutoResume bool
	// PrivateTraffic gives the sandbox a traffic token that the port
	// proxy requires of every request to its ports (the agent's excepted).
	PrivateTraffic bool
	// Limits lowers the bounds of the sandbox's cgroup below the
	// daemon's defaults; zero fields keep them.
	Limits resource.Limits
}

// ExecRequest runs one command in a sandbox.
type ExecRequest struct {
	Cmd  string
	Args []string
	Env  map[string]string
	Cwd  string
	// User is the guest user to run as; "" is DefaultUser.
	User  string
	Stdin []byte
	// KeepStdin leaves stdin open after Stdin for SendStdin and
	// CloseStdin; Started learns the pid they take.
	KeepStdin bool
	Started   func(pid uint32)
	// Timeout bounds the command; 0 takes the default.
	Timeout time.Duration
}

// ExecResult is how a command ended.
type ExecResult struct {
	ExitCode int
	Duration time.Duration
}

// newID returns 20 random characters of [a-z2-7] (100 bits): safe in host
// names (<port>-<id>.<domain>), kernel object names and paths.
func newID() string { return strings.ToLower(rand.Text())[:20] }

func newToken() string {
	b := make([]byte, 24)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// storedPolicy converts a policy to its stored form.
func storedPolicy(p slot.Policy) store.NetworkPolicy {
	out := store.NetworkPolicy{Internet: p.Internet}
	for _, a := range p.Allow {
		out.Allow = append(out.Allow, a.String())
	}
	for _, d := range p.Deny {
		out.Deny = append(out.Deny, d.String())
	}
	return out
}

// Policy returns the stored policy as the network package takes it.
func Policy(p store.NetworkPolicy) (slot.Policy, error) {
	out := slot.Policy{Internet: p.Internet}
	for _, l := range []struct {
		in  []string
		out *[]netip.Prefix
	}{{p.Allow, &out.Allow}, {p.Deny, &out.Deny}} {
		for _, c := range l.in {
			pfx, err := netip.ParsePrefix(c)
			if err != nil {
				return slot.Policy{}, fmt.Errorf("%w: %v", slot.ErrInvalidPolicy, err)
			}
			*l.out = append(*l.out, pfx)
		}
	}
	return out, nil
}
