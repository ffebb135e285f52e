//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/slot"
	"github.com/vishvananda/netlink"
)

// ipForwardPath is the host's IPv4 forwarding switch.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Pool hands out network slots. With Config.PoolSize > 0 a background filler
// keeps up to that many new slots built and idle, so Get hands one out
// without waiting, and Return resets a slot and keeps up to PoolSize of them
// for reuse, tearing down the rest. Get prefers a reused slot to a new one
// (reuse before new), so the filler builds only as fast as slots are kept.
type Pool struct {
	cfg    Config
	log    *slog.Logger
	uplink string // "" when the slots have no egress

	// hook runs after each build step (tests inject failures with it).
	hook func(step string) error

	// idle holds new slots the filler built; room one token per free place
	// in it: the filler takes one before it builds, Get gives one back when
	// it takes a slot from idle (tokens in room + slots in idle + the slot
	// being built = PoolSize). reused holds returned, reset slots.
	idle   chan *Slot
	room   chan struct{}
	reused chan *Slot

	stopFill   context.CancelFunc
	filler     sync.WaitGroup
	work       gate           // Get, Adopt and pooling Returns in flight
	reaping    sync.WaitGroup // background halves of destroy
	closeOnce  sync.Once
	closeErr   error
	fillCtx    context.Context
	backoffMin time.Duration
	backoffMax time.Duration

	// reuses counts Gets served from reused.
	reuses atomic.Uint64

	mu    sync.Mutex
	inUse map[int]bool // indexes held by this pool (built, being built, idle or out)
	out   map[int]bool // indexes handed out (Get or Adopt) and not yet returned
}

// Filler backoff after a failed build: doubling from the minimum up to the
// maximum, back to the minimum after a success.
const (
	fillBackoffMin = 100 * time.Millisecond
	fillBackoffMax = 10 * time.Second
)

// NewPool validates cfg, resolves the uplink, makes sure the host's shared
// nftables table holds ember's rules and, when slots have an uplink, that
// the host forwards IPv4. A nil log discards.
func NewPool(cfg Config, log *slog.Logger) (*Pool, error) {
	return newPool(cfg, log, nil)
}

// New returns the Slots for cfg.Mode: a Pool (ModeNetns, the default) or a
// BridgePool (ModeBridge).
func New(cfg Config, log *slog.Logger) (Slots, error) {
	if cfg.Mode == ModeBridge {
		return NewBridgePool(cfg, log)
	}
	return NewPool(cfg, log)
}

var (
	_ Slots = (*Pool)(nil)
	_ Slots = (*BridgePool)(nil)
)

// newPool is NewPool; tune, when set, adjusts the pool before its filler
// starts (tests inject failures and shorten the backoff with it).
func newPool(cfg Config, log *slog.Logger, tune func(*Pool)) (*Pool, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.Mode != ModeNetns {
		return nil, fmt.Errorf("%w: namespace pool with mode %q (use New or NewBridgePool)", ErrInvalidConfig, cfg.Mode)
	}
	p := &Pool{cfg: cfg, log: log, inUse: map[int]bool{}, out: map[int]bool{},
		backoffMin: fillBackoffMin, backoffMax: fillBackoffMax}
	if err := netns.ShareDir(); err != nil {
		return nil, err
	}
	if err := p.onHost(p.setupHost); err != nil {
		return nil, err
	}
	p.fillCtx, p.stopFill = context.WithCancel(context.Background())
	if tune != nil {
		tune(p)
	}
	if cfg.PoolSize > 0 {
		p.idle = make(chan *Slot, cfg.PoolSize)
		p.reused = make(chan *Slot, cfg.PoolSize)
		p.room = make(chan struct{}, cfg.PoolSize)
		for range cfg.PoolSize {
			p.room <- struct{}{}
		}
		p.filler.Go(p.fill)
	}
	return p, nil
}

