package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/cleanup"
)

// ErrNoCapacity: the daemon cannot take the machine now (memory, vCPUs or
// room for guest RAM are committed, or too many creates wait their
// turn). A *CapacityError says which and when to retry.
var ErrNoCapacity = errors.New("capacity exhausted")

// CapacityError is a create or resume refused for want of capacity.
type CapacityError struct {
	// Resource is what ran out: "memory", "vcpus", "shm" or "queue".
	Resource string
	// Need is what the machine asked for and Free what was left, in the
	// resource's unit (MiB, vCPUs, queued creates).
	Need, Free int
	// RetryAfter is when trying again may succeed.
	RetryAfter time.Duration
}

func (e *CapacityError) Error() string {
	if e.Resource == "queue" {
		return fmt.Sprintf("capacity exhausted: %d creates wait for a turn already; retry in %s", e.Free, e.RetryAfter)
	}
	return fmt.Sprintf("capacity exhausted: %s: need %d, %d free; retry in %s", e.Resource, e.Need, e.Free, e.RetryAfter)
}

// isQueueFull reports whether err refuses a create for the length of the
// create queue, which no machine giving way would shorten.
func isQueueFull(err error) bool {
	var ce *CapacityError
	return errors.As(err, &ce) && ce.Resource == "queue"
}

// Unwrap makes errors.Is(err, ErrNoCapacity) true.
func (e *CapacityError) Unwrap() error { return ErrNoCapacity }

// Capacity is what the daemon may commit to machines that run (creating,
// running, resuming, pausing, stopping); a paused sandbox commits none. A
// zero limit is no limit.
type Capacity struct {
	// MemoryMiB is the memory the daemon may commit: each machine counts
	// its guest RAM plus OverheadMiB for its VMM.
	MemoryMiB   int
	OverheadMiB int
	// VCPUs is how many vCPUs may run: the host's CPUs times the
	// overcommit ratio.
	VCPUs int
	// ShmMiB is the room for guest RAM files (QEMU keeps each guest's RAM
	// in one on /dev/shm); ShmFree, when set, also says what is free there
	// now, for what others put on that file system.
	ShmMiB  int
	ShmFree func() (mib int, err error)
	// MaxParallel bounds the creates and resumes that run at once;
	// MaxQueue how many more wait for a turn, for at most QueueWait.
	MaxParallel int
	MaxQueue    int
	QueueWait   time.Duration
	// RetryAfter is what a refusal tells the client.
	RetryAfter time.Duration
}

// Default capacity knobs beyond the host's size.
const (
	// DefaultOverheadMiB is what a VMM takes beyond its guest's RAM:
	// QEMU's own heap, device buffers and, under TCG, its translation
	// cache (bounded by the driver).
	DefaultOverheadMiB = 192
	// DefaultVCPUOvercommit is how many vCPUs may run per host CPU.
	DefaultVCPUOvercommit = 4.0
	// DefaultMaxQueue and DefaultQueueWait bound the creates waiting for
	// a turn.
	DefaultMaxQueue  = 64
	DefaultQueueWait = 20 * time.Second
	// DefaultRetryAfter is the wait a refusal suggests.
	DefaultRetryAfter = 5 * time.Second
)

// Usage is what is committed now, and the limits it counts against.
type Usage struct {
	Capacity Capacity
	// MemoryMiB, VCPUs and ShmMiB are committed; Machines counts the
	// machines that commit them; Waiting the creates and resumes queued
	// for a turn, Running those that have one.
	MemoryMiB, VCPUs, ShmMiB int
	Machines                 int
	Waiting, Running         int
}

// admission commits capacity to machines and hands out turns.
type admission struct {
	cap Capacity
	// turns has one token per create or resume that may run; nil when
	// unbounded.
	turns chan struct{}

	// mu guards the fields below.
	mu                    sync.Mutex
	mem, vcpus, shm, nmch int
	waiting               int
}

func newAdmission(c Capacity) *admission {
	if c.RetryAfter <= 0 {
		c.RetryAfter = DefaultRetryAfter
	}
	if c.QueueWait <= 0 {
		c.QueueWait = DefaultQueueWait
	}
	a := &admission{cap: c}
	if c.MaxParallel > 0 {
		a.turns = make(chan struct{}, c.MaxParallel)
	}
	return a
}

// commitment is the capacity one machine holds.
type commitment struct{ mem, vcpus, shm int }

func (a *admission) of(vcpus, memMiB int) commitment {
	return commitment{mem: memMiB + a.cap.OverheadMiB, vcpus: vcpus, shm: memMiB}
}

