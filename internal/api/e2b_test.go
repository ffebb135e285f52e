package api

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/api/e2b"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
)

// e2bCall sends an E2B control-plane request as the SDKs do (X-API-KEY,
// JSON) and returns the status, the headers and the body.
func e2bCall(t *testing.T, base, method, path, body, apiKey string) (int, http.Header, []byte) {
	t.Helper()
	hdr := map[string]string{"X-API-KEY": apiKey}
	if body != "" {
		hdr["Content-Type"] = "application/json"
	}
	return send(t, method, base+path, "", hdr, body)
}

// TestE2BControlPlane drives the facade's routes as E2B's SDKs call them:
// statuses, E2B's numeric error codes and the fields the SDKs read.
func TestE2BControlPlane(t *testing.T) {
	now := time.Now()
	f := &fakeSandboxes{recs: map[string]store.Sandbox{
		"run1": {ID: "run1", State: sandbox.StateRunning, Template: "base", Token: "tok1", VCPUs: 2, MemoryMiB: 512,
			Metadata: map[string]string{"app": "a b", "team": "x"}, CreatedAt: now.Add(-3 * time.Second), ExpiresAt: now.Add(time.Hour)},
		"run2": {ID: "run2", State: sandbox.StateRunning, Template: "base", Token: "tok2",
			Metadata: map[string]string{"app": "other"}, CreatedAt: now.Add(-2 * time.Second), ExpiresAt: now.Add(time.Minute)},
		"paused1": {ID: "paused1", State: sandbox.StatePaused, Template: "base", Token: "tok3", AutoPause: true, AutoResume: true,
			CreatedAt: now.Add(-time.Second), ExpiresAt: now.Add(time.Minute)},
		"failed1": {ID: "failed1", State: sandbox.StateError, Error: "vmm process exited unexpectedly", CreatedAt: now},
	}}
	srv, _ := newServer(t, f)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	type check func(t *testing.T, h http.Header, body []byte)
	field := func(name string, want any) check {
		return func(t *testing.T, _ http.Header, body []byte) {
			var m map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			if got := fmt.Sprint(m[name]); got != fmt.Sprint(want) {
				t.Errorf("%s = %s, want %v (body %s)", name, got, want, body)
			}
		}
	}
	ids := func(want ...string) check {
		return func(t *testing.T, _ http.Header, body []byte) {
			var l []e2b.ListedSandbox
			if err := json.Unmarshal(body, &l); err != nil {
				t.Fatalf("body %s: %v", body, err)
			}
			var got []string
			for _, s := range l {
				got = append(got, s.SandboxID)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("listed %v, want %v", got, want)
			}
		}
	}
	cases := []struct {
		name, method, path, body string
		key                      string // "" is the right one
		status                   int
		checks                   []check
	}{
		{name: "wrong key", method: "GET", path: "/v2/sandboxes", key: "guess", status: 401, checks: []check{field("code", 401)}},
		{name: "create", method: "POST", path: "/v2/sandboxes", body: `{"templateID":"base","timeout":30,"metadata":{"k":"v"},"envVars":{"A":"1"}}`,
			status: 201, checks: []check{field("sandboxID", "sb1"), field("templateID", "base"), field("envdVersion", proto.EnvdVersion),
				field("domain", "sb.test:"+port), field("trafficAccessToken", nil)}},
		{name: "create, no body fields", method: "POST", path: "/v2/sandboxes", body: `{}`, status: 201},
		{name: "create, the 1.x way", method: "POST", path: "/sandboxes", body: `{"templateID":"base","timeout":15,"secure":true,"autoPause":false,"allow_internet_access":true}`,
			status: 201, checks: []check{field("sandboxID", "sb1")}},
		{name: "create, unknown template", method: "POST", path: "/v2/sandboxes", body: `{"templateID":"nope"}`, status: 404, checks: []check{field("code", 404)}},
		{name: "create, unknown field", method: "POST", path: "/v2/sandboxes", body: `{"templateID":"base","gpu":true}`,
			status: 400, checks: []check{field("code", 400), field("message", `request body: json: unknown field "gpu"`)}},
		{name: "create, mcp", method: "POST", path: "/v2/sandboxes", body: `{"templateID":"base","mcp":{"x":{}}}`, status: 501, checks: []check{field("code", 501)}},
		{name: "create, domain names", method: "POST", path: "/v2/sandboxes", body: `{"templateID":"base","network":{"allowOut":["example.com"]}}`, status: 501},
		{name: "create, autoResume without autoPause", method: "POST", path: "/v2/sandboxes", body: `{"templateID":"base","autoResume":{"enabled":true}}`, status: 400},
		// The creates above made sb1, the newest.
		{name: "info", method: "GET", path: "/sandboxes/run1", status: 200, checks: []check{field("state", "running"), field("cpuCount", 2),
			field("memoryMB", 512), field("envdAccessToken", "tok1"), field("lifecycle", map[string]any{"autoResume": false, "onTimeout": "kill"})}},
		{name: "info, paused", method: "GET", path: "/sandboxes/paused1", status: 200, checks: []check{field("state", "paused"),
			field("lifecycle", map[string]any{"autoResume": true, "onTimeout": "pause"})}},
		{name: "info, unknown", method: "GET", path: "/sandboxes/nope", status: 404, checks: []check{field("code", 404)}},
		{name: "info, failed is gone", method: "GET", path: "/sandboxes/failed1", status: 404, checks: []check{field("code", 404)}},
		{name: "list, running and paused by default, newest first", method: "GET", path: "/v2/sandboxes", status: 200, checks: []check{ids("sb1", "paused1", "run2", "run1")}},
		{name: "list, oldest first", method: "GET", path: "/v2/sandboxes?order=asc&state=running", status: 200, checks: []check{ids("run1", "run2", "sb1")}},
		{name: "list, by metadata", method: "GET", path: "/v2/sandboxes?metadata=" + url.QueryEscape("app=a%2520b&team=x"), status: 200, checks: []check{ids("run1")}},
		{name: "list, paused", method: "GET", path: "/v2/sandboxes?state=paused", status: 200, checks: []check{ids("paused1")}},
		{name: "list, bad state", method: "GET", path: "/v2/sandboxes?state=dead", status: 400, checks: []check{field("code", 400)}},
		{name: "list, first page", method: "GET", path: "/v2/sandboxes?limit=2", status: 200, checks: []check{ids("sb1", "paused1"),
			func(t *testing.T, h http.Header, _ []byte) {
				if h.Get("X-Next-Token") == "" {
					t.Error("no x-next-token on a page with more after it")
				}
			}}},
		{name: "list, 1.x: running only", method: "GET", path: "/sandboxes", status: 200, checks: []check{ids("run1", "run2", "sb1")}},
		{name: "timeout", method: "POST", path: "/sandboxes/run2/timeout", body: `{"timeout":600}`, status: 204},
		{name: "timeout, paused", method: "POST", path: "/sandboxes/paused1/timeout", body: `{"timeout":600}`, status: 409, checks: []check{field("code", 409)}},
		{name: "timeout, unknown", method: "POST", path: "/sandboxes/nope/timeout", body: `{"timeout":600}`, status: 404, checks: []check{field("code", 404)}},
		{name: "pause, memory false", method: "POST", path: "/sandboxes/run2/pause", body: `{"memory":false}`, status: 501},
		{name: "pause, already paused", method: "POST", path: "/sandboxes/paused1/pause", body: `{}`, status: 409, checks: []check{field("code", 409)}},
		{name: "resume, running", method: "POST", path: "/sandboxes/run2/resume", body: `{"timeout":60,"autoPause":false}`, status: 409, checks: []check{field("code", 409)}},
		{name: "connect, running", method: "POST", path: "/v2/sandboxes/run1/connect", body: `{}`, status: 200, checks: []check{field("envdAccessToken", "tok1")}},
		{name: "connect, paused resumes", method: "POST", path: "/v2/sandboxes/paused1/connect", body: `{"timeout":60}`, status: 201, checks: []check{field("envdAccessToken", "tok3")}},
		{name: "connect, unknown", method: "POST", path: "/v2/sandboxes/nope/connect", body: `{}`, status: 404, checks: []check{field("code", 404)}},
		{name: "metrics", method: "GET", path: "/sandboxes/run1/metrics?start=0", status: 200},
		{name: "network, update", method: "PUT", path: "/sandboxes/run1/network", body: `{"allow_internet_access":false,"allowOut":["10.0.0.0/8"]}`, status: 204},
		{name: "snapshot", method: "POST", path: "/sandboxes/run1/snapshots", body: `{"name":"snap1"}`, status: 201, checks: []check{field("snapshotID", "snap1")}},
		{name: "snapshots", method: "GET", path: "/snapshots?sandboxID=run1", status: 200},
		{name: "snapshot delete", method: "DELETE", path: "/templates/snap1", status: 204},
		{name: "snapshot delete, gone", method: "DELETE", path: "/templates/snap1", status: 404, checks: []check{field("code", 404)}},
		{name: "template delete is the build API", method: "DELETE", path: "/templates/base", status: 501, checks: []check{field("code", 501)}},
		{name: "fork", method: "POST", path: "/sandboxes/run1/fork", body: `{"count":1}`, status: 201},
		{name: "volumes", method: "GET", path: "/volumes", status: 501, checks: []check{field("message", "volumes are not served")}},
		{name: "template build", method: "POST", path: "/v3/templates", body: `{}`, status: 501},
		{name: "kill", method: "DELETE", path: "/sandboxes/run2", status: 204},
		{name: "kill, gone", method: "DELETE", path: "/sandboxes/run2", status: 404, checks: []check{field("code", 404)}},
		{name: "kill, failed", method: "DELETE", path: "/sandboxes/failed1", status: 204},
		{name: "/v1 keeps its string codes", method: "GET", path: "/v1/sandboxes/nope", status: 404, checks: []check{field("code", "sandbox_not_found")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := key
			if tc.key != "" {
				k = tc.key
			}
			status, h, body := e2bCall(t, srv.URL, tc.method, tc.path, tc.body, k)
			if status != tc.status {
				t.Fatalf("status %d, want %d (body %s)", status, tc.status, body)
			}
			for _, c := range tc.checks {
				c(t, h, body)
			}
		})
	}
	// What the creates asked the manager for.
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.created) < 3 {
		t.Fatalf("created %+v", f.created)
	}
	if c := f.created[0]; c.Template != "" || c.TimeoutS != 30 || c.Env["A"] != "1" || c.Metadata["k"] != "v" || c.Network != nil {
		t.Errorf("create asked for %+v", c)
	}
	if c := f.created[1]; c.TimeoutS != 300 {
		t.Errorf("a create naming no timeout asked for %d s, want E2B's 300", c.TimeoutS)
	}
	if c := f.created[2]; c.TimeoutS != 15 || c.Network == nil || !c.Network.Internet {
		t.Errorf("the 1.x create asked for %+v", c)
	}
}

