// Package api serves ember's HTTP API: the /v1 REST resources, the OpenAPI
// document describing them and the daemon's health. It maps the sandbox
// package's errors to HTTP statuses and stable error codes; nothing below it
// knows about HTTP.
package api

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/api/e2b"
	"github.com/emberhq/ember/internal/apikey"
	"github.com/emberhq/ember/internal/build"
	"github.com/emberhq/ember/internal/event"
	"github.com/emberhq/ember/internal/resource"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/web"
	"github.com/emberhq/ember/wire"
)

//go:embed openapi.yaml
var openapiDoc []byte

// ErrShuttingDown is the cause with which the daemon cancels the requests in
// flight when it stops (the server's base context): they answer
// shutting_down.
var ErrShuttingDown = errors.New("the daemon is shutting down")

// Sandboxes is the sandbox manager as the API uses it: what E2B's control
// plane needs of it, and exec and the address of a running sandbox.
type Sandboxes interface {
	e2b.Sandboxes
	Exec(ctx context.Context, id string, req sandbox.ExecRequest, stdout, stderr io.Writer) (sandbox.ExecResult, error)
	Addresser
	Guest
}

// Guest is what the API does inside a running sandbox beyond exec: files,
// terminals and the stdin of a running command.
type Guest interface {
	ReadFile(ctx context.Context, id, user, path string) (io.ReadCloser, int64, error)
	WriteFile(ctx context.Context, id, user, path string, src io.Reader, size int64) (agent.Entry, error)
	StatFile(ctx context.Context, id, user, path string) (agent.Entry, error)
	ListFiles(ctx context.Context, id, user, path string, depth int) ([]agent.Entry, error)
	MakeDir(ctx context.Context, id, user, path string) (agent.Entry, error)
	MoveFile(ctx context.Context, id, user, from, to string) (agent.Entry, error)
	RemoveFile(ctx context.Context, id, user, path string) error
	StartTerminal(ctx context.Context, id string, req agent.TerminalRequest) (sandbox.Terminal, error)
	SendStdin(ctx context.Context, id string, pid uint32, data []byte) error
	CloseStdin(ctx context.Context, id string, pid uint32) error
}

// Templates lists templates.
type Templates interface {
	List() ([]template.Template, error)
}

// Config configures the API server.
type Config struct {
	// APIKey returns the key that guards everything but /health,
	// /openapi.yaml and /test. It is asked on every request, so a rotated
	// key is in force at once (apikey.File.Key).
	APIKey func() string
	// Domain routes <port>-<sandbox-id>.<Domain> to that port in the
	// sandbox; empty turns host routing off (the E2b-Sandbox-* headers
	// still route).
	Domain string
	// Info describes the daemon for GET /v1/info.
	Info func() wire.Info
	// Metrics, when set, serves GET /metrics (behind the API key) and
	// hears of every request.
	Metrics RequestMetrics
	// Events, when set, is the hub GET /v1/events streams from.
	Events *event.Hub
	// Warm, when set, serves the warm pools (GET /v1/warm, PUT
	// /v1/templates/{name}/warm).
	Warm Warm
	// ExecOutputLimit is the most of each output stream the buffered exec
	// keeps (the rest is dropped and the result says truncated); 0 means
	// DefaultExecOutputLimit.
	ExecOutputLimit int
	// Builds, when set, builds and deletes templates (POST /v1/templates,
	// DELETE /v1/templates/{name}).
	Builds Builds
	// E2B configures the E2B control plane served beside /v1 (package
	// e2b); its Authorize, Classify and Log are the server's.
	E2B e2b.Config
}

// DefaultExecOutputLimit is the most of stdout, and of stderr, the
// buffered exec keeps by default.
const DefaultExecOutputLimit = 16 << 20

// Server is the HTTP API.
type Server struct {
	cfg       Config
	sandboxes Sandboxes
	templates Templates
	log       *slog.Logger
	mux       *http.ServeMux
	proxy     *proxy
}

// Request body limits: a create is small; an exec carries stdin.
const (
	maxCreateBody = 1 << 20
	maxExecBody   = 16 << 20
)

