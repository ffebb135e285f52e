package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/wire"
)

// Metrics answers from three fixed samples a minute apart.
func (f *fakeSandboxes) Metrics(id string, start, end time.Time) ([]sandbox.Sample, error) {
	if _, err := f.Get(id); err != nil {
		return nil, err
	}
	if !start.IsZero() && !end.IsZero() && end.Before(start) {
		return nil, &sandbox.InvalidError{Field: "end", Reason: "must not be before start"}
	}
	out := []sandbox.Sample{}
	for i := range 3 {
		s := sandbox.Sample{Time: sampleTime.Add(time.Duration(i) * time.Minute),
			Guest: &wire.GuestUsage{CPUUsedPct: float64(10 * i), MemUsed: int64(i) << 20}}
		if (start.IsZero() || !s.Time.Before(start)) && (end.IsZero() || !s.Time.After(end)) {
			out = append(out, s)
		}
	}
	return out, nil
}

var sampleTime = time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

// fakeMetrics records the routes requests are counted under.
type fakeMetrics struct {
	mu     sync.Mutex
	routes []string
}

func (m *fakeMetrics) ObserveRequest(route string, status int, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes = append(m.routes, fmt.Sprintf("%s %d", route, status))
}

func (m *fakeMetrics) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ember_up 1\n") })
}

func (m *fakeMetrics) seen() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.routes)
}

func TestMetricsEndpointIsAuthenticated(t *testing.T) {
	srv, _ := newServerWith(t, &fakeSandboxes{}, func(c *Config) { c.Metrics = &fakeMetrics{} })
	for _, tc := range []struct {
		name, header, value string
		want                int
	}{
		{"no key", "", "", http.StatusUnauthorized},
		{"X-API-Key", "X-API-Key", key, http.StatusOK},
		{"bearer, as Prometheus sends it", "Authorization", "Bearer " + key, http.StatusOK},
		{"wrong bearer", "Authorization", "Bearer nope", http.StatusUnauthorized},
		{"basic", "Authorization", "Basic " + key, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
			if tc.header != "" {
				req.Header.Set(tc.header, tc.value)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || tc.want == http.StatusOK && string(body) != "ember_up 1\n" {
				t.Fatalf("%d %q, want %d", resp.StatusCode, body, tc.want)
			}
		})
	}
}

// TestRequestsAreCountedByRoutePattern holds the request metrics to route
// patterns: a sandbox id never becomes a label.
func TestRequestsAreCountedByRoutePattern(t *testing.T) {
	m := &fakeMetrics{}
	srv, c := newServerWith(t, &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}},
		func(c *Config) { c.Metrics = m })
	ctx := context.Background()
	c.GetSandbox(ctx, "sb1")
	c.GetSandbox(ctx, "sb-unknown")
	c.DeleteSandbox(ctx, "sb1")
	http.Get(srv.URL + "/v2/nothing")
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
	req.Header.Set(headerSandboxID, "sb-unknown")
	req.Header.Set(headerSandboxPort, "8080")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	want := []string{
		"GET /v1/sandboxes/{id} 200", "GET /v1/sandboxes/{id} 404", "DELETE /v1/sandboxes/{id} 204",
		"/ 404", "proxy 502", // envd traffic for a sandbox that is not there: 502, as E2B's SDKs expect
	}
	if got := m.seen(); !slices.Equal(got, want) {
		t.Fatalf("counted %v, want %v", got, want)
	}
}

// sse reads server-sent events off a stream.
type sse struct {
	sc *bufio.Scanner
}

// next returns the next event's id, type and data.
func (s *sse) next(t *testing.T) (id, typ string, data wire.Event) {
	t.Helper()
	var raw string
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "" && typ != "":
			if err := json.Unmarshal([]byte(raw), &data); err != nil {
				t.Fatalf("event data %q: %v", raw, err)
			}
			return id, typ, data
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			raw += line[6:]
		}
	}
	t.Fatalf("stream ended: %v", s.sc.Err())
	return
}

func openEvents(t *testing.T, url, query string, header map[string]string) (*http.Response, *sse) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/events"+query, nil)
	req.Header.Set("X-API-Key", key)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, &sse{bufio.NewScanner(resp.Body)}
}

