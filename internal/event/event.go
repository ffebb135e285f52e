// Package event carries the daemon's lifecycle events from the sandbox
// manager, which publishes what happens to sandboxes as it happens, to the
// subscribers that follow it (GET /v1/events, and through it `ember events`
// and the /test page). A bounded history lets a subscriber that connects
// late, or reconnects after a drop, replay what it missed.
package event

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/emberhq/ember/wire"
)

// Event is one lifecycle event, in the form the API serves it.
type Event = wire.Event

// Types are the event types, in the order a sandbox's life meets them.
var Types = []string{
	wire.EventCreated, wire.EventPaused, wire.EventResumed, wire.EventSnapshot,
	wire.EventTimeout, wire.EventFailed, wire.EventDestroyed,
}

// Valid reports whether t is an event type.
func Valid(t string) bool { return slices.Contains(Types, t) }

// DefaultHistory is how many events a hub keeps for replay.
const DefaultHistory = 1024

// ErrLagged ends a subscription that fell a whole history behind: it
// missed events, and resubscribing with After set to the last one it saw
// replays those the history still holds.
var ErrLagged = errors.New("subscriber fell behind the event stream")

// Hub fans events out to subscribers and keeps the latest for replay. It
// never blocks a publisher: a subscriber that stops reading is dropped
// (ErrLagged) rather than slowing the lifecycle operations down.
type Hub struct {
	// mu guards everything below.
	mu sync.Mutex
	// seq numbers the events, from 1.
	seq uint64
	// history is a ring of the latest events, oldest at next once full.
	history []Event
	next    int
	full    bool
	subs    map[*Subscription]struct{}
}

// NewHub returns a hub that keeps the latest history events (at least one).
func NewHub(history int) *Hub {
	return &Hub{history: make([]Event, max(history, 1)), subs: map[*Subscription]struct{}{}}
}

// Publish numbers e, stamps it with the time when it has none, keeps it in
// the history and hands it to every subscriber whose filter it passes. It
// returns the event as published.
func (h *Hub) Publish(e Event) Event {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	e.Seq = h.seq
	h.history[h.next] = e
	h.next = (h.next + 1) % len(h.history)
	h.full = h.full || h.next == 0
	for s := range h.subs {
		if !s.filter.match(e) {
			continue
		}
		select {
		case s.ch <- e:
		default:
			h.dropLocked(s, ErrLagged)
		}
	}
	return e
}

// Filter chooses the events a subscriber receives.
type Filter struct {
	// Sandbox, when set, keeps only that sandbox's events.
	Sandbox string
	// Types, when not empty, keeps only events of those types.
	Types []string
	// Replay asks for the history's events first: those with a sequence
	// number above After (the last one a reconnecting subscriber saw) and
	// from Since on.
	Replay bool
	After  uint64
	Since  time.Time
}

func (f Filter) match(e Event) bool {
	return (f.Sandbox == "" || e.Sandbox == f.Sandbox) && (len(f.Types) == 0 || slices.Contains(f.Types, e.Type))
}

// replays reports whether a past event is to be replayed.
func (f Filter) replays(e Event) bool {
	return f.Replay && e.Seq > f.After && !e.Time.Before(f.Since) && f.match(e)
}

// Subscription is one subscriber's view of the stream.
type Subscription struct {
	// C delivers the events in order; it is closed when the subscription
	// ends (Close, or Err says why).
	C <-chan Event

	ch     chan Event
	filter Filter
	hub    *Hub
	// err is set, under hub.mu, when the hub ends the subscription.
	err error
}

// Subscribe starts a subscription: first the history's events the filter
// replays, oldest first, then every new event it passes. Close it when done.
func (h *Hub) Subscribe(f Filter) *Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Room for a whole history of replay plus as much again of new events
	// before the subscriber counts as lagging.
	ch := make(chan Event, 2*len(h.history))
	s := &Subscription{C: ch, ch: ch, filter: f, hub: h}
	for _, e := range h.pastLocked() {
		if f.replays(e) {
			ch <- e
		}
	}
	h.subs[s] = struct{}{}
	return s
}

// pastLocked returns the history, oldest first.
func (h *Hub) pastLocked() []Event {
	if !h.full {
		return h.history[:h.next]
	}
	return append(slices.Clone(h.history[h.next:]), h.history[:h.next]...)
}

// Err says why the hub ended the subscription (ErrLagged), once C is
// closed; nil while it runs or after Close.
func (s *Subscription) Err() error {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.err
}

// Close ends the subscription; it is safe to call more than once.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.hub.dropLocked(s, nil)
}

func (h *Hub) dropLocked(s *Subscription, err error) {
	if _, ok := h.subs[s]; !ok {
		return
	}
	delete(h.subs, s)
	s.err = err
	close(s.ch)
}