// New returns the API server.
func New(cfg Config, sb Sandboxes, tpl Templates, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, sandboxes: sb, templates: tpl, log: log, mux: http.NewServeMux(), proxy: newProxy(cfg.Domain, sb, log)}
	s.mux.HandleFunc("GET /health", s.health)
	s.mux.HandleFunc("GET /openapi.yaml", s.openapi)
	s.mux.HandleFunc("GET /v1/info", s.auth(s.getInfo))
	s.mux.HandleFunc("GET /v1/templates", s.auth(s.listTemplates))
	s.mux.HandleFunc("GET /v1/sandboxes", s.auth(s.listSandboxes))
	s.mux.HandleFunc("POST /v1/sandboxes", s.auth(s.createSandbox))
	s.mux.HandleFunc("GET /v1/sandboxes/{id}", s.auth(s.getSandbox))
	s.mux.HandleFunc("DELETE /v1/sandboxes/{id}", s.auth(s.deleteSandbox))
	s.mux.HandleFunc("PUT /v1/sandboxes/{id}/network", s.auth(s.setNetwork))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/exec", s.auth(s.exec))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/exec/stream", s.auth(s.execStream))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/processes/{pid}/stdin", s.auth(s.sendStdin))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/processes/{pid}/close-stdin", s.auth(s.closeStdin))
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/files", s.auth(s.readFile))
	s.mux.HandleFunc("PUT /v1/sandboxes/{id}/files", s.auth(s.fileOp(http.StatusOK, s.writeFile)))
	s.mux.HandleFunc("DELETE /v1/sandboxes/{id}/files", s.auth(s.removeFile))
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/files/list", s.auth(s.listFiles))
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/files/stat", s.auth(s.fileOp(http.StatusOK, s.statFile)))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/files/mkdir", s.auth(s.fileOp(http.StatusCreated, s.makeDir)))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/files/move", s.auth(s.moveFile))
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/pty", s.authQuery(s.terminal))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/pause", s.auth(s.pauseSandbox))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/resume", s.auth(s.resumeSandbox))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/timeout", s.auth(s.setTimeout))
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/fork", s.auth(s.forkSandbox))
	s.mux.HandleFunc("GET /v1/snapshots", s.auth(s.listSnapshots))
	s.mux.HandleFunc("POST /v1/snapshots", s.auth(s.createSnapshot))
	s.mux.HandleFunc("GET /v1/snapshots/{name}", s.auth(s.getSnapshot))
	s.mux.HandleFunc("DELETE /v1/snapshots/{name}", s.auth(s.deleteSnapshot))
	s.routeObservability()
	s.routeWarm()
	s.routeTemplates()
	s.routeE2B()
	s.mux.HandleFunc("GET /test", s.testPage)
	s.mux.Handle("GET /test/assets/", http.StripPrefix("/test/assets/", http.FileServerFS(web.Assets)))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/test", http.StatusFound)
	})
	s.mux.HandleFunc("/", s.notFound)
	return s
}

// ServeHTTP implements http.Handler: requests routed to a sandbox port go
// to the proxy, the rest to the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rt, ok := s.proxy.route(r); ok {
		s.observe(w, r, true, func(w http.ResponseWriter, r *http.Request) { s.proxy.serve(w, r, s, rt) })
		return
	}
	s.observe(w, r, false, s.mux.ServeHTTP)
}

// auth lets a request through when it carries the API key: in X-API-Key,
// or as a bearer token (which is how Prometheus sends a scrape's
// credentials).
func (s *Server) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.checkKey(w, r, requestKey(r), h)
	}
}

// authQuery is auth that also takes the key from the api_key query
// parameter: a browser cannot set headers on a WebSocket.
func (s *Server) authQuery(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := requestKey(r)
		if key == "" {
			key = r.URL.Query().Get("api_key")
		}
		s.checkKey(w, r, key, h)
	}
}

// requestKey is the API key a request carries in its headers.
func requestKey(r *http.Request) string {
	if key := r.Header.Get("X-API-Key"); key != "" {
		return key
	}
	key, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return key
}

// authorized says whether r carries the API key in its headers, and if
// not why not (E2B's control plane answers with its own error shape).
func (s *Server) authorized(r *http.Request) (bool, string) {
	return s.validKey(requestKey(r))
}