// TestE2BPaginationWalksEveryPage: following X-Next-Token lists every
// sandbox once.
func TestE2BPaginationWalksEveryPage(t *testing.T) {
	f := &fakeSandboxes{recs: map[string]store.Sandbox{}}
	now := time.Now()
	for i := range 7 {
		id := fmt.Sprintf("sb%d", i)
		f.recs[id] = store.Sandbox{ID: id, State: sandbox.StateRunning, CreatedAt: now.Add(time.Duration(i) * time.Second)}
	}
	srv, _ := newServer(t, f)
	seen := map[string]int{}
	token := ""
	for pages := 0; ; pages++ {
		if pages > 7 {
			t.Fatal("pagination does not end")
		}
		path := "/v2/sandboxes?limit=3"
		if token != "" {
			path += "&nextToken=" + url.QueryEscape(token)
		}
		status, h, body := e2bCall(t, srv.URL, "GET", path, "", key)
		if status != 200 {
			t.Fatalf("status %d: %s", status, body)
		}
		var l []e2b.ListedSandbox
		json.Unmarshal(body, &l)
		for _, s := range l {
			seen[s.SandboxID]++
		}
		if token = h.Get("X-Next-Token"); token == "" {
			break
		}
	}
	if len(seen) != 7 {
		t.Fatalf("seen %v", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s listed %d times", id, n)
		}
	}
	if status, _, _ := e2bCall(t, srv.URL, "GET", "/v2/sandboxes?nextToken=%25%25", "", key); status != 400 {
		t.Errorf("a bad token: %d, want 400", status)
	}
}

