package event

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/emberhq/ember/wire"
)

// drain returns the events waiting on s, in order.
func drain(s *Subscription) []string {
	var out []string
	for {
		select {
		case e, ok := <-s.C:
			if !ok {
				return out
			}
			out = append(out, e.Sandbox+":"+e.Type)
		default:
			return out
		}
	}
}

func TestSubscribersGetWhatTheirFilterPasses(t *testing.T) {
	cases := []struct {
		name   string
		filter Filter
		want   []string
	}{
		{"everything", Filter{}, []string{"a:created", "b:created", "a:paused", "a:destroyed"}},
		{"one sandbox", Filter{Sandbox: "a"}, []string{"a:created", "a:paused", "a:destroyed"}},
		{"some types", Filter{Types: []string{wire.EventCreated, wire.EventDestroyed}}, []string{"a:created", "b:created", "a:destroyed"}},
		{"both", Filter{Sandbox: "b", Types: []string{wire.EventCreated}}, []string{"b:created"}},
		{"nothing matches", Filter{Sandbox: "c"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHub(8)
			s := h.Subscribe(tc.filter)
			defer s.Close()
			for _, e := range []Event{{Sandbox: "a", Type: wire.EventCreated}, {Sandbox: "b", Type: wire.EventCreated},
				{Sandbox: "a", Type: wire.EventPaused}, {Sandbox: "a", Type: wire.EventDestroyed}} {
				h.Publish(e)
			}
			if got := drain(s); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReplayFromHistory(t *testing.T) {
	h := NewHub(3)
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, id := range []string{"a", "b", "c", "d"} {
		h.Publish(Event{Sandbox: id, Type: wire.EventCreated, Time: t0.Add(time.Duration(i) * time.Minute)})
	}
	cases := []struct {
		name   string
		filter Filter
		want   []string
	}{
		// The history holds the latest three: b (seq 2), c, d.
		{"no replay asked", Filter{After: 2}, nil},
		{"all the history holds", Filter{Replay: true}, []string{"b:created", "c:created", "d:created"}},
		{"after a seq", Filter{Replay: true, After: 2}, []string{"c:created", "d:created"}},
		{"after a seq the history dropped", Filter{Replay: true, After: 1}, []string{"b:created", "c:created", "d:created"}},
		{"since a time", Filter{Replay: true, Since: t0.Add(3 * time.Minute)}, []string{"d:created"}},
		{"since and a sandbox", Filter{Replay: true, Since: t0, Sandbox: "c"}, []string{"c:created"}},
		{"after the last", Filter{Replay: true, After: 4}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := h.Subscribe(tc.filter)
			defer s.Close()
			if got := drain(s); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPublishNumbersAndStamps(t *testing.T) {
	h := NewHub(2)
	a := h.Publish(Event{Type: wire.EventCreated})
	b := h.Publish(Event{Type: wire.EventDestroyed})
	if a.Seq != 1 || b.Seq != 2 || a.Time.IsZero() {
		t.Fatalf("published %+v then %+v", a, b)
	}
}

func TestLaggingSubscriberIsDroppedNotWaitedFor(t *testing.T) {
	h := NewHub(2)
	slow := h.Subscribe(Filter{})
	fast := h.Subscribe(Filter{})
	defer fast.Close()
	done := make(chan struct{})
	go func() {
		// More than the subscription's buffer: Publish must not block.
		for range 10 {
			h.Publish(Event{Type: wire.EventCreated})
			<-fast.C
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("publish blocked on a subscriber that does not read")
	}
	n := len(drain(slow))
	if _, ok := <-slow.C; ok || n != 4 {
		t.Fatalf("slow subscriber got %d events and stays open %v; want its buffer's 4, then closed", n, ok)
	}
	if !errors.Is(slow.Err(), ErrLagged) {
		t.Fatalf("err %v, want ErrLagged", slow.Err())
	}
	slow.Close() // after the hub dropped it: harmless
}

func TestCloseEndsTheSubscription(t *testing.T) {
	h := NewHub(2)
	s := h.Subscribe(Filter{})
	s.Close()
	s.Close()
	if _, ok := <-s.C; ok || s.Err() != nil {
		t.Fatalf("after close: open %v, err %v", ok, s.Err())
	}
	h.Publish(Event{Type: wire.EventCreated}) // no one to deliver to
}

func TestValidTypes(t *testing.T) {
	for _, tc := range []struct {
		typ  string
		want bool
	}{{wire.EventCreated, true}, {wire.EventTimeout, true}, {"exploded", false}, {"", false}} {
		if got := Valid(tc.typ); got != tc.want {
			t.Errorf("Valid(%q) = %v", tc.typ, got)
		}
	}
}
