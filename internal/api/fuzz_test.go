package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/wire"
)

// fuzzRoutes are the API's requests that carry a body, a path value or a
// query; {} is where the fuzzed path value goes.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/v1/sandboxes"},
	{"GET", "/v1/sandboxes/{}"},
	{"DELETE", "/v1/sandboxes/{}"},
	{"PUT", "/v1/sandboxes/{}/network"},
	{"POST", "/v1/sandboxes/{}/exec"},
	{"POST", "/v1/sandboxes/{}/exec/stream"},
	{"POST", "/v1/sandboxes/{}/pause"},
	{"POST", "/v1/sandboxes/{}/resume"},
	{"POST", "/v1/sandboxes/{}/timeout"},
	{"POST", "/v1/sandboxes/{}/fork"},
	{"GET", "/v1/snapshots/{}"},
	{"POST", "/v1/snapshots"},
	{"DELETE", "/v1/snapshots/{}"},
	{"GET", "/v1/sandboxes"},
	{"GET", "/{}"},
}

// FuzzRequests sends the API every kind of request with a fuzzed path
// value, query and body: each gets a JSON error with a stable code or a
// success, never a 5xx, never a panic.
func FuzzRequests(f *testing.F) {
	for i := range fuzzRoutes {
		f.Add(uint8(i), "sb1", "", []byte(`{}`))
	}
	for _, body := range []string{
		`{"template":"base","vcpus":1,"memory_mib":256,"env":{"A":"b"},"network":{"internet":false,"allow":["10.0.0.0/8"],"deny":["1.2.3.4/32"]}}`,
		`{"limits":{"cpus":0.5,"memory_mib":300,"pids":64,"io_weight":10}}`,
		`{"cmd":"/bin/sh","args":["-c","echo hi"],"stdin":"x","timeout_s":5}`,
		`{"network":{"allow":["not a prefix"]}}`, `{"allow":["::/0"],"deny":["300.1.1.1/8"]}`,
		`{"timeout_s":-1}`, `{"count":1000000}`, `{"sandbox":"sb1","name":"../../etc"}`,
		`{"vcpus":1e99}`, `{"unknown":1}`, `{} {}`, `[`, "\x00", `{"env":{"":"x","A=B":"y"}}`,
	} {
		f.Add(uint8(0), "sb1", "", []byte(body))
		f.Add(uint8(3), "sb1", "", []byte(body))
		f.Add(uint8(4), "sb1", "", []byte(body))
	}
	for _, id := range []string{"..", "%2e%2e", "a/b", "x\x00y", strings.Repeat("a", 4096), "sb1?x=1", "ü"} {
		f.Add(uint8(1), id, "a=b&c", []byte(nil))
	}
	f.Fuzz(func(t *testing.T, route uint8, value, query string, body []byte) {
		r := fuzzRoutes[int(route)%len(fuzzRoutes)]
		fake := &fakeSandboxes{recs: map[string]store.Sandbox{
			// Paused: the proxy and exec find it, but no request is sent
			// anywhere.
			"sb1": {ID: "sb1", State: sandbox.StatePaused, CreatedAt: time.Now(), ExpiresAt: time.Now()},
		}}
		srv := New(Config{APIKey: func() string { return key }, Domain: "sb.test", Info: func() wire.Info { return wire.Info{} }},
			fake, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		target := strings.Replace(r.path, "{}", url.PathEscape(value), 1)
		if query != "" {
			target += "?" + url.QueryEscape(query)
		}
		req, err := http.NewRequest(r.method, "http://127.0.0.1"+target, strings.NewReader(string(body)))
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("X-API-Key", key)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q: %d %s", r.method, target, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 {
			var e wire.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("%s %s: %d with no stable error code: %q", r.method, target, rec.Code, rec.Body)
			}
		}
	})
}

// FuzzProxyRouting routes requests by fuzzed Host and E2B headers: each
// is the API's, or a sandbox port's with a clear error when there is no
// such sandbox or port; never a panic, no request sent, and no 5xx but the
// 502 E2B's SDKs read as "not running" for a sandbox that is not.
func FuzzProxyRouting(f *testing.F) {
	for _, seed := range [][3]string{
		{"8080-sb1.sb.test", "", ""}, {"8080-sb1.sb.test:7070", "", ""}, {"127.0.0.1", "sb1", "8080"},
		{"x-y-z.sb.test", "", ""}, {"-.sb.test", "", ""}, {"99999-sb1.sb.test", "", ""},
		{"a.b.sb.test", "", ""}, {"[::1]:80", "nosuch", "0"}, {"", "sb1", "-1"}, {"SB.TEST", "", ""},
		{"8080-sb1.SB.Test.", "", ""}, {"1-\x00.sb.test", "\x00", "65536"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, host, id, port string) {
		// Only running sandboxes are dialled; none runs here.
		fake := &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StatePaused}}}
		srv := New(Config{APIKey: func() string { return key }, Domain: "sb.test", Info: func() wire.Info { return wire.Info{} }},
			fake, fakeTemplates{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		req := httptest.NewRequest("GET", "http://127.0.0.1/health", nil)
		req.Host = host
		if id != "" {
			req.Header.Set(headerSandboxID, id)
			req.Header.Set(headerSandboxPort, port)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusBadGateway {
			t.Fatalf("host %q id %q port %q: %d %s", host, id, port, rec.Code, rec.Body)
		}
	})
}
