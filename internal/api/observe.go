package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/internal/sandbox"
)

// RequestMetrics hears of every API request and serves the daemon's
// metrics (package metrics implements it).
type RequestMetrics interface {
	// ObserveRequest records a request by its route pattern (never its
	// path, which carries sandbox ids) and status.
	ObserveRequest(route string, status int, d time.Duration)
	// Handler serves GET /metrics.
	Handler() http.Handler
}

// heartbeat is how often an idle event stream says it is alive, so proxies
// and clients do not take it for dead.
const heartbeat = 15 * time.Second

// routeObservability registers the metrics endpoint, the event stream and
// the per-sandbox usage samples.
func (s *Server) routeObservability() {
	if s.cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", s.auth(s.cfg.Metrics.Handler().ServeHTTP))
	}
	if s.cfg.Events != nil {
		s.mux.HandleFunc("GET /v1/events", s.auth(s.events))
	}
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/metrics", s.auth(s.sandboxMetrics))
}

// routeProxied names the requests the port proxy takes in the metrics.
const routeProxied = "proxy"

// observe runs h and records the request by its route pattern, which the
// mux sets on r as it routes it.
func (s *Server) observe(w http.ResponseWriter, r *http.Request, proxied bool, h func(http.ResponseWriter, *http.Request)) {
	if s.cfg.Metrics == nil {
		h(w, r)
		return
	}
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	h(sw, r)
	route := r.Pattern
	if proxied {
		route = routeProxied
	}
	if sw.status == 0 {
		sw.status = http.StatusOK
	}
	s.cfg.Metrics.ObserveRequest(route, sw.status, time.Since(start))
}

// statusWriter remembers the status a handler answered with. It passes
// flushes and hijacks (streams, WebSockets) through.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 || w.status < 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush sends what was written so far, as http.Flusher.
func (w *statusWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// Hijack hands the connection over (a WebSocket upgrade): 101.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.status = http.StatusSwitchingProtocols
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap gives http.ResponseController the writer underneath.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// events streams lifecycle events as server-sent events: id is the event's
// sequence number, event its type, data the event as JSON. A client that
// reconnects with Last-Event-ID (or after=) gets what it missed, as far as
// the daemon's history reaches (after=0: all of it); since= replays from a
// time.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	f, err := eventFilter(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	sub := s.cfg.Events.Subscribe(f)
	defer sub.Close()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	ew := &eventWriter{w: w}
	fmt.Fprint(w, "retry: 2000\n\n")
	ew.flush()
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			fmt.Fprint(w, ": keep-alive\n\n")
			ew.flush()
		case e, ok := <-sub.C:
			if !ok {
				// Fell behind: ending the stream makes the client
				// reconnect from the last id it saw.
				return
			}
			b, err := json.Marshal(e)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, b); err != nil {
				return
			}
			ew.flush()
		}
	}
}

// eventFilter reads GET /v1/events' query: sandbox, type (repeated or
// comma-separated), after (or the Last-Event-ID header) and since.
func eventFilter(r *http.Request) (event.Filter, error) {
	q := r.URL.Query()
	f := event.Filter{Sandbox: q.Get("sandbox")}
	for _, v := range q["type"] {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t == "" {
				continue
			}
			if !event.Valid(t) {
				return f, &sandbox.InvalidError{Field: "type", Reason: fmt.Sprintf("unknown event type %q (want %s)", t, strings.Join(event.Types, ", "))}
			}
			f.Types = append(f.Types, t)
		}
	}
	after := q.Get("after")
	if after == "" {
		after = r.Header.Get("Last-Event-ID")
	}
	if after != "" {
		n, err := strconv.ParseUint(after, 10, 64)
		if err != nil {
			return f, &sandbox.InvalidError{Field: "after", Reason: fmt.Sprintf("want an event's sequence number, got %q", after)}
		}
		f.Replay, f.After = true, n
	}
	var err error
	if f.Since, err = queryTime(q.Get("since"), "since"); err != nil {
		return f, err
	}
	f.Replay = f.Replay || !f.Since.IsZero()
	return f, nil
}

// sandboxMetrics returns a sandbox's usage samples between the optional
// start and end.
func (s *Server) sandboxMetrics(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	start, err := queryTime(q.Get("start"), "start")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	end, err := queryTime(q.Get("end"), "end")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	samples, err := s.sandboxes.Metrics(r.PathValue("id"), start, end)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, samples)
}

// queryTime reads a time given as Unix seconds (as E2B's API takes them)
// or in RFC 3339; "" is the zero time.
func queryTime(v, field string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil && !math.IsInf(secs, 0) && !math.IsNaN(secs) {
		return time.Unix(0, int64(secs*float64(time.Second))).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, &sandbox.InvalidError{Field: field, Reason: fmt.Sprintf("want Unix seconds or an RFC 3339 time, got %q", v)}
	}
	return t, nil
}