// reserve commits capacity to a machine of that shape, or refuses at once
// with a *CapacityError. The returned release gives it back, once.
func (a *admission) reserve(vcpus, memMiB int) (func(), error) {
	c := a.of(vcpus, memMiB)
	var shmFree = -1
	if a.cap.ShmFree != nil {
		if free, err := a.cap.ShmFree(); err == nil {
			shmFree = free
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	refuse := func(res string, need, free int) error {
		return &CapacityError{Resource: res, Need: need, Free: max(free, 0), RetryAfter: a.cap.RetryAfter}
	}
	switch {
	case a.cap.MemoryMiB > 0 && a.mem+c.mem > a.cap.MemoryMiB:
		return nil, refuse("memory", c.mem, a.cap.MemoryMiB-a.mem)
	case a.cap.VCPUs > 0 && a.vcpus+c.vcpus > a.cap.VCPUs:
		return nil, refuse("vcpus", c.vcpus, a.cap.VCPUs-a.vcpus)
	case a.cap.ShmMiB > 0 && a.shm+c.shm > a.cap.ShmMiB:
		return nil, refuse("shm", c.shm, a.cap.ShmMiB-a.shm)
	case shmFree >= 0 && c.shm > shmFree:
		// What others keep on the file system counts too; the files of
		// machines reserved but not yet started are not there yet, which
		// the committed figure above covers.
		return nil, refuse("shm", c.shm, shmFree)
	}
	a.add(c, 1)
	return a.releaser(c), nil
}

// force commits capacity without checking: a machine that runs already
// (re-adopted after a restart) holds what it holds.
func (a *admission) force(vcpus, memMiB int) func() {
	c := a.of(vcpus, memMiB)
	a.mu.Lock()
	a.add(c, 1)
	a.mu.Unlock()
	return a.releaser(c)
}

func (a *admission) add(c commitment, sign int) {
	a.mem += sign * c.mem
	a.vcpus += sign * c.vcpus
	a.shm += sign * c.shm
	a.nmch += sign
}

func (a *admission) releaser(c commitment) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.add(c, -1)
			a.mu.Unlock()
		})
	}
}

// turn waits for one of MaxParallel turns, in a queue of at most
// MaxQueue, for at most QueueWait; a full queue or a wait that runs out is
// a *CapacityError. done gives the turn back.
func (a *admission) turn(ctx context.Context) (done func(), err error) {
	if a.turns == nil {
		return func() {}, nil
	}
	select {
	case a.turns <- struct{}{}:
		return a.giveBack(), nil
	default:
	}
	a.mu.Lock()
	if a.cap.MaxQueue >= 0 && a.waiting >= a.cap.MaxQueue {
		n := a.waiting
		a.mu.Unlock()
		return nil, &CapacityError{Resource: "queue", Free: n, RetryAfter: a.cap.RetryAfter}
	}
	a.waiting++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.waiting--
		a.mu.Unlock()
	}()
	t := time.NewTimer(a.cap.QueueWait)
	defer t.Stop()
	select {
	case a.turns <- struct{}{}:
		return a.giveBack(), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-t.C:
		return nil, &CapacityError{Resource: "queue", Free: a.cap.MaxQueue, RetryAfter: a.cap.RetryAfter}
	}
}

func (a *admission) giveBack() func() {
	var once sync.Once
	return func() { once.Do(func() { <-a.turns }) }
}

func (a *admission) usage() Usage {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := Usage{Capacity: a.cap, MemoryMiB: a.mem, VCPUs: a.vcpus, ShmMiB: a.shm, Machines: a.nmch, Waiting: a.waiting}
	if a.turns != nil {
		u.Running = len(a.turns)
	}
	return u
}

// Capacity reports what the daemon may commit and what is committed now:
// the figure `ember info` shows and a metrics collector reads (it takes
// no lock a lifecycle operation holds).
func (m *Manager) Capacity() Usage { return m.adm.usage() }

// admit commits capacity to a machine of r's shape and waits for a turn
// to start it: a create or a resume. The reservation is the sandbox's to
// hold (holdReservation); turnDone ends the turn once the machine is up.
func (m *Manager) admit(ctx context.Context, vcpus, memMiB int) (reservation func(), turnDone func(), err error) {
	reservation, err = m.adm.reserve(vcpus, memMiB)
	if err != nil {
		return nil, nil, err
	}
	turnDone, err = m.adm.turn(ctx)
	if err != nil {
		reservation()
		return nil, nil, err
	}
	return reservation, turnDone, nil
}

// holdReservation registers the capacity a sandbox's machine commits: a
// runtime hold, given back when the machine goes (pause, fail, destroy).
func (m *Manager) holdReservation(sb *Sandbox, release func()) {
	sb.held.Push(cleanup.Runtime, "capacity", func(context.Context) error { release(); return nil })
}