// setupHost resolves the uplink, makes sure the host's nftables hold ember's
// rules (its own table, and accept rules for slot traffic in a foreign
// forward chain that would drop it) and, with egress, that the host
// forwards IPv4.
func (p *Pool) setupHost() error {
	cfg, log := p.cfg, p.log
	if !cfg.NoEgress {
		up, err := ResolveUplink(cfg.Uplink)
		if err != nil {
			return err
		}
		p.uplink = up
	}
	if err := ensureHostTable(hostRules(p.uplink, cfg.HostCIDR)); err != nil {
		return err
	}
	if added, err := ensureForeignForward(); err != nil {
		return err
	} else if added {
		log.Info("let slot traffic through the ip filter FORWARD chain", "chain", "ip filter FORWARD", "match", VethPrefix+"*")
	}
	switch {
	case cfg.NoEgress:
		log.Info("sandbox egress disabled by config")
	case p.uplink == "":
		log.Warn("no default route: sandboxes get no egress")
	default:
		if err := enableForwarding(log); err != nil {
			return err
		}
		log.Info("sandbox egress", "uplink", p.uplink, "host_cidr", cfg.HostCIDR)
	}
	return nil
}

// onHost runs fn in the namespace the pool treats as the host: the caller's,
// or Config.HostNetns.
func (p *Pool) onHost(fn func() error) error {
	if p.cfg.HostNetns == "" {
		return fn()
	}
	return netns.Do(p.cfg.HostNetns, fn)
}

// ResolveUplink returns the interface sandbox egress leaves by: name after
// checking it exists, or, when name is empty, the interface of the main
// table's default IPv4 route with the lowest metric ("" when there is
// none). An interface that does not exist is an error wrapping
// ErrInvalidConfig.
func ResolveUplink(name string) (string, error) {
	if name != "" {
		if _, err := netlink.LinkByName(name); err != nil {
			return "", fmt.Errorf("%w: uplink %q: %w", ErrInvalidConfig, name, err)
		}
		return name, nil
	}
	routes, err := whole(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	best, bestMetric := 0, -1
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx != 0 && (bestMetric < 0 || r.Priority < bestMetric) {
			best, bestMetric = idx, r.Priority
		}
	}
	if best == 0 {
		return "", nil
	}
	l, err := netlink.LinkByIndex(best)
	if err != nil {
		return "", fmt.Errorf("find default route's link %d: %w", best, err)
	}
	return l.Attrs().Name, nil
}

// enableForwarding turns the host's IPv4 forwarding on if it is off: slot
// traffic to the uplink is forwarded.
func enableForwarding(log *slog.Logger) error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", ipForwardPath, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable host ip_forward: %w", err)
	}
	log.Info("enabled host ip_forward for sandbox egress", "path", ipForwardPath)
	return nil
}

// Get returns a slot ready for a sandbox, with DefaultPolicy: an idle one
// from the pool when there is one, else a new one built on the spot. On
// error nothing of a new slot is left behind.
func (p *Pool) Get(ctx context.Context) (*Slot, error) {
	if err := p.work.enter(); err != nil {
		return nil, err
	}
	defer p.work.leave()
	select {
	case s := <-p.reused:
		p.reuses.Add(1)
		p.markOut(s.Index)
		return s, nil
	default:
	}
	select {
	case s := <-p.idle:
		p.room <- struct{}{}
		p.markOut(s.Index)
		return s, nil
	default:
	}
	s, err := p.create(ctx)
	if err != nil {
		return nil, err
	}
	p.markOut(s.Index)
	return s, nil
}

// create builds a new slot: the lowest index at or above FirstIndex that
// this pool does not hold and whose namespace and host veth do not exist.
func (p *Pool) create(ctx context.Context) (s *Slot, err error) {
	err = p.onHost(func() error {
		s, err = p.createHere(ctx)
		return err
	})
	return s, err
}

// createHere is create on a thread in the host namespace.
func (p *Pool) createHere(ctx context.Context) (*Slot, error) {
	start := time.Now()
	for from := p.cfg.FirstIndex; ; {
		index, err := p.reserve(from)
		if err != nil {
			return nil, err
		}
		from = index + 1
		if netns.Exists(NetnsName(index)) || linkExists(VethName(index)) {
			p.release(index) // someone else's, or a leftover for reclaim
			continue
		}
		s := p.cfg.slot(index)
		err = build(ctx, p.cfg, s, p.hook)
		if err != nil {
			p.release(index)
			if errors.Is(err, os.ErrExist) && ctx.Err() == nil {
				continue // lost a race for the name
			}
			return nil, err
		}
		p.log.Debug("slot created", "slot", index, "duration", time.Since(start))
		return s, nil
	}
}

