package client

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestEventStreamReconnectsWhereItLeftOff serves a stream that ends after
// each event: the client must come back asking for what follows.
func TestEventStreamReconnectsWhereItLeftOff(t *testing.T) {
	var mu sync.Mutex
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-Key") != "k" {
			http.Error(w, `{"code":"unauthorized","message":"no"}`, http.StatusUnauthorized)
			return
		}
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		n := len(queries)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		// A keep-alive and a retry hint first, then one event split over
		// two data lines (the stream's framing allows it).
		fmt.Fprintf(w, "retry: 10\n\n: keep-alive\n\nid: %d\nevent: created\ndata: {\"seq\":%d,\ndata: \"type\":\"created\",\"sandbox\":\"s%d\"}\n\n", n, n, n)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := New(srv.URL, "k").Events(ctx, EventFilter{Sandbox: "x", Types: []string{"created", "destroyed"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 1; i <= 3; i++ {
		e, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq != uint64(i) || e.Sandbox != fmt.Sprintf("s%d", i) || e.Type != "created" {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	mu.Lock()
	got := slices.Clone(queries)
	mu.Unlock()
	want := []string{"sandbox=x&type=created%2Cdestroyed", "after=1&sandbox=x&type=created%2Cdestroyed", "after=2&sandbox=x&type=created%2Cdestroyed"}
	if !slices.Equal(got, want) {
		t.Fatalf("queries %q, want %q", got, want)
	}
	cancel()
	if _, err := s.Next(); err == nil {
		t.Fatal("Next after the context ended succeeded")
	}
}

func TestEventsRefusedAtOnce(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"code":"invalid_argument","message":"type: unknown event type \"x\""}`)
	}))
	defer srv.Close()
	if _, err := New(srv.URL, "k").Events(context.Background(), EventFilter{Types: []string{"x"}}); !IsCode(err, "invalid_argument") {
		t.Fatalf("err %v, want invalid_argument", err)
	}
}