// validKey says whether key is the API key, and if not why not.
func (s *Server) validKey(key string) (bool, string) {
	if key == "" {
		return false, "missing X-API-Key header (or Authorization: Bearer)"
	}
	if !apikey.Equal(key, s.cfg.APIKey()) {
		return false, "invalid API key"
	}
	return true, ""
}

// checkKey runs h when key is the API key, and answers 401 otherwise.
func (s *Server) checkKey(w http.ResponseWriter, r *http.Request, key string, h http.HandlerFunc) {
	if ok, reason := s.validKey(key); !ok {
		writeError(w, http.StatusUnauthorized, "unauthorized", reason)
		return
	}
	h(w, r)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(openapiDoc)
}

// testPage serves the /test page; it asks for the API key itself, so the
// page is public and every call it makes is authenticated.
func (s *Server) testPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'")
	w.Write(web.TestPage)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
}

func (s *Server) getInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.cfg.Info())
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	tpls, err := s.templates.List()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, append([]wire.Template{}, build.WireTemplates(tpls)...))
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) {
	recs := s.sandboxes.List()
	out := make([]wire.Sandbox, 0, len(recs))
	for _, rec := range recs {
		out = append(out, toSandbox(rec))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) {
	var req wire.CreateSandboxRequest
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	cr := sandbox.CreateRequest{
		Template: req.Template, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB,
		TimeoutS: req.TimeoutS, Env: req.Env, Metadata: req.Metadata,
		Snapshot: req.Snapshot, AutoPause: req.AutoPause,
		AutoResume: req.AutoResume, PrivateTraffic: req.PrivateTraffic,
	}
	if req.Limits != nil {
		cr.Limits = resource.Limits(*req.Limits)
	}
	if req.Network != nil {
		pol, err := policy(*req.Network)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		cr.Network = &pol
	}
	rec, err := s.sandboxes.Create(r.Context(), cr)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toSandbox(rec))
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	rec, err := s.sandboxes.Get(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(rec))
}

func (s *Server) setNetwork(w http.ResponseWriter, r *http.Request) {
	var req wire.NetworkPolicy
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	pol, err := policy(req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rec, err := s.sandboxes.SetNetwork(r.Context(), r.PathValue("id"), pol)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(rec))
}

// policy converts a wire policy; a malformed prefix is an invalid argument
// naming its place.
func policy(p wire.NetworkPolicy) (slot.Policy, error) {
	internet := p.Internet == nil || *p.Internet
	pol, err := sandbox.Policy(store.NetworkPolicy{Internet: internet, Allow: p.Allow, Deny: p.Deny})
	if err != nil {
		return slot.Policy{}, &sandbox.InvalidError{Field: "network", Reason: err.Error()}
	}
	return pol, nil
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	if err := s.sandboxes.Destroy(r.Context(), r.PathValue("id")); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request) {
	rec, err := s.sandboxes.Pause(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(rec))
}

func (s *Server) resumeSandbox(w http.ResponseWriter, r *http.Request) {
	rec, err := s.sandboxes.Resume(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(rec))
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) {
	var req wire.TimeoutRequest
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	rec, err := s.sandboxes.SetTimeout(r.Context(), r.PathValue("id"), req.TimeoutS)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSandbox(rec))
}

