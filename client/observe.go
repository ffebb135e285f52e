package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/wire"
)

// The observability bodies, as the daemon serves them.
type (
	Event      = wire.Event
	Sample     = wire.Sample
	GuestUsage = wire.GuestUsage
	HostUsage  = wire.HostUsage
)

// SandboxMetrics returns a sandbox's usage samples taken from start to end,
// oldest first; a zero time leaves its side open.
func (c *Client) SandboxMetrics(ctx context.Context, id string, start, end time.Time) ([]Sample, error) {
	q := url.Values{}
	if !start.IsZero() {
		q.Set("start", start.UTC().Format(time.RFC3339Nano))
	}
	if !end.IsZero() {
		q.Set("end", end.UTC().Format(time.RFC3339Nano))
	}
	path := "/v1/sandboxes/" + url.PathEscape(id) + "/metrics"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out []Sample
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// EventFilter chooses the events a stream delivers.
type EventFilter struct {
	// Sandbox, when set, keeps only that sandbox's events.
	Sandbox string
	// Types, when not empty, keeps only those (wire.EventCreated, ...).
	Types []string
	// After replays the events after that sequence number that the
	// daemon's history still holds; Since those from that time on.
	After uint64
	Since time.Time
}

// EventStream follows the daemon's lifecycle events (GET /v1/events). It
// reconnects by itself when the connection drops, asking for the events
// after the last one it delivered.
type EventStream struct {
	c      *Client
	ctx    context.Context
	filter EventFilter
	body   io.ReadCloser
	sc     *bufio.Scanner
	last   uint64
	// wait is the pause before a reconnection: the stream's retry hint.
	wait time.Duration
}

// Events opens a stream of lifecycle events; Close it when done. The first
// connection is made here, so a refused filter is an error at once.
func (c *Client) Events(ctx context.Context, f EventFilter) (*EventStream, error) {
	s := &EventStream{c: c, ctx: ctx, filter: f, last: f.After, wait: defaultRetry}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *EventStream) connect() error {
	q := url.Values{}
	if s.filter.Sandbox != "" {
		q.Set("sandbox", s.filter.Sandbox)
	}
	if len(s.filter.Types) > 0 {
		q.Set("type", strings.Join(s.filter.Types, ","))
	}
	if s.last > 0 {
		q.Set("after", strconv.FormatUint(s.last, 10))
	} else if !s.filter.Since.IsZero() {
		q.Set("since", s.filter.Since.UTC().Format(time.RFC3339Nano))
	}
	path := "/v1/events"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := s.c.send(s.ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	s.body = resp.Body
	s.sc = bufio.NewScanner(resp.Body)
	s.sc.Buffer(make([]byte, 64*1024), 1<<20)
	return nil
}

// defaultRetry is the pause before a dropped stream is opened again, until
// the stream gives its own (a "retry:" line).
const defaultRetry = time.Second

// Next returns the next event, waiting for it. It returns the context's
// error once that ends, and an *APIError when the daemon refuses a
// reconnection.
func (s *EventStream) Next() (Event, error) {
	for {
		if e, ok, err := s.read(); err != nil {
			return Event{}, err
		} else if ok {
			s.last = e.Seq
			return e, nil
		}
		// The stream ended: the daemon restarted, or found us lagging.
		s.body.Close()
		select {
		case <-s.ctx.Done():
			return Event{}, s.ctx.Err()
		case <-time.After(s.wait):
		}
		if err := s.connect(); err != nil {
			var ae *APIError
			if errors.As(err, &ae) || s.ctx.Err() != nil {
				return Event{}, err
			}
			// Not answering yet: try again after the next wait.
			s.body, s.sc = io.NopCloser(strings.NewReader("")), bufio.NewScanner(strings.NewReader(""))
		}
	}
}

// read parses the next server-sent event; ok is false when the stream
// ended first.
func (s *EventStream) read() (e Event, ok bool, err error) {
	var data strings.Builder
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if data.Len() == 0 {
				continue // the retry hint or a keep-alive
			}
			if err := json.Unmarshal([]byte(data.String()), &e); err != nil {
				return Event{}, false, fmt.Errorf("decode event %q: %w", data.String(), err)
			}
			return e, true, nil
		case strings.HasPrefix(line, "retry:"):
			if ms, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "retry:"))); err == nil && ms >= 0 {
				s.wait = time.Duration(ms) * time.Millisecond
			}
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if s.ctx.Err() != nil {
		return Event{}, false, s.ctx.Err()
	}
	return Event{}, false, nil
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }
