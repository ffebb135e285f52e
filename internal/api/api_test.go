package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// fakeSandboxes records calls and answers from a map.
type fakeSandboxes struct {
	mu   sync.Mutex
	recs map[string]store.Sandbox
	// execOut is written to stdout, one chunk per element, with a pause
	// between chunks so streaming can be observed.
	execOut []string
	execErr error
	created []sandbox.CreateRequest
	policy  slot.Policy
	// snaps holds snapshots; inUse names those a sandbox depends on.
	snaps map[string]store.Snapshot
	inUse map[string]bool
	// createErr, when set, is what Create returns.
	createErr error
	// files is the fake guest's file system: path to contents, nil for a
	// directory.
	files map[string][]byte
	// stdin collects what SendStdin delivered, by pid.
	stdin map[uint32][]byte
	// outLimit, when set, is the server's ExecOutputLimit.
	outLimit int
	// execFn, when set, is the whole of Exec.
	execFn func(ctx context.Context, stdout io.Writer) (sandbox.ExecResult, error)
	// addressed lists the sandboxes Address was asked for, in order.
	addressed []string
}

func (f *fakeSandboxes) Create(ctx context.Context, req sandbox.CreateRequest) (store.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req)
	if f.createErr != nil {
		return store.Sandbox{}, f.createErr
	}
	if req.Template == "full" {
		return store.Sandbox{}, &sandbox.CapacityError{Resource: "memory", Need: 320, Free: 100, RetryAfter: 2500 * time.Millisecond}
	}
	if req.Template != "base" && req.Template != "" {
		return store.Sandbox{}, fmt.Errorf("template %q: %w", req.Template, sandbox.ErrTemplateNotFound)
	}
	if req.VCPUs > 32 {
		return store.Sandbox{}, &sandbox.InvalidError{Field: "vcpus", Reason: "must be between 1 and 32"}
	}
	r := store.Sandbox{ID: "sb1", State: sandbox.StateRunning, Template: "base", VCPUs: 1, MemoryMiB: 256,
		CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Minute), TimingsMS: map[string]float64{"total": 5}}
	f.recs[r.ID] = r
	return r, nil
}

func (f *fakeSandboxes) Get(id string) (store.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recs[id]
	if !ok {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: %w", id, sandbox.ErrNotFound)
	}
	return r, nil
}

func (f *fakeSandboxes) List() []store.Sandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Sandbox
	for _, r := range f.recs {
		out = append(out, r)
	}
	return out
}

func (f *fakeSandboxes) Destroy(ctx context.Context, id string) error {
	if _, err := f.Get(id); err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.recs, id)
	f.mu.Unlock()
	return nil
}

func (f *fakeSandboxes) SetNetwork(ctx context.Context, id string, pol slot.Policy) (store.Sandbox, error) {
	r, err := f.Get(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.policy = pol
	r.Network.Internet = pol.Internet
	for _, a := range pol.Allow {
		r.Network.Allow = append(r.Network.Allow, a.String())
	}
	f.recs[id] = r
	return r, nil
}

func (f *fakeSandboxes) Address(id string) (netip.Addr, error) {
	f.mu.Lock()
	f.addressed = append(f.addressed, id)
	f.mu.Unlock()
	r, err := f.Get(id)
	if err != nil {
		return netip.Addr{}, err
	}
	if r.State != sandbox.StateRunning {
		return netip.Addr{}, fmt.Errorf("sandbox %s: %w", id, sandbox.ErrConflict)
	}
	return netip.MustParseAddr("127.0.0.1"), nil
}

func (f *fakeSandboxes) Exec(ctx context.Context, id string, req sandbox.ExecRequest, stdout, stderr io.Writer) (sandbox.ExecResult, error) {
	if req.Cmd == "" {
		return sandbox.ExecResult{}, &sandbox.InvalidError{Field: "cmd", Reason: "must not be empty"}
	}
	if _, err := f.Get(id); err != nil {
		return sandbox.ExecResult{}, err
	}
	if f.execErr != nil {
		return sandbox.ExecResult{}, f.execErr
	}
	if f.execFn != nil {
		return f.execFn(ctx, stdout)
	}
	if req.Started != nil {
		req.Started(42)
	}
	for i, chunk := range f.execOut {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		io.WriteString(stdout, chunk)
	}
	fmt.Fprint(stderr, "warn")
	return sandbox.ExecResult{ExitCode: 3, Duration: time.Millisecond}, nil
}

type fakeTemplates struct{}

func (fakeTemplates) List() ([]template.Template, error) {
	return []template.Template{{Name: "base", KernelBytes: 10, RootfsBytes: 20, RootfsSizeBytes: 1 << 30}}, nil
}

const key = "secret"

func newServer(t *testing.T, f *fakeSandboxes) (*httptest.Server, *client.Client) {
	t.Helper()
	return newServerWith(t, f, nil)
}

// newServerWith is newServer with its config adjusted by tune.
func newServerWith(t *testing.T, f *fakeSandboxes, tune func(*Config)) (*httptest.Server, *client.Client) {
	t.Helper()
	if f.recs == nil {
		f.recs = map[string]store.Sandbox{}
	}
	info := func() wire.Info { return wire.Info{VMM: "qemu"} }
	cfg := Config{APIKey: func() string { return key }, Domain: "sb.test", Info: info, ExecOutputLimit: f.outLimit}
	if tune != nil {
		tune(&cfg)
	}
	srv := httptest.NewServer(New(cfg, f, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil))))
	t.Cleanup(srv.Close)
	return srv, client.New(srv.URL, key)
}

func TestErrorsCarryStableCodes(t *testing.T) {
	srv, _ := newServer(t, &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}})
	cases := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"no key", "GET", "/v1/sandboxes", "", "", 401, "unauthorized"},
		{"bad key", "GET", "/v1/sandboxes", "nope", "", 401, "unauthorized"},
		{"unknown template", "POST", "/v1/sandboxes", key, `{"template":"nope"}`, 404, "template_not_found"},
		{"absurd vcpus", "POST", "/v1/sandboxes", key, `{"vcpus":1000}`, 400, "invalid_argument"},
		{"malformed vcpus", "POST", "/v1/sandboxes", key, `{"vcpus":"two"}`, 400, "invalid_json"},
		{"unknown field", "POST", "/v1/sandboxes", key, `{"memory_mb":256}`, 400, "invalid_json"},
		{"empty body", "POST", "/v1/sandboxes", key, ``, 400, "invalid_json"},
		{"trailing data", "POST", "/v1/sandboxes", key, `{} {}`, 400, "invalid_json"},
		{"unknown id", "GET", "/v1/sandboxes/nope", key, "", 404, "sandbox_not_found"},
		{"delete unknown id", "DELETE", "/v1/sandboxes/nope", key, "", 404, "sandbox_not_found"},
		{"exec unknown id", "POST", "/v1/sandboxes/nope/exec", key, `{"cmd":"ls"}`, 404, "sandbox_not_found"},
		{"empty command", "POST", "/v1/sandboxes/sb1/exec", key, `{"cmd":""}`, 400, "invalid_argument"},
		{"empty command streamed", "POST", "/v1/sandboxes/sb1/exec/stream", key, `{"cmd":""}`, 400, "invalid_argument"},
		{"negative exec timeout", "POST", "/v1/sandboxes/sb1/exec", key, `{"cmd":"ls","timeout_s":-1}`, 400, "invalid_argument"},
		{"no such endpoint", "GET", "/v2/whatever", key, "", 404, "not_found"},
		{"malformed allow prefix", "POST", "/v1/sandboxes", key, `{"network":{"allow":["10.0.0.0/33"]}}`, 400, "invalid_argument"},
		{"policy of unknown id", "PUT", "/v1/sandboxes/nope/network", key, `{"internet":false}`, 404, "sandbox_not_found"},
		{"malformed deny prefix", "PUT", "/v1/sandboxes/sb1/network", key, `{"deny":["nonsense"]}`, 400, "invalid_argument"},
		{"wrong method", "PUT", "/v1/sandboxes", key, "", 404, "not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantError(t, srv, tc.method, tc.path, tc.key, tc.body, tc.status, tc.code)
		})
	}
}

// wantError sends a request and checks its status and error code.
func wantError(t *testing.T, srv *httptest.Server, method, path, apiKey, body string, status int, code string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if apiKey != "" {
		req.Header.Set("X-API-Key", apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatalf("error body is not JSON: %v", err)
	}
	if resp.StatusCode != status || e.Code != code || e.Message == "" {
		t.Fatalf("got %d %+v, want %d %s with a message", resp.StatusCode, e, status, code)
	}
}

func TestSandboxLifecycleThroughClient(t *testing.T) {
	f := &fakeSandboxes{execOut: []string{"hello\n"}}
	_, c := newServer(t, f)
	ctx := context.Background()
	sb, err := c.CreateSandbox(ctx, wire.CreateSandboxRequest{Template: "base", VCPUs: 2, MemoryMiB: 512, TimeoutS: 30,
		Env: map[string]string{"A": "b"}, Metadata: map[string]string{"k": "v"}, AutoPause: true, AutoResume: true, PrivateTraffic: true})
	if err != nil {
		t.Fatal(err)
	}
	if sb.ID != "sb1" || sb.State != "running" || sb.TimingsMS["total"] != 5 {
		t.Fatalf("created %+v", sb)
	}
	got := f.created[0]
	if got.VCPUs != 2 || got.MemoryMiB != 512 || got.TimeoutS != 30 || got.Env["A"] != "b" || got.Metadata["k"] != "v" ||
		!got.AutoResume || !got.PrivateTraffic {
		t.Fatalf("manager got %+v", got)
	}
	list, err := c.ListSandboxes(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	res, err := c.Exec(ctx, sb.ID, wire.ExecRequest{Cmd: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "hello\n" || string(res.Stderr) != "warn" || res.ExitCode != 3 || res.Truncated {
		t.Fatalf("exec: %+v", res)
	}
	off := false
	sb2, err := c.SetNetwork(ctx, sb.ID, wire.NetworkPolicy{Internet: &off, Allow: []string{"198.18.0.0/15"}})
	if err != nil {
		t.Fatal(err)
	}
	if f.policy.Internet || len(f.policy.Allow) != 1 || f.policy.Allow[0].String() != "198.18.0.0/15" {
		t.Fatalf("manager got policy %+v", f.policy)
	}
	if *sb2.Network.Internet || sb2.Network.Allow[0] != "198.18.0.0/15" {
		t.Fatalf("response policy %+v", sb2.Network)
	}
	tpls, err := c.ListTemplates(ctx)
	if err != nil || len(tpls) != 1 || tpls[0].DiskMiB != 1024 || tpls[0].RootfsBytes != 20 {
		t.Fatalf("templates: %+v %v", tpls, err)
	}
	if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSandbox(ctx, sb.ID); !client.IsCode(err, "sandbox_not_found") {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestExecStreamDeliversOutputAsProduced(t *testing.T) {
	f := &fakeSandboxes{execOut: []string{"one\n", "two\n"}, recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}}
	_, c := newServer(t, f)
	pr, pw := io.Pipe()
	type result struct {
		res wire.ExecResult
		err error
	}
	done := make(chan result, 1)
	var stderr strings.Builder
	go func() {
		res, err := c.ExecStream(context.Background(), "sb1", wire.ExecRequest{Cmd: "x"}, pw, &stderr)
		pw.Close()
		done <- result{res, err}
	}()
	buf := make([]byte, 16)
	n, err := pr.Read(buf)
	if err != nil || string(buf[:n]) != "one\n" {
		t.Fatalf("first chunk %q, %v", buf[:n], err)
	}
	select {
	case <-done:
		t.Fatal("stream ended before the second chunk: output was not streamed")
	default:
	}
	rest, _ := io.ReadAll(pr)
	r := <-done
	if r.err != nil || string(rest) != "two\n" || r.res.ExitCode != 3 || stderr.String() != "warn" {
		t.Fatalf("rest %q, result %+v, stderr %q", rest, r, stderr.String())
	}
}

func TestExecStreamReportsErrorsAfterStart(t *testing.T) {
	f := &fakeSandboxes{execErr: fmt.Errorf("x: %w", sandbox.ErrExecTimeout),
		recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}}
	_, c := newServer(t, f)
	_, err := c.ExecStream(context.Background(), "sb1", wire.ExecRequest{Cmd: "x"}, io.Discard, io.Discard)
	if !client.IsCode(err, "exec_timeout") {
		t.Fatalf("err = %v, want exec_timeout", err)
	}
	_, err = c.Exec(context.Background(), "sb1", wire.ExecRequest{Cmd: "x"})
	var ae *client.APIError
	if !client.IsCode(err, "exec_timeout") || !asAPIError(err, &ae) || ae.Status != http.StatusGatewayTimeout {
		t.Fatalf("err = %v, want 504 exec_timeout", err)
	}
}

func asAPIError(err error, target **client.APIError) bool {
	ae, ok := err.(*client.APIError)
	*target = ae
	return ok
}

func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	srv, _ := newServer(t, &fakeSandboxes{})
	resp, err := http.Get(srv.URL + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	doc, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	routes := []struct{ path, method string }{
		{"/health", "get"}, {"/openapi.yaml", "get"}, {"/v1/info", "get"}, {"/v1/templates", "get"}, {"/v1/templates", "post"},
		{"/v1/templates/{name}", "delete"},
		{"/v1/sandboxes", "get"}, {"/v1/sandboxes", "post"}, {"/v1/sandboxes/{id}", "get"},
		{"/v1/sandboxes/{id}", "delete"}, {"/v1/sandboxes/{id}/network", "put"}, {"/v1/sandboxes/{id}/exec", "post"}, {"/v1/sandboxes/{id}/exec/stream", "post"},
		{"/v1/sandboxes/{id}/pause", "post"}, {"/v1/sandboxes/{id}/resume", "post"}, {"/v1/sandboxes/{id}/timeout", "post"},
		{"/v1/sandboxes/{id}/fork", "post"}, {"/v1/snapshots", "get"}, {"/v1/snapshots", "post"},
		{"/v1/snapshots/{name}", "get"}, {"/v1/snapshots/{name}", "delete"},
		{"/metrics", "get"}, {"/v1/events", "get"}, {"/v1/sandboxes/{id}/metrics", "get"},
		{"/v1/warm", "get"}, {"/v1/templates/{name}/warm", "put"},
		{"/v1/sandboxes/{id}/processes/{pid}/stdin", "post"}, {"/v1/sandboxes/{id}/processes/{pid}/close-stdin", "post"},
		{"/v1/sandboxes/{id}/files", "get"}, {"/v1/sandboxes/{id}/files", "put"}, {"/v1/sandboxes/{id}/files", "delete"},
		{"/v1/sandboxes/{id}/files/list", "get"}, {"/v1/sandboxes/{id}/files/stat", "get"},
		{"/v1/sandboxes/{id}/files/mkdir", "post"}, {"/v1/sandboxes/{id}/files/move", "post"},
		{"/v1/sandboxes/{id}/pty", "get"},
	}
	paths := openapiPaths(string(doc))
	for _, r := range routes {
		if !paths[r.path][r.method] {
			t.Errorf("openapi.yaml lacks %s %s", strings.ToUpper(r.method), r.path)
		}
	}
}

// openapiPaths reads the paths section's two top levels (path, method) by
// indentation: enough to check coverage without a YAML dependency.
func openapiPaths(doc string) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	in := false
	var cur string
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case line == "paths:":
			in = true
		case in && line != "" && !strings.HasPrefix(line, " "):
			return out
		case in && strings.HasPrefix(line, "  /"):
			cur = strings.TrimSuffix(strings.TrimSpace(line), ":")
			out[cur] = map[string]bool{}
		case in && strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     "):
			out[cur][strings.TrimSuffix(strings.TrimSpace(line), ":")] = true
		}
	}
	return out
}

func TestTestPageServedWithoutKey(t *testing.T) {
	srv, _ := newServer(t, &fakeSandboxes{})
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/test" || !strings.Contains(string(body), "/v1/sandboxes") {
		t.Fatalf("GET / → %d %s, %d bytes", resp.StatusCode, resp.Request.URL.Path, len(body))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("content type %q", ct)
	}
}

// A rotated key is in force on the next request: the old one is refused,
// the new one accepted, with no restart between.
func TestRotatedKeyInForceAtOnce(t *testing.T) {
	var mu sync.Mutex
	current := "first"
	keyOf := func() string { mu.Lock(); defer mu.Unlock(); return current }
	srv := httptest.NewServer(New(Config{APIKey: keyOf, Info: func() wire.Info { return wire.Info{} }},
		&fakeSandboxes{recs: map[string]store.Sandbox{}}, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil))))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	if _, err := client.New(srv.URL, "first").ListSandboxes(ctx); err != nil {
		t.Fatalf("first key: %v", err)
	}
	mu.Lock()
	current = "second"
	mu.Unlock()
	if _, err := client.New(srv.URL, "first").ListSandboxes(ctx); !client.IsCode(err, "unauthorized") {
		t.Fatalf("old key after rotation: %v", err)
	}
	if _, err := client.New(srv.URL, "second").ListSandboxes(ctx); err != nil {
		t.Fatalf("new key: %v", err)
	}
}

// A create the daemon cannot honour is a 429 with the wait, at once.
func TestCapacityExhaustedIs429WithRetryAfter(t *testing.T) {
	srv, _ := newServer(t, &fakeSandboxes{})
	req, _ := http.NewRequest("POST", srv.URL+"/v1/sandboxes", strings.NewReader(`{"template":"full"}`))
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != 429 || e.Code != "capacity_exhausted" || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("got %d %+v Retry-After %q", resp.StatusCode, e, resp.Header.Get("Retry-After"))
	}
	_, err = client.New(srv.URL, key).CreateSandbox(context.Background(), client.CreateSandboxRequest{Template: "full"})
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Code != "capacity_exhausted" || ae.RetryAfter != 3*time.Second {
		t.Fatalf("sdk: %v", err)
	}
}