func (s *Server) forkSandbox(w http.ResponseWriter, r *http.Request) {
	var req wire.ForkRequest
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	recs, err := s.sandboxes.Fork(r.Context(), r.PathValue("id"), req.Count)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]wire.Sandbox, 0, len(recs))
	for _, rec := range recs {
		out = append(out, toSandbox(rec))
	}
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	sns, err := s.sandboxes.ListSnapshots(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]wire.Snapshot, 0, len(sns))
	for _, sn := range sns {
		out = append(out, toSnapshot(sn))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req wire.CreateSnapshotRequest
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	if req.Sandbox == "" {
		writeError(w, http.StatusBadRequest, "invalid_argument", "sandbox: must not be empty")
		return
	}
	sn, err := s.sandboxes.CreateSnapshot(r.Context(), req.Sandbox, req.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toSnapshot(sn))
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	sn, err := s.sandboxes.GetSnapshot(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toSnapshot(sn))
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.sandboxes.DeleteSnapshot(r.Context(), r.PathValue("name")); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func execRequest(req wire.ExecRequest) sandbox.ExecRequest {
	return sandbox.ExecRequest{
		Cmd: req.Cmd, Args: req.Args, Env: req.Env, Cwd: req.Cwd, User: req.User, Stdin: req.Stdin,
		Timeout: time.Duration(req.TimeoutS) * time.Second,
	}
}

// decodeExec reads an exec body and rejects what can be rejected before a
// command starts (the streaming endpoint commits to 200 once it starts).
func decodeExec(w http.ResponseWriter, r *http.Request) (wire.ExecRequest, bool) {
	var req wire.ExecRequest
	if !decode(w, r, maxExecBody, &req) {
		return req, false
	}
	switch {
	case req.Cmd == "":
		writeError(w, http.StatusBadRequest, "invalid_argument", "cmd: must not be empty")
		return req, false
	case req.TimeoutS < 0:
		writeError(w, http.StatusBadRequest, "invalid_argument", "timeout_s: must not be negative")
		return req, false
	}
	return req, true
}

// exec runs a command to its end and answers with its output, keeping at
// most ExecOutputLimit bytes of each stream: a command that prints without
// end costs the daemon that much, not more.
func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeExec(w, r)
	if !ok {
		return
	}
	if req.StdinOpen {
		writeError(w, http.StatusBadRequest, "invalid_argument", "stdin_open: only the streaming exec (/exec/stream) keeps stdin open")
		return
	}
	limit := s.cfg.ExecOutputLimit
	if limit <= 0 {
		limit = DefaultExecOutputLimit
	}
	stdout, stderr := &capped{max: limit}, &capped{max: limit}
	res, err := s.sandboxes.Exec(r.Context(), r.PathValue("id"), execRequest(req), stdout, stderr)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeExecResult(w, stdout.buf.Bytes(), stderr.buf.Bytes(), wire.ExecResult{
		ExitCode:        res.ExitCode,
		DurationMS:      float64(res.Duration.Microseconds()) / 1000,
		Truncated:       stdout.dropped || stderr.dropped,
		StdoutTruncated: stdout.dropped, StderrTruncated: stderr.dropped,
	})
}

// writeExecResult writes rest with stdout and stderr as wire.ExecResult's
// base64 fields, encoding them straight onto the connection: the output
// kept is the only copy the daemon holds, not one more for its JSON.
func writeExecResult(w http.ResponseWriter, stdout, stderr []byte, rest wire.ExecResult) {
	tail, err := json.Marshal(rest) // Stdout and Stderr empty: omitted
	if err != nil || len(tail) < 2 {
		writeError(w, http.StatusInternalServerError, "internal", "encode exec result")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	b64 := func(b []byte) {
		enc := base64.NewEncoder(base64.StdEncoding, bw)
		enc.Write(b)
		enc.Close()
	}
	bw.WriteString(`{"stdout":"`)
	b64(stdout)
	bw.WriteString(`","stderr":"`)
	b64(stderr)
	bw.WriteString(`"`)
	if string(tail) != "{}" {
		bw.WriteString(",")
	}
	bw.Write(tail[1:])
	bw.WriteString("\n")
	bw.Flush()
}

// capped keeps the first max bytes written to it and drops the rest,
// remembering that it did; writes never fail, so the command runs on.
type capped struct {
	max     int
	buf     bytes.Buffer
	dropped bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room < len(p) {
		c.dropped = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}

// execStream answers with NDJSON: a start event with the pid, one event
// per chunk of output as the command produces it, then an exit (or error)
// event. Each event is written and flushed before the next chunk is read
// from the guest, so a slow reader slows the command instead of growing a
// buffer here. Errors found before the command starts are plain JSON
// errors with their status.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeExec(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if rec, err := s.sandboxes.Get(id); err != nil {
		s.fail(w, r, err)
		return
	} else if rec.State != sandbox.StateRunning {
		s.fail(w, r, fmt.Errorf("sandbox %s is %s, not running: %w", id, rec.State, sandbox.ErrConflict))
		return
	}
	ew := &eventWriter{w: w}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	ew.flush()
	er := execRequest(req)
	er.KeepStdin = req.StdinOpen
	er.Started = func(pid uint32) { ew.send(wire.ExecEvent{Type: "start", Pid: pid}) }
	res, err := s.sandboxes.Exec(r.Context(), id, er, ew.stream("stdout"), ew.stream("stderr"))
	if err != nil {
		_, code, msg := s.classify(r, err)
		ew.send(wire.ExecEvent{Type: "error", Code: code, Message: msg})
		return
	}
	ew.send(wire.ExecEvent{Type: "exit", ExitCode: res.ExitCode, DurationMS: float64(res.Duration.Microseconds()) / 1000})
}