// fill keeps the pool topped up until Close: it waits for room, builds a
// slot and parks it in idle. A failing build backs off instead of spinning.
func (p *Pool) fill() {
	ctx := p.fillCtx
	backoff := p.backoffMin
	for {
		select {
		case <-p.room:
		case <-ctx.Done():
			return
		}
		s, err := p.create(ctx)
		if err != nil {
			p.room <- struct{}{}
			if ctx.Err() != nil {
				return
			}
			p.log.Warn("pre-build network slot", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, p.backoffMax)
			continue
		}
		backoff = p.backoffMin
		p.idle <- s // room guarantees a place
	}
}

// Return gives slot s back. While fewer than PoolSize returned slots wait
// for reuse, the slot is reset (its conntrack entries flushed, its policy
// back to DefaultPolicy) and kept for the next Get; otherwise, or when the
// reset fails, it is torn down. Return
// is idempotent: returning a slot that is not handed out does nothing more
// than make sure a slot the pool no longer holds is gone. After Return the
// caller must not use s.
func (p *Pool) Return(ctx context.Context, s *Slot) error {
	if s == nil {
		return nil
	}
	p.mu.Lock()
	out, held := p.out[s.Index], p.inUse[s.Index]
	if !out && held {
		p.mu.Unlock()
		return nil // idle, being built or being torn down: not the caller's
	}
	// Hold the index until the teardown is over, so no Get rebuilds it
	// while the background half of destroy still removes it by name.
	p.inUse[s.Index] = true
	delete(p.out, s.Index)
	p.mu.Unlock()
	// Close drains the reuse queue only after a pooling Return is done.
	if out && p.reused != nil && p.work.enter() == nil {
		defer p.work.leave()
		if len(p.reused) < cap(p.reused) {
			start := time.Now()
			err := p.reset(s)
			if err == nil {
				select {
				case p.reused <- s:
					p.log.Debug("slot reset for reuse", "slot", s.Index, "duration", time.Since(start))
					return nil
				default: // filled up meanwhile
				}
			} else {
				p.log.Warn("reset slot; tearing it down", "slot", s.Index, "err", err)
			}
		}
	}
	return p.destroy(s)
}

// destroy tears slot s down in two phases. The caller waits only for the
// namespace to be deleted, which ends the slot (~1 ms). Deleting the host
// veth blocks for some 20 ms (the kernel waits for a grace period), so a
// background goroutine does it, with the route and the set element; the
// index is free again only after that, even if some object could not be
// removed (create skips an index whose namespace or veth still exists).
// The kernel would reap the veth with the namespace by itself, but only
// once nothing holds the namespace (a closing socket in it can for
// minutes), and the veth must not outlive its place in the host guard.
// Close waits for the background work.
func (p *Pool) destroy(s *Slot) error {
	start := time.Now()
	err := p.onHost(func() error { return netns.Delete(s.Netns) })
	if err != nil {
		err = fmt.Errorf("return slot %d: delete netns %s: %w", s.Index, s.Netns, err)
	}
	_, nsEnd := p.cfg.vethAddrs(s.Index)
	p.reaping.Go(func() {
		rest := time.Now()
		if err := p.onHost(func() error { return remove(s.Index, hostRoute(s, nsEnd)) }); err != nil {
			p.log.Warn("remove slot", "slot", s.Index, "err", err)
		}
		p.release(s.Index)
		p.log.Debug("slot removed", "slot", s.Index, "netns_duration", rest.Sub(start), "links_duration", time.Since(rest))
	})
	return err
}

