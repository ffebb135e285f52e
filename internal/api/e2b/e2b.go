// Package e2b serves E2B's control-plane API on the daemon's listener, so
// code written against E2B's SDKs runs unchanged against ember with
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set. It translates E2B's
// calls (those of the pinned SDK, 2.51.0, and the older ones the
// compatibility matrix pins) into the sandbox manager's, and answers in
// E2B's field names, statuses and numeric error codes; what of E2B's API
// ember does not serve answers 501 saying so. envd traffic is not its
// business: the port proxy (package api) routes it to the agent.
package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
)

// Sandboxes is the sandbox manager as the facade uses it.
type Sandboxes interface {
	Create(ctx context.Context, req sandbox.CreateRequest) (store.Sandbox, error)
	Get(id string) (store.Sandbox, error)
	List() []store.Sandbox
	Destroy(ctx context.Context, id string) error
	SetNetwork(ctx context.Context, id string, pol slot.Policy) (store.Sandbox, error)
	Pause(ctx context.Context, id string) (store.Sandbox, error)
	Resume(ctx context.Context, id string) (store.Sandbox, error)
	SetTimeout(ctx context.Context, id string, seconds int) (store.Sandbox, error)
	Fork(ctx context.Context, id string, count int) ([]store.Sandbox, error)
	CreateSnapshot(ctx context.Context, id, name string) (store.Snapshot, error)
	GetSnapshot(ctx context.Context, name string) (store.Snapshot, error)
	ListSnapshots(ctx context.Context) ([]store.Snapshot, error)
	DeleteSnapshot(ctx context.Context, name string) error
	// Metrics returns a sandbox's usage samples from start to end (zero
	// times: open).
	Metrics(id string, start, end time.Time) ([]sandbox.Sample, error)
}

// Templates lists ember's templates.
type Templates interface {
	List() ([]template.Template, error)
}

// DefaultTemplate is the template E2B's SDKs ask for when their caller
// names none; it means the daemon's default template unless
// Config.Templates maps it.
const DefaultTemplate = "base"

// Timeouts E2B's API takes when a body names none: the v2 create's and
// connect's, and the 1.x create's and resume's (its schema's defaults).
const (
	defaultTimeout   = 300
	defaultTimeoutV1 = 15
)

// Config configures the facade.
type Config struct {
	// Domain is the daemon's sandbox domain (<port>-<id>.Domain reaches a
	// port); the domain a response names is it with the port the client
	// used, "localhost" when empty. Never one of E2B's own: the SDKs would
	// send the sandbox's traffic, token and all, to E2B's cloud.
	Domain string
	// Templates maps E2B template names to ember templates; a name it does
	// not hold is an ember template (or snapshot) name as it is.
	Templates map[string]string
	// DefaultTemplate is the daemon's default template, which E2B's
	// default names when a build starts from it.
	DefaultTemplate string
	// EnvdVersion is the envd version the sandboxes' agent implements.
	EnvdVersion string
	// Builds, when set, serves E2B's template build API (Template.build);
	// FilesDir keeps the archives of COPY steps the SDK uploads, and
	// BuildContext bounds the builds it starts (the daemon's life).
	Builds       Builds
	FilesDir     string
	BuildContext context.Context
	// Authorize says whether r carries the API key, and if not why not.
	Authorize func(r *http.Request) (ok bool, reason string)
	// Classify maps an error of the manager to an HTTP status and the
	// message a client is told (package api's mapping, shared with /v1).
	Classify func(r *http.Request, err error) (status int, msg string)
	Log      *slog.Logger
}

// Facade is E2B's control plane over a sandbox manager.
type Facade struct {
	cfg    Config
	sbs    Sandboxes
	tpl    Templates
	builds *builds
}

// New returns the facade; Register mounts it.
func New(cfg Config, sbs Sandboxes, tpl Templates) *Facade {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Facade{cfg: cfg, sbs: sbs, tpl: tpl, builds: newBuilds()}
}