// eventWriter writes NDJSON events, one flush per event, safe for the
// stdout and stderr writers to share.
type eventWriter struct {
	mu sync.Mutex
	w  http.ResponseWriter
}

func (e *eventWriter) send(ev wire.ExecEvent) error { return e.sendJSON(ev) }

// sendJSON writes one event of any kind as a line.
func (e *eventWriter) sendJSON(ev any) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.w.Write(append(b, '\n')); err != nil {
		return err
	}
	e.flush()
	return nil
}

func (e *eventWriter) flush() {
	if f, ok := e.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (e *eventWriter) stream(kind string) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		if err := e.send(wire.ExecEvent{Type: kind, Data: p}); err != nil {
			return 0, err
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func toSandbox(r store.Sandbox) wire.Sandbox {
	internet := r.Network.Internet
	return wire.Sandbox{
		ID: r.ID, State: r.State, Template: r.Template, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB,
		DiskMiB: r.DiskMiB, Metadata: r.Metadata, CreatedAt: r.CreatedAt, ExpiresAt: r.ExpiresAt,
		TimingsMS: r.TimingsMS, Error: r.Error,
		Network:   wire.NetworkPolicy{Internet: &internet, Allow: r.Network.Allow, Deny: r.Network.Deny},
		AutoPause: r.AutoPause, Snapshot: r.Snapshot, DiskBytes: r.DiskBytes, MemoryBytes: r.MemoryBytes,
		AutoResume: r.AutoResume, TrafficToken: r.TrafficToken,
		Limits: limitsOf(r.Limits), Usage: (*wire.Usage)(r.Usage),
	}
}

// limitsOf is a record's limits as the API shows them; none when the
// daemon sets none.
func limitsOf(l resource.Limits) *wire.Limits {
	if l == (resource.Limits{}) {
		return nil
	}
	w := wire.Limits(l)
	return &w
}

func toSnapshot(sn store.Snapshot) wire.Snapshot {
	return wire.Snapshot{
		Name: sn.Name, Sandbox: sn.Sandbox, Template: sn.Template, VCPUs: sn.VCPUs, MemoryMiB: sn.MemoryMiB,
		DiskMiB: sn.DiskMiB, CreatedAt: sn.CreatedAt, DiskBytes: sn.DiskBytes, MemoryBytes: sn.MemoryBytes,
	}
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// errors, so a misspelt field is reported instead of silently ignored.
func decode(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body exceeds %d bytes", limit))
		case errors.Is(err, io.EOF):
			writeError(w, http.StatusBadRequest, "invalid_json", "request body is empty: a JSON object is required")
		default:
			writeError(w, http.StatusBadRequest, "invalid_json", "request body: "+err.Error())
		}
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "invalid_json", "request body: unexpected data after the JSON object")
		return false
	}
	return true
}