// SetPolicy applies pol to slot s, replacing its previous policy in one
// nftables transaction. It takes effect at once, for running flows too (see
// Policy). An invalid policy is an error wrapping ErrInvalidPolicy and
// changes nothing.
func (p *Pool) SetPolicy(ctx context.Context, s *Slot, pol Policy) error {
	if err := pol.Validate(); err != nil {
		return fmt.Errorf("set policy of slot %d: %w", s.Index, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set policy of slot %d: %w", s.Index, err)
	}
	if err := setSlotPolicy(s, p.cfg.alwaysDenied(), pol); err != nil {
		return fmt.Errorf("set policy of slot %d: %w", s.Index, err)
	}
	return nil
}

// Adopt marks slot index, which already exists (a previous daemon process
// made it), as held by this pool and returns it. It returns ErrNotFound when
// the slot's namespace is missing and ErrInUse when this pool holds it.
func (p *Pool) Adopt(index int) (*Slot, error) {
	if index < 0 || index >= p.cfg.capacity() {
		return nil, fmt.Errorf("adopt slot %d: %w: index outside [0, %d)", index, ErrNotFound, p.cfg.capacity())
	}
	if !netns.IsMounted(NetnsPath(index)) {
		return nil, fmt.Errorf("adopt slot %d: %w: no namespace at %s", index, ErrNotFound, NetnsPath(index))
	}
	if err := p.work.enter(); err != nil {
		return nil, err
	}
	defer p.work.leave()
	p.mu.Lock()
	if p.inUse[index] {
		p.mu.Unlock()
		return nil, fmt.Errorf("adopt slot %d: %w", index, ErrInUse)
	}
	p.inUse[index] = true
	p.out[index] = true
	p.mu.Unlock()
	s := p.cfg.slot(index)
	// The host table may have been recreated since the slot was made; put
	// the slot back under its guard.
	if err := p.onHost(func() error { return addSlotElement(s.HostVeth) }); err != nil {
		p.release(index)
		return nil, fmt.Errorf("adopt slot %d: %w", index, err)
	}
	return s, nil
}

// Close stops the pool handing out slots and pre-building them, waits for
// the work in flight (a Get building a slot, a Return resetting one, the
// filler, slots being torn down) and tears down the idle slots. Slots
// handed out stay as they are (a restarted daemon adopts them); Return still
// works on them and then tears them down. Close is idempotent.
func (p *Pool) Close() error {
	p.closeOnce.Do(func() {
		p.work.close()
		p.stopFill()
		p.filler.Wait()
		var errs []error
		for _, ch := range []chan *Slot{p.idle, p.reused} {
			for len(ch) > 0 {
				errs = append(errs, p.destroy(<-ch))
			}
		}
		p.reaping.Wait()
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// reserve marks the lowest index at or above from that the pool does not
// hold as held and returns it.
func (p *Pool) reserve(from int) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := from; i < p.cfg.end(); i++ {
		if !p.inUse[i] {
			p.inUse[i] = true
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: indexes %d..%d taken", ErrNoCapacity, p.cfg.FirstIndex, p.cfg.end()-1)
}

func (p *Pool) release(index int) {
	p.mu.Lock()
	delete(p.inUse, index)
	delete(p.out, index)
	p.mu.Unlock()
}

// markOut records that slot index is handed out.
func (p *Pool) markOut(index int) {
	p.mu.Lock()
	p.out[index] = true
	p.mu.Unlock()
}

// linkExists reports whether a host link of that name exists (or cannot be
// ruled out).
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	_, missing := errors.AsType[netlink.LinkNotFoundError](err)
	return !missing
}

// Park is Return: every namespace gives its guest the same address, so a
// paused sandbox resumes on any slot and holds none.
func (p *Pool) Park(ctx context.Context, s *Slot) (held bool, err error) {
	return false, p.Return(ctx, s)
}

// Unpark is Get: any ready slot takes a resumed guest.
func (p *Pool) Unpark(ctx context.Context, _ int) (*Slot, error) { return p.Get(ctx) }

// Reserve does nothing: a paused sandbox holds no namespace slot.
func (p *Pool) Reserve(int) (held bool, err error) { return false, nil }

// Unreserve does nothing (see Reserve).
func (p *Pool) Unreserve(int) {}

// Movable is nil: a machine restores onto any namespace slot unchanged.
func (p *Pool) Movable() error { return nil }

// Idle reports how many slots wait in the pool, new and reused.
func (p *Pool) Idle() int { return len(p.idle) + len(p.reused) }

// Stats says how many slots wait in the pool (new and reused) and how many
// are handed out.
func (p *Pool) Stats() slot.Stats {
	p.mu.Lock()
	inUse := len(p.out)
	p.mu.Unlock()
	return slot.Stats{Idle: len(p.idle), Reused: len(p.reused), InUse: inUse, Reuses: p.reuses.Load()}
}