func TestEventStream(t *testing.T) {
	hub := event.NewHub(16)
	srv, _ := newServerWith(t, &fakeSandboxes{}, func(c *Config) { c.Events = hub })
	hub.Publish(wire.Event{Type: wire.EventCreated, Sandbox: "old"})

	resp, all := openEvents(t, srv.URL, "", nil)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("%d %s", resp.StatusCode, ct)
	}
	_, one := openEvents(t, srv.URL, "?sandbox=a&type=paused,destroyed", nil)
	_, replay := openEvents(t, srv.URL, "", map[string]string{"Last-Event-ID": "0"})

	hub.Publish(wire.Event{Type: wire.EventCreated, Sandbox: "a"})
	hub.Publish(wire.Event{Type: wire.EventPaused, Sandbox: "b"})
	hub.Publish(wire.Event{Type: wire.EventPaused, Sandbox: "a", State: sandbox.StatePaused})
	hub.Publish(wire.Event{Type: wire.EventDestroyed, Sandbox: "a"})

	for _, tc := range []struct {
		name   string
		stream *sse
		want   []string
	}{
		{"everything new", all, []string{"2 created a", "3 paused b", "4 paused a", "5 destroyed a"}},
		{"one sandbox's pauses and ends", one, []string{"4 paused a", "5 destroyed a"}},
		{"replayed from the start", replay, []string{"1 created old", "2 created a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, want := range tc.want {
				id, typ, e := tc.stream.next(t)
				if got := id + " " + typ + " " + e.Sandbox; got != want || fmt.Sprint(e.Seq) != id || e.Type != typ {
					t.Fatalf("got %q (%+v), want %q", got, e, want)
				}
			}
		})
	}
}

func TestEventStreamRefusesBadFilters(t *testing.T) {
	srv, _ := newServerWith(t, &fakeSandboxes{}, func(c *Config) { c.Events = event.NewHub(4) })
	for _, q := range []string{"?type=exploded", "?type=created,nope", "?after=last", "?since=yesterday", "?since=NaN"} {
		t.Run(q, func(t *testing.T) {
			wantError(t, srv, "GET", "/v1/events"+q, key, "", http.StatusBadRequest, "invalid_argument")
		})
	}
	wantError(t, srv, "GET", "/v1/events", "", "", http.StatusUnauthorized, "unauthorized")
}

func TestSandboxMetricsEndpoint(t *testing.T) {
	srv, c := newServer(t, &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}})
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		start, end time.Time
		want       int
	}{
		{"all", time.Time{}, time.Time{}, 3},
		{"from the second", sampleTime.Add(time.Minute), time.Time{}, 2},
		{"up to the second", time.Time{}, sampleTime.Add(time.Minute), 2},
		{"just the first", sampleTime, sampleTime, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.SandboxMetrics(ctx, "sb1", tc.start, tc.end)
			if err != nil || len(got) != tc.want || got[0].Guest == nil {
				t.Fatalf("%d samples (%+v), %v; want %d", len(got), got, err, tc.want)
			}
		})
	}
	// E2B's API takes Unix seconds; RFC 3339 works too.
	for _, q := range []string{fmt.Sprintf("?start=%d", sampleTime.Add(time.Minute).Unix()), "?start=" + sampleTime.Add(time.Minute).Format(time.RFC3339)} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/sandboxes/sb1/metrics"+q, nil)
		req.Header.Set("X-API-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got []wire.Sample
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if len(got) != 2 {
			t.Errorf("%s: %d samples, want 2", q, len(got))
		}
	}
	for _, tc := range []struct{ name, path, code string }{
		{"bad start", "/v1/sandboxes/sb1/metrics?start=soon", "invalid_argument"},
		{"bad end", "/v1/sandboxes/sb1/metrics?end=1e999", "invalid_argument"},
		{"end before start", "/v1/sandboxes/sb1/metrics?start=20&end=10", "invalid_argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, srv, "GET", tc.path, key, "", http.StatusBadRequest, tc.code)
		})
	}
	wantError(t, srv, "GET", "/v1/sandboxes/nope/metrics", key, "", http.StatusNotFound, "sandbox_not_found")
}

// TestOpenAPIDocumentIsValid loads the document as an OpenAPI 3 validator
// does: a broken reference or schema fails here, not in a client's
// generator.
func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(openapiDoc)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
}