// Register adds E2B's routes to mux. None collides with /v1.
func (f *Facade) Register(mux *http.ServeMux) {
	h := func(pattern string, fn http.HandlerFunc) { mux.HandleFunc(pattern, f.auth(fn)) }
	h("POST /v2/sandboxes", f.createV2)
	h("POST /sandboxes", f.createV1)
	h("GET /v2/sandboxes", f.listV2)
	h("GET /sandboxes", f.listV1)
	h("GET /sandboxes/{id}", f.getInfo)
	h("DELETE /sandboxes/{id}", f.kill)
	h("POST /sandboxes/{id}/timeout", f.setTimeout)
	h("POST /sandboxes/{id}/refreshes", f.refresh)
	h("POST /sandboxes/{id}/pause", f.pause)
	h("POST /sandboxes/{id}/resume", f.resume)
	h("POST /sandboxes/{id}/connect", f.connect)
	h("POST /v2/sandboxes/{id}/connect", f.connect)
	h("GET /sandboxes/{id}/metrics", f.metrics)
	h("GET /sandboxes/metrics", f.latestMetrics)
	h("PUT /sandboxes/{id}/network", f.updateNetwork)
	h("POST /sandboxes/{id}/snapshots", f.createSnapshot)
	h("GET /snapshots", f.listSnapshots)
	h("DELETE /templates/{id}", f.deleteSnapshot)
	h("POST /sandboxes/{id}/fork", f.fork)
	f.registerBuilds(mux, h)
	f.registerUnserved(h)
}

// templatesNotServed answers the template calls the facade does not
// serve: those of E2B's v1 build API, listing, tags, and all of the build
// API when the daemon builds no templates.
const templatesNotServed = "this call of E2B's template API is not served: build with the SDK's Template.build() (its v3 build API) or `ember template build`"

// unserved is what of E2B's API ember does not serve, and why: each
// answers 501 with its reason, never a silent success.
var unserved = []struct{ pattern, reason string }{
	{"/sandboxes/{id}/logs", "sandbox logs are not served: read a command's output from the command"},
	{"/v2/sandboxes/{id}/logs", "sandbox logs are not served: read a command's output from the command"},
	{"/templates", templatesNotServed},
	{"/templates/", templatesNotServed},
	{"/v2/templates/", templatesNotServed},
	{"/v2/templates", templatesNotServed},
	{"/v3/templates", templatesNotServed},
	{"/volumes", "volumes are not served"},
	{"/volumes/", "volumes are not served"},
	{"/volumecontent/", "volumes are not served"},
	{"/secrets", "secrets are not served"},
	{"/secrets/", "secrets are not served"},
	{"/teams", "teams are not served: an ember daemon has one API key"},
	{"/teams/", "teams are not served: an ember daemon has one API key"},
}

func (f *Facade) registerUnserved(h func(string, http.HandlerFunc)) {
	for _, u := range unserved {
		h(u.pattern, func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusNotImplemented, u.reason)
		})
	}
}

// errNotServed is a request for something of E2B's that ember does not
// do; it answers 501 with the message.
type errNotServed string

func (e errNotServed) Error() string { return string(e) }

// auth lets requests with the API key through; the others get E2B's 401,
// which the SDKs raise as AuthenticationError.
func (f *Facade) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if ok, reason := f.cfg.Authorize(r); !ok {
			writeError(w, http.StatusUnauthorized, reason)
			return
		}
		h(w, r)
	}
}

// fail answers err in E2B's error body, its status chosen by package api's
// mapping of the manager's errors.
func (f *Facade) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ns errNotServed
	var bad *badRequest
	switch {
	case errors.As(err, &ns):
		writeError(w, http.StatusNotImplemented, ns.Error())
	case errors.As(err, &bad):
		writeError(w, bad.status, bad.msg)
	default:
		status, msg := f.cfg.Classify(r, err)
		writeError(w, status, msg)
	}
}

// badRequest is a body the facade rejects before the manager sees it.
type badRequest struct {
	status int
	msg    string
}

func (e *badRequest) Error() string { return e.msg }

