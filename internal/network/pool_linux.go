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
	"time"

	"github.com/vishvananda/netlink"
)

// ipForwardPath is the host's IPv4 forwarding switch.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Pool hands out network slots. Today Get builds a slot on demand; the pool
// is where pre-built slots will wait once it fills itself in the background.
type Pool struct {
	cfg    Config
	log    *slog.Logger
	uplink string // "" when the slots have no egress

	// hook runs after each build step (tests inject failures with it).
	hook func(step string) error

	inflight sync.WaitGroup

	mu     sync.Mutex
	inUse  map[int]bool // indexes held by this pool (handed out or being built)
	closed bool
}

// NewPool validates cfg, resolves the uplink, makes sure the host's shared
// nftables table holds ember's rules and, when slots have an uplink, that
// the host forwards IPv4. A nil log discards.
func NewPool(cfg Config, log *slog.Logger) (*Pool, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Pool{cfg: cfg, log: log, inUse: map[int]bool{}}
	if !cfg.NoEgress {
		up, err := resolveUplink(cfg.Uplink)
		if err != nil {
			return nil, err
		}
		p.uplink = up
	}
	if err := ensureHostTable(hostRules(p.uplink, cfg.HostCIDR)); err != nil {
		return nil, err
	}
	switch {
	case cfg.NoEgress:
		log.Info("sandbox egress disabled by config")
	case p.uplink == "":
		log.Warn("no default route: sandboxes get no egress")
	default:
		if err := enableForwarding(log); err != nil {
			return nil, err
		}
		log.Info("sandbox egress", "uplink", p.uplink, "host_cidr", cfg.HostCIDR)
	}
	return p, nil
}

// resolveUplink returns name after checking it exists, or, when name is
// empty, the interface of the main table's default IPv4 route with the
// lowest metric ("" when there is none).
func resolveUplink(name string) (string, error) {
	if name != "" {
		if _, err := netlink.LinkByName(name); err != nil {
			return "", fmt.Errorf("%w: uplink %q: %w", ErrInvalidConfig, name, err)
		}
		return name, nil
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
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

// Get returns a new slot: the lowest index at or above FirstIndex that this
// pool does not hold and whose namespace and host veth do not exist. On
// error nothing of the slot is left behind.
func (p *Pool) Get(ctx context.Context) (*Slot, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.inflight.Done()
	start := time.Now()
	for from := p.cfg.FirstIndex; ; {
		index, err := p.reserve(from)
		if err != nil {
			return nil, err
		}
		from = index + 1
		if netnsExists(NetnsName(index)) || linkExists(VethName(index)) {
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

// Return tears slot s down. It is idempotent: what is already gone is
// success. The index is free again afterwards, even if some object could not
// be removed (Get skips an index whose namespace or veth still exists).
func (p *Pool) Return(ctx context.Context, s *Slot) error {
	if s == nil {
		return nil
	}
	start := time.Now()
	_, nsEnd := p.cfg.vethAddrs(s.Index)
	err := remove(s.Index, hostRoute(s, nsEnd))
	p.release(s.Index)
	if err != nil {
		return fmt.Errorf("return slot %d: %w", s.Index, err)
	}
	p.log.Debug("slot removed", "slot", s.Index, "duration", time.Since(start))
	return nil
}

// Adopt marks slot index, which already exists (a previous daemon process
// made it), as held by this pool and returns it. It returns ErrNotFound when
// the slot's namespace is missing and ErrInUse when this pool holds it.
func (p *Pool) Adopt(index int) (*Slot, error) {
	if index < 0 || index >= p.cfg.capacity() {
		return nil, fmt.Errorf("adopt slot %d: %w: index outside [0, %d)", index, ErrNotFound, p.cfg.capacity())
	}
	if !isNetnsMount(NetnsPath(index)) {
		return nil, fmt.Errorf("adopt slot %d: %w: no namespace at %s", index, ErrNotFound, NetnsPath(index))
	}
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.inflight.Done()
	p.mu.Lock()
	if p.inUse[index] {
		p.mu.Unlock()
		return nil, fmt.Errorf("adopt slot %d: %w", index, ErrInUse)
	}
	p.inUse[index] = true
	p.mu.Unlock()
	s := p.cfg.slot(index)
	// The host table may have been recreated since the slot was made; put
	// the slot back under its guard.
	if err := addSlotElement(s.HostVeth); err != nil {
		p.release(index)
		return nil, fmt.Errorf("adopt slot %d: %w", index, err)
	}
	return s, nil
}

// Close stops the pool handing out slots and waits for Gets in progress.
// Slots already handed out stay as they are (a restarted daemon adopts
// them); Return still works on them.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.inflight.Wait()
	return nil
}

// enter registers an operation in flight unless the pool is closed.
func (p *Pool) enter() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.inflight.Add(1)
	return nil
}

// reserve marks the lowest index at or above from that the pool does not
// hold as held and returns it.
func (p *Pool) reserve(from int) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := from; i < p.cfg.capacity(); i++ {
		if !p.inUse[i] {
			p.inUse[i] = true
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: indexes %d..%d taken", ErrNoCapacity, p.cfg.FirstIndex, p.cfg.capacity()-1)
}

func (p *Pool) release(index int) {
	p.mu.Lock()
	delete(p.inUse, index)
	p.mu.Unlock()
}

// linkExists reports whether a host link of that name exists (or cannot be
// ruled out).
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	_, missing := errors.AsType[netlink.LinkNotFoundError](err)
	return !missing
}
