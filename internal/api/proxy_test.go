package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/wire"
)

// upstream stands in for a server inside the sandbox: it echoes what it saw,
// and upgrades /ws to a raw echo connection as a WebSocket server would.
func upstream(t *testing.T) (port string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
				http.Error(w, "want upgrade", 400)
				return
			}
			conn, rw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			rw.Flush()
			io.Copy(conn, rw) // echo until the client closes
			return
		}
		fmt.Fprintf(w, "%s %s host=%s", r.Method, r.URL.RequestURI(), r.Host)
	}))
	t.Cleanup(srv.Close)
	_, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// send makes a request with the given Host (unless empty), headers and
// body, and returns the status, the headers and the body of the answer.
func send(t *testing.T, method, url, host string, hdr map[string]string, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func TestProxyRoutesByHostAndHeaders(t *testing.T) {
	port := upstream(t)
	srv, _ := newServer(t, &fakeSandboxes{recs: map[string]store.Sandbox{
		"sb1":    {ID: "sb1", State: sandbox.StateRunning},
		"paused": {ID: "paused", State: "paused"},
	}})
	get := func(host string, hdr map[string]string) (int, string, string) {
		t.Helper()
		status, _, b := send(t, "GET", srv.URL+"/some/path?q=1", host, hdr, "")
		// /v1 errors carry a string code, envd's (E2B's) a number.
		var e struct{ Code any }
		json.Unmarshal(b, &e)
		return status, string(b), fmt.Sprint(e.Code)
	}
	cases := []struct {
		name   string
		host   string
		hdr    map[string]string
		status int
		body   string // prefix of the body for 200, else the error code
	}{
		{"host", port + "-sb1.sb.test", nil, 200, "GET /some/path?q=1 host=" + port + "-sb1.sb.test"},
		{"host with port", port + "-sb1.sb.test:7070", nil, 200, "GET /some/path?q=1"},
		{"headers", "127.0.0.1", map[string]string{headerSandboxID: "sb1", headerSandboxPort: port}, 200, "GET /some/path?q=1"},
		{"unknown sandbox", port + "-nope.sb.test", nil, 404, "sandbox_not_found"},
		{"not running", port + "-paused.sb.test", nil, 409, "invalid_state"},
		{"bad port", "99999-sb1.sb.test", nil, 400, "invalid_port"},
		{"port not a number", "x-sb1.sb.test", nil, 400, "invalid_port"},
		{"missing port header", "127.0.0.1", map[string]string{headerSandboxID: "sb1"}, 400, "400"},
		{"headers, unknown sandbox", "127.0.0.1", map[string]string{headerSandboxID: "nope", headerSandboxPort: port}, 502, "502"},
		{"headers, paused sandbox", "127.0.0.1", map[string]string{headerSandboxID: "paused", headerSandboxPort: port}, 502, "502"},
		{"envd port of a paused sandbox", envdPort + "-paused.sb.test", nil, 502, "502"},
		{"other domain is the API", port + "-sb1.example.com", nil, 404, "not_found"},
		{"nested subdomain is the API", "a." + port + "-sb1.sb.test", nil, 404, "not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body, code := get(tc.host, tc.hdr)
			if status != tc.status {
				t.Fatalf("status %d, want %d (body %s)", status, tc.status, body)
			}
			if status == 200 && !strings.HasPrefix(body, tc.body) {
				t.Fatalf("body %q, want prefix %q", body, tc.body)
			}
			if status != 200 && code != tc.body {
				t.Fatalf("code %q, want %q", code, tc.body)
			}
		})
	}
}

func TestProxyUnreachablePort(t *testing.T) {
	srv, _ := newServer(t, &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}})
	// A port nothing listens on: bind one, close it.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Host = port + "-sb1.sb.test"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != 502 || e.Code != "sandbox_unreachable" {
		t.Fatalf("got %d %+v", resp.StatusCode, e)
	}
}

func TestProxyUpgradesWebSockets(t *testing.T) {
	port := upstream(t)
	srv, _ := newServer(t, &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}})
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s-sb1.sb.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", port)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, msg := range []string{"ping\n", "second frame\n"} {
		if _, err := io.WriteString(conn, msg); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
}