func invalid(format string, args ...any) error {
	return &badRequest{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// WriteError answers with E2B's error body, {"code": status, "message":
// msg}: the shape of E2B's control plane and of its envd alike, which the
// port proxy uses for envd traffic.
func WriteError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, Error{Code: status, Message: msg})
}

func writeError(w http.ResponseWriter, status int, msg string) { WriteError(w, status, msg) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// maxBody bounds a control-plane request body.
const maxBody = 1 << 20

// decode reads a JSON body strictly: a field the facade does not know is a
// 400 naming it (a newer SDK's wire change shows up as a clear error, not a
// setting silently dropped). An empty body is an empty object, as E2B's
// API takes it.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &badRequest{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body exceeds %d bytes", maxBody)}
		}
		return fmt.Errorf("read request body: %w", err)
	}
	if strings.TrimSpace(string(b)) == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid("request body: %v", err)
	}
	if dec.More() {
		return invalid("request body: unexpected data after the JSON object")
	}
	return nil
}

// domain is the sandbox domain a response names: the configured one with
// the port the client reached the daemon on, so <port>-<id>.<domain>
// comes back to this daemon.
func (f *Facade) domain(r *http.Request) string {
	d := strings.TrimPrefix(f.cfg.Domain, ".")
	if d == "" {
		d = "localhost"
	}
	if _, port, err := net.SplitHostPort(r.Host); err == nil && port != "" {
		return net.JoinHostPort(d, port)
	}
	return d
}

// resolve maps a create's templateID to what the manager makes a sandbox
// from: a mapped template, a snapshot of that name, or an ember template.
// E2B's default, unmapped, is the daemon's default template.
func (f *Facade) resolve(ctx context.Context, id string, req *sandbox.CreateRequest) error {
	if id == "" {
		id = DefaultTemplate
	}
	if t, ok := f.cfg.Templates[id]; ok {
		req.Template = t
		return nil
	}
	// A tag names the template as it is: ember's templates have none, and
	// no template or snapshot name holds a ':'.
	id, _ = splitTag(id)
	if t, ok := f.cfg.Templates[id]; ok {
		req.Template = t
		return nil
	}
	if id == DefaultTemplate {
		return nil // the manager's default
	}
	if _, err := f.sbs.GetSnapshot(ctx, id); err == nil {
		req.Snapshot = id
		return nil
	} else if !errors.Is(err, sandbox.ErrSnapshotNotFound) {
		return err
	}
	req.Template = id
	return nil
}

func (f *Facade) createV2(w http.ResponseWriter, r *http.Request) {
	var body NewSandboxV2
	if err := decode(r, &body); err != nil {
		f.fail(w, r, err)
		return
	}
	f.create(w, r, body.newSandboxFields, defaultTimeout)
}

func (f *Facade) createV1(w http.ResponseWriter, r *http.Request) {
	var body NewSandbox
	if err := decode(r, &body); err != nil {
		f.fail(w, r, err)
		return
	}
	// secure asks for an envd access token: every ember sandbox has one,
	// and secure: false does not take it away.
	f.create(w, r, body.newSandboxFields, defaultTimeoutV1)
}

// create makes a sandbox as NewSandbox(V2) asks: 201 with its Sandbox.
func (f *Facade) create(w http.ResponseWriter, r *http.Request, body newSandboxFields, defTimeout int) {
	req, err := f.createRequest(r.Context(), body, defTimeout)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	rec, err := f.sbs.Create(r.Context(), req)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	tid := body.TemplateID
	if tid == "" {
		tid = DefaultTemplate
	}
	writeJSON(w, http.StatusCreated, f.sandbox(r, rec, tid))
}