// TestProxyForE2B covers what the port proxy does for E2B's clients: a
// signed /files URL reaches the sandbox whose token signed it, a private
// sandbox's ports need its traffic token (the agent's port does not), and
// a paused sandbox with auto-resume is resumed by the request.
func TestProxyForE2B(t *testing.T) {
	port := upstream(t)
	f := &fakeSandboxes{recs: map[string]store.Sandbox{
		"sb1":     {ID: "sb1", State: sandbox.StateRunning, Token: "tok1"},
		"sb2":     {ID: "sb2", State: sandbox.StateRunning, Token: "tok2"},
		"private": {ID: "private", State: sandbox.StateRunning, Token: "tok3", TrafficToken: "traffic"},
		"sleepy":  {ID: "sleepy", State: sandbox.StatePaused, Token: "tok4", AutoResume: true},
		"dozing":  {ID: "dozing", State: sandbox.StatePausing, Token: "tok6", AutoResume: true},
		"paused":  {ID: "paused", State: sandbox.StatePaused, Token: "tok5"},
	}}
	srv, _ := newServer(t, f)
	sign := func(path, op, token string) string {
		sum := sha256.Sum256([]byte(path + ":" + op + ":" + ":" + token))
		return "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
	}
	do := func(method, target, host string, hdr map[string]string) (int, string) {
		t.Helper()
		status, _, b := send(t, method, srv.URL+target, host, hdr, "")
		return status, string(b)
	}
	// The upstream listens on a port of its own, not 49983: route signed
	// URLs by header-free request, then check which sandbox was chosen by
	// the fake's address lookups.
	cases := []struct {
		name, method, target, host string
		hdr                        map[string]string
		status                     int
	}{
		{"private without its token", "GET", "/", port + "-private.sb.test", nil, 403},
		{"private with its token", "GET", "/", port + "-private.sb.test", map[string]string{headerTrafficToken: "traffic"}, 200},
		{"private, wrong token", "GET", "/", port + "-private.sb.test", map[string]string{headerTrafficToken: "guess"}, 403},
		{"auto-resume", "GET", "/", port + "-sleepy.sb.test", nil, 200},
		{"auto-resume behind a pause in progress", "GET", "/", port + "-dozing.sb.test", nil, 200},
		{"paused without auto-resume", "GET", "/", port + "-paused.sb.test", nil, 409},
		{"signature of no sandbox", "GET", "/files?path=/a&signature=" + sign("/a", "read", "nobody's"), "", nil, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if status, body := do(tc.method, tc.target, tc.host, tc.hdr); status != tc.status {
				t.Fatalf("status %d, want %d (%s)", status, tc.status, body)
			}
		})
	}
	if r, _ := f.Get("sleepy"); r.State != sandbox.StateRunning {
		t.Errorf("auto-resume left the sandbox %s", r.State)
	}
	// A signed URL is routed to the sandbox that signed it: the proxy
	// asks for that sandbox's address (and nothing listens on 49983 here,
	// so the answer is the proxy's 502 after routing).
	for _, id := range []string{"sb1", "sb2"} {
		tok := map[string]string{"sb1": "tok1", "sb2": "tok2"}[id]
		f.mu.Lock()
		f.addressed = nil
		f.mu.Unlock()
		for _, op := range []struct{ method, op string }{{"GET", "read"}, {"POST", "write"}} {
			do(op.method, "/files?path=%2Fhome%2Fuser%2Fa.txt&signature="+url.QueryEscape(sign("/home/user/a.txt", op.op, tok)), "", nil)
		}
		f.mu.Lock()
		got := strings.Join(f.addressed, ",")
		f.mu.Unlock()
		if got != id+","+id {
			t.Errorf("signed by %s's token, routed to %q", id, got)
		}
	}
}
