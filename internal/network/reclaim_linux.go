//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"

	"github.com/emberhq/ember/internal/netns"
	"github.com/emberhq/ember/internal/reclaim"
	"github.com/vishvananda/netlink"
)

// Reclaim removes every ember slot on the host whose index is at least first
// and not in keep: namespaces named ember-ns-<n>, host links named
// ember-v<n> and their entries in the host table's slots set. It is meant for
// daemon start, before a pool exists, with keep holding the slots of
// sandboxes that survived the restart, and first the daemon's first slot
// index (slots below it belong to whoever runs there: another daemon, a
// test). removed counts the slot indexes it cleared. Like all releasing, it
// runs to the end even when ctx is cancelled. With a pool running, use
// Pool.Reclaim, which spares the pool's own slots.
func Reclaim(ctx context.Context, first int, keep map[int]bool, log *slog.Logger) (removed int, err error) {
	return reclaimWhere(ctx, func(i int) bool { return i >= first && !keep[i] }, log)
}

// Reclaim is the package's Reclaim over this pool's index range, sparing
// every slot the pool holds (handed out, idle, or being built by the
// filler). Each index it removes is reserved in the pool meanwhile, so the
// filler cannot build a fresh slot under a removal in progress.
func (p *Pool) Reclaim(ctx context.Context, keep reclaim.Keep) (reclaim.Result, error) {
	n, err := p.reclaimIndexes(ctx, keep.Slots)
	return reclaim.Result{Found: n, Removed: n}, err
}

func (p *Pool) reclaimIndexes(ctx context.Context, keep map[int]bool) (int, error) {
	held := map[int]bool{}
	defer func() {
		for i := range held {
			p.release(i)
		}
	}()
	return reclaimWhere(ctx, func(i int) bool {
		if !p.cfg.owns(i) || keep[i] {
			return false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if held[i] {
			return true
		}
		if p.inUse[i] {
			return false
		}
		p.inUse[i] = true
		held[i] = true
		return true
	}, p.log)
}

// reclaimWhere removes the slots whose index mine accepts.
func reclaimWhere(ctx context.Context, mine func(int) bool, log *slog.Logger) (removed int, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	found := map[int]bool{}
	var namespaces, links, elements int

	entries, err := os.ReadDir(netns.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("list %s: %w", netns.Dir, err)
	}
	for _, e := range entries {
		if i, ok := parseIndex(e.Name(), NetnsPrefix); ok && mine(i) {
			found[i] = true
			namespaces++
		}
	}
	ls, err := whole(netlink.LinkList)
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	for _, l := range ls {
		if i, ok := parseIndex(l.Attrs().Name, VethPrefix); ok && mine(i) {
			found[i] = true
			links++
		}
	}
	names, err := listSlotElements()
	if err != nil {
		return 0, err
	}
	for _, n := range names {
		if i, ok := parseIndex(n, VethPrefix); ok && mine(i) {
			found[i] = true
			elements++
		}
	}

	indexes := make([]int, 0, len(found))
	for i := range found {
		indexes = append(indexes, i)
	}
	sort.Ints(indexes)
	var errs []error
	for _, i := range indexes {
		// The host route goes with the veth.
		if err := remove(i, nil); err != nil {
			errs = append(errs, fmt.Errorf("reclaim slot %d: %w", i, err))
			continue
		}
		removed++
	}
	log.Info("reclaimed network slots", "removed", removed,
		"namespaces", namespaces, "links", links, "set_elements", elements)
	return removed, errors.Join(errs...)
}

// dumpRetries bounds how often a netlink dump is repeated when the kernel
// reports it was interrupted by a concurrent change.
const dumpRetries = 10

// whole runs a netlink dump until it is consistent. A dump that races a
// change (the pool building or tearing down slots beside a reclaim) comes
// back flagged as possibly incomplete; it is taken again.
func whole[T any](dump func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return v, err
		}
	}
}