// createRequest translates a create body, refusing with 501 what ember
// does not do rather than dropping it.
func (f *Facade) createRequest(ctx context.Context, body newSandboxFields, defTimeout int) (sandbox.CreateRequest, error) {
	switch {
	case present(body.MCP):
		return sandbox.CreateRequest{}, errNotServed("mcp: the MCP gateway is not served")
	case present(body.IAM):
		return sandbox.CreateRequest{}, errNotServed("iam: workload identity is not served")
	case len(body.VolumeMounts) > 0:
		return sandbox.CreateRequest{}, errNotServed("volumeMounts: volumes are not served")
	case body.AutoPauseMemory != nil && !*body.AutoPauseMemory:
		return sandbox.CreateRequest{}, errNotServed("autoPauseMemory: false: a pause always keeps the memory (filesystem-only pauses are not served)")
	}
	timeout := defTimeout
	if body.Timeout != nil {
		timeout = *body.Timeout
	}
	req := sandbox.CreateRequest{
		TimeoutS: timeout, Env: body.EnvVars, Metadata: body.Metadata,
		AutoPause:  body.AutoPause != nil && *body.AutoPause,
		AutoResume: body.AutoResume != nil && body.AutoResume.Enabled,
	}
	if req.AutoResume && !req.AutoPause {
		return sandbox.CreateRequest{}, invalid("autoResume: needs autoPause (a sandbox killed at its timeout cannot resume)")
	}
	if timeout < 1 {
		return sandbox.CreateRequest{}, invalid("timeout: must be at least 1 second, got %d", timeout)
	}
	pol, private, err := createPolicy(body.AllowInternetAccess, body.Network)
	if err != nil {
		return sandbox.CreateRequest{}, err
	}
	req.Network, req.PrivateTraffic = pol, private
	if err := f.resolve(ctx, body.TemplateID, &req); err != nil {
		return sandbox.CreateRequest{}, err
	}
	return req, nil
}

// present says whether a raw JSON field carries something (null and {}
// do not).
func present(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s != "" && s != "null" && s != "{}"
}

// sandbox is the Sandbox body of a create, connect, resume or fork; tid is
// the templateID to name (the one the client asked for, on a create).
func (f *Facade) sandbox(r *http.Request, rec store.Sandbox, tid string) Sandbox {
	if tid == "" {
		tid = templateID(rec)
	}
	out := Sandbox{
		SandboxID: rec.ID, TemplateID: tid, Alias: tid, ClientID: clientID,
		EnvdVersion: f.cfg.EnvdVersion, EnvdAccessToken: rec.Token, Domain: f.domain(r),
	}
	if rec.TrafficToken != "" {
		tok := rec.TrafficToken
		out.TrafficAccessToken = &tok
	}
	return out
}

// clientID fills the deprecated clientID the schema still requires.
const clientID = "ember"

// templateID names what a sandbox was made from, as E2B names it: the
// snapshot it was restored from, else its template.
func templateID(rec store.Sandbox) string {
	if rec.Snapshot != "" && !strings.HasPrefix(rec.Snapshot, ".") {
		return rec.Snapshot
	}
	return rec.Template
}

// state is a sandbox's state as E2B has it (running or paused); ok is false
// for a sandbox E2B would not show: one being destroyed, or failed (whose
// record ember keeps until it is deleted).
func state(rec store.Sandbox) (string, bool) {
	switch rec.State {
	case sandbox.StateRunning, sandbox.StateCreating, sandbox.StateResuming:
		return "running", true
	case sandbox.StatePaused, sandbox.StatePausing:
		return "paused", true
	}
	return "", false
}