// classify maps an error to a status, a stable code and a message for the
// client. Errors the client can act on carry their message; internal ones are
// logged and reported by reference.
func (s *Server) classify(r *http.Request, err error) (int, string, string) {
	if status, code, ok := buildStatus(err); ok {
		return status, code, err.Error()
	}
	var inv *sandbox.InvalidError
	switch {
	case errors.As(err, &inv):
		return http.StatusBadRequest, "invalid_argument", inv.Error()
	case errors.Is(err, sandbox.ErrTemplateNotFound):
		return http.StatusNotFound, "template_not_found", err.Error()
	case errors.Is(err, sandbox.ErrSnapshotNotFound):
		return http.StatusNotFound, "snapshot_not_found", err.Error()
	case errors.Is(err, sandbox.ErrSnapshotExists):
		return http.StatusConflict, "snapshot_exists", err.Error()
	case errors.Is(err, sandbox.ErrSnapshotInUse):
		return http.StatusConflict, "snapshot_in_use", err.Error()
	case errors.Is(err, sandbox.ErrUnsupported):
		return http.StatusNotImplemented, "not_supported", err.Error()
	case errors.Is(err, sandbox.ErrNotFound):
		return http.StatusNotFound, "sandbox_not_found", err.Error()
	case errors.Is(err, sandbox.ErrConflict):
		// A *sandbox.StateConflict names the state the sandbox is in.
		return http.StatusConflict, "invalid_state", err.Error()
	case errors.Is(err, sandbox.ErrFileNotFound):
		return http.StatusNotFound, "file_not_found", err.Error()
	case errors.Is(err, sandbox.ErrIsDirectory):
		return http.StatusBadRequest, "is_directory", err.Error()
	case errors.Is(err, sandbox.ErrNotDirectory):
		return http.StatusBadRequest, "not_directory", err.Error()
	case errors.Is(err, sandbox.ErrPermission):
		return http.StatusForbidden, "permission_denied", err.Error()
	case errors.Is(err, sandbox.ErrNoSpace):
		return http.StatusInsufficientStorage, "no_space", err.Error()
	case errors.Is(err, sandbox.ErrFileExists):
		return http.StatusConflict, "file_exists", err.Error()
	case errors.Is(err, sandbox.ErrUnknownUser):
		return http.StatusBadRequest, "unknown_user", err.Error()
	case errors.Is(err, sandbox.ErrInvalidGuest):
		return http.StatusBadRequest, "invalid_argument", err.Error()
	case errors.Is(err, sandbox.ErrNoProcess):
		return http.StatusNotFound, "process_not_found", err.Error()
	case errors.Is(err, sandbox.ErrNoCapacity):
		// Retry-After rides along (fail sets it).
		return http.StatusTooManyRequests, "capacity_exhausted", err.Error()
	case errors.Is(err, sandbox.ErrExecTimeout):
		return http.StatusGatewayTimeout, "exec_timeout", err.Error()
	case errors.Is(err, sandbox.ErrClosed), errors.Is(context.Cause(r.Context()), ErrShuttingDown):
		return http.StatusServiceUnavailable, "shutting_down", "the daemon is shutting down; nothing of this request was kept"
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return 499, "client_closed_request", "the client went away"
	}
	var op *sandbox.OpError
	if errors.As(err, &op) {
		status, code := opStatus(err)
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "sandbox", op.ID, "code", code, "err", err)
		return status, code, op.Summary() + " (the daemon log has the details)"
	}
	s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	return http.StatusInternalServerError, "internal", "internal error: the daemon log has the details"
}

// opStatus maps the part of the host a lifecycle operation failed in to a
// status and a stable code. Most are the daemon's failures (500); a guest
// that never answered is a timeout of the daemon's gateway to it (504), one
// that answered wrongly a bad gateway (502), a daemon out of network slots
// unavailable until a sandbox ends (503).
func opStatus(err error) (int, string) {
	switch {
	case errors.Is(err, sandbox.ErrNoSlots):
		return http.StatusServiceUnavailable, "no_capacity"
	case errors.Is(err, sandbox.ErrDisk):
		return http.StatusInternalServerError, "disk_failed"
	case errors.Is(err, sandbox.ErrNetwork):
		return http.StatusInternalServerError, "network_failed"
	case errors.Is(err, sandbox.ErrVMMStart):
		return http.StatusInternalServerError, "vmm_start_failed"
	case errors.Is(err, sandbox.ErrVMMSave):
		return http.StatusInternalServerError, "vmm_save_failed"
	case errors.Is(err, sandbox.ErrBoot):
		return http.StatusGatewayTimeout, "boot_failed"
	case errors.Is(err, sandbox.ErrAgent):
		return http.StatusBadGateway, "agent_failed"
	case errors.Is(err, sandbox.ErrStore):
		return http.StatusInternalServerError, "store_failed"
	}
	return http.StatusInternalServerError, "internal"
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := s.classify(r, err)
	var ce *sandbox.CapacityError
	if errors.As(err, &ce) {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((ce.RetryAfter+time.Second-1)/time.Second))))
	}
	writeError(w, status, code, msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, wire.Error{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