// lookup finds a sandbox E2B would show: a failed or stopping one is not
// found, with what became of it.
func (f *Facade) lookup(id string) (store.Sandbox, string, error) {
	rec, err := f.sbs.Get(id)
	if err != nil {
		return store.Sandbox{}, "", err
	}
	st, ok := state(rec)
	if !ok {
		why := rec.State
		if rec.Error != "" {
			why += ": " + rec.Error
		}
		return store.Sandbox{}, "", fmt.Errorf("sandbox %q is %s (delete it to release its record): %w", id, why, sandbox.ErrNotFound)
	}
	return rec, st, nil
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func (f *Facade) getInfo(w http.ResponseWriter, r *http.Request) {
	rec, st, err := f.lookup(r.PathValue("id"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	internet := rec.Network.Internet
	onTimeout := "kill"
	if rec.AutoPause {
		onTimeout = "pause"
	}
	public := rec.TrafficToken == ""
	tid := templateID(rec)
	writeJSON(w, http.StatusOK, SandboxDetail{
		SandboxID: rec.ID, TemplateID: tid, Alias: tid, ClientID: clientID,
		CPUCount: rec.VCPUs, MemoryMB: rec.MemoryMiB, DiskSizeMB: rec.DiskMiB,
		EnvdVersion: f.cfg.EnvdVersion, EnvdAccessToken: rec.Token, Domain: f.domain(r),
		Metadata: nonNil(rec.Metadata), StartedAt: rfc3339(rec.CreatedAt), EndAt: rfc3339(rec.ExpiresAt),
		State: st, AllowInternetAccess: &internet,
		Network:      &NetworkConfig{AllowOut: rec.Network.Allow, DenyOut: rec.Network.Deny, AllowPublicTraffic: &public},
		Lifecycle:    &Lifecycle{OnTimeout: onTimeout, AutoResume: rec.AutoResume},
		VolumeMounts: []VolumeMount{},
	})
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func (f *Facade) kill(w http.ResponseWriter, r *http.Request) {
	if err := f.sbs.Destroy(r.Context(), r.PathValue("id")); err != nil {
		f.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Facade) setTimeout(w http.ResponseWriter, r *http.Request) {
	var body TimeoutRequest
	f.act(w, r, &body, func(ctx context.Context, id string) error {
		// A paused sandbox has no end time until it runs again: E2B's
		// SDKs before 2.4 connect by trying this first and resuming when
		// it fails.
		if rec, err := f.sbs.Get(id); err == nil && rec.State != sandbox.StateRunning {
			return &sandbox.StateConflict{ID: id, State: rec.State, Want: "running"}
		}
		_, err := f.sbs.SetTimeout(ctx, id, body.Timeout)
		return err
	})
}

// target decodes r's body into v and finds the sandbox the path names, as
// E2B shows sandboxes (with its E2B state); when it cannot, it has
// answered and ok is false.
func (f *Facade) target(w http.ResponseWriter, r *http.Request, v any) (rec store.Sandbox, state string, ok bool) {
	if err := decode(r, v); err != nil {
		f.fail(w, r, err)
		return store.Sandbox{}, "", false
	}
	rec, state, err := f.lookup(r.PathValue("id"))
	if err != nil {
		f.fail(w, r, err)
		return store.Sandbox{}, "", false
	}
	return rec, state, true
}

// act runs an operation on the sandbox of the path that answers 204: the
// body decoded into v, the sandbox looked up as E2B shows sandboxes, then
// op.
func (f *Facade) act(w http.ResponseWriter, r *http.Request, v any, op func(ctx context.Context, id string) error) {
	rec, _, ok := f.target(w, r, v)
	if !ok {
		return
	}
	if err := op(r.Context(), rec.ID); err != nil {
		f.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// refresh keeps a sandbox alive for duration seconds from now, when that
// is later than its end time.
func (f *Facade) refresh(w http.ResponseWriter, r *http.Request) {
	var body RefreshRequest
	f.act(w, r, &body, func(ctx context.Context, id string) error {
		d := defaultTimeoutV1
		if body.Duration != nil {
			d = *body.Duration
		}
		_, err := f.extend(ctx, id, d)
		return err
	})
}

// extend moves a sandbox's end time to now + seconds if that is later,
// never earlier, and returns its record.
func (f *Facade) extend(ctx context.Context, id string, seconds int) (store.Sandbox, error) {
	rec, _, err := f.lookup(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	if seconds < 1 {
		return store.Sandbox{}, invalid("timeout: must be at least 1 second, got %d", seconds)
	}
	if time.Now().Add(time.Duration(seconds) * time.Second).After(rec.ExpiresAt) {
		return f.sbs.SetTimeout(ctx, id, seconds)
	}
	return rec, nil
}

func (f *Facade) pause(w http.ResponseWriter, r *http.Request) {
	var body PauseRequest
	f.act(w, r, &body, func(ctx context.Context, id string) error {
		if body.Memory != nil && !*body.Memory {
			return errNotServed("memory: false: a pause always keeps the memory (filesystem-only pauses are not served)")
		}
		// A paused sandbox is a conflict (409), which the SDKs read as
		// "already paused".
		_, err := f.sbs.Pause(ctx, id)
		return err
	})
}

// connect answers both connects: a paused sandbox is resumed (201), a
// running one left running (200); either way its end time becomes now +
// timeout if that is later, never earlier.
func (f *Facade) connect(w http.ResponseWriter, r *http.Request) {
	var body Connect
	rec, st, ok := f.target(w, r, &body)
	if !ok {
		return
	}
	if body.Memory != nil && !*body.Memory {
		f.fail(w, r, errNotServed("memory: false: resuming by a cold boot from the disk is not served"))
		return
	}
	timeout := defaultTimeout
	if body.Timeout != nil {
		timeout = *body.Timeout
	}
	id, status := rec.ID, http.StatusOK
	var err error
	if st == "paused" {
		resumed, err := f.sbs.Resume(r.Context(), id)
		switch {
		case err == nil:
			rec, status = resumed, http.StatusCreated
		case errors.Is(err, sandbox.ErrNotPaused):
			// Resumed meanwhile by someone else: running, as asked.
		default:
			f.fail(w, r, err)
			return
		}
	}
	if rec, err = f.extend(r.Context(), id, timeout); err != nil {
		f.fail(w, r, err)
		return
	}
	writeJSON(w, status, f.sandbox(r, rec, ""))
}

// resume is the early 2.x SDKs' resume: 201 once a paused sandbox runs
// again, its end time now + timeout; 409 for one that is running.
func (f *Facade) resume(w http.ResponseWriter, r *http.Request) {
	var body Resume
	rec, _, ok := f.target(w, r, &body)
	if !ok {
		return
	}
	switch {
	case body.Memory != nil && !*body.Memory:
		f.fail(w, r, errNotServed("memory: false: resuming by a cold boot from the disk is not served"))
		return
	case body.AutoPause != nil && *body.AutoPause:
		f.fail(w, r, errNotServed("autoPause: set it when creating the sandbox; a resume does not change it"))
		return
	}
	timeout := defaultTimeoutV1
	if body.Timeout != nil {
		timeout = *body.Timeout
	}
	if _, err := f.sbs.Resume(r.Context(), rec.ID); err != nil {
		f.fail(w, r, err)
		return
	}
	rec, err := f.sbs.SetTimeout(r.Context(), rec.ID, timeout)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, f.sandbox(r, rec, ""))
}

func (f *Facade) updateNetwork(w http.ResponseWriter, r *http.Request) {
	var body NetworkUpdate
	f.act(w, r, &body, func(ctx context.Context, id string) error {
		pol, err := updatePolicy(body)
		if err != nil {
			return err
		}
		_, err = f.sbs.SetNetwork(ctx, id, pol)
		return err
	})
}

func (f *Facade) fork(w http.ResponseWriter, r *http.Request) {
	var body ForkRequest
	src, _, ok := f.target(w, r, &body)
	if !ok {
		return
	}
	count := 1
	if body.Count != nil {
		count = *body.Count
	}
	recs, err := f.sbs.Fork(r.Context(), src.ID, count)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	out := make([]ForkResult, 0, len(recs))
	for _, rec := range recs {
		if body.Timeout != nil {
			// Each fork is its own sandbox by now; one whose timeout
			// could not be set is reported as that fork's error.
			set, err := f.sbs.SetTimeout(r.Context(), rec.ID, *body.Timeout)
			if err != nil {
				status, msg := f.cfg.Classify(r, err)
				out = append(out, ForkResult{Error: &Error{Code: status, Message: msg}})
				if derr := f.sbs.Destroy(context.WithoutCancel(r.Context()), rec.ID); derr != nil {
					f.cfg.Log.Error("destroy fork whose timeout was refused", "sandbox", rec.ID, "err", derr)
				}
				continue
			}
			rec = set
		}
		sb := f.sandbox(r, rec, "")
		out = append(out, ForkResult{Sandbox: &sb})
	}
	writeJSON(w, http.StatusCreated, out)
}
