package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/api/e2b"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
)

// Headers that route a request to a sandbox port, as E2B's SDKs send them,
// and the one that carries a private sandbox's traffic token.
const (
	headerSandboxID    = "E2b-Sandbox-Id"
	headerSandboxPort  = "E2b-Sandbox-Port"
	headerTrafficToken = "E2b-Traffic-Access-Token"
)

// envdPort is the agent's port in every sandbox (envd's): traffic to it is
// envd's, answered in envd's shape, and guarded by the agent's own token.
const envdPort = "49983"

// Addresser finds where the host reaches a running sandbox.
type Addresser interface {
	Address(id string) (netip.Addr, error)
}

// proxied is the manager as the port proxy uses it: where a sandbox is,
// its record (state, auto-resume, traffic token), every record (to route
// a signed URL) and resume (auto-resume).
type proxied interface {
	Addresser
	Get(id string) (store.Sandbox, error)
	List() []store.Sandbox
	Resume(ctx context.Context, id string) (store.Sandbox, error)
}

// proxy forwards HTTP (WebSocket upgrades included) to a port inside a
// sandbox. A request is for a sandbox when its Host is
// <port>-<sandbox-id>.<domain>, when it carries the E2b-Sandbox-Id and
// E2b-Sandbox-Port headers, or when it is a signed /files URL (which names
// no sandbox: its signature, made with one sandbox's access token, does);
// everything else is the API's.
type proxy struct {
	domain string
	sbs    proxied
	log    *slog.Logger
	rp     *httputil.ReverseProxy
}

// targetKey carries the chosen upstream from route to Rewrite.
type targetKey struct{}

func newProxy(domain string, sbs proxied, log *slog.Logger) *proxy {
	p := &proxy{domain: strings.ToLower(strings.TrimPrefix(domain, ".")), sbs: sbs, log: log}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, upstreamAddr(addr))
		},
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       60 * time.Second,
		ResponseHeaderTimeout: 0, // long polls and streams are the point
	}
	p.rp = &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(r *httputil.ProxyRequest) {
			target := r.In.Context().Value(targetKey{}).(*url.URL)
			r.SetURL(target)
			// The service in the sandbox sees the name the client used.
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		FlushInterval: -1, // stream every write: exec output, SSE, chunked replies
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, http.StatusBadGateway, "sandbox_unreachable",
				fmt.Sprintf("nothing answered on the sandbox port: %v", errors.Unwrap(err)))
		},
	}
	return p
}

// route is a request for a sandbox port.
type route struct {
	id, port string
	// envd: the request is envd's (sent by an E2B SDK, or to the agent's
	// port): errors come in envd's shape and a sandbox that is not
	// running is a 502, which the SDKs read as "not running".
	envd bool
	// signed: a /files URL routed by its signature; id is found by serve.
	signed bool
}

// route reports which sandbox and port r is for; ok is false for API requests.
func (p *proxy) route(r *http.Request) (route, bool) {
	if id := r.Header.Get(headerSandboxID); id != "" {
		return route{id: id, port: r.Header.Get(headerSandboxPort), envd: true}, true
	}
	if p.domain != "" {
		host := strings.ToLower(r.Host)
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if label, ok := strings.CutSuffix(host, "."+p.domain); ok && !strings.Contains(label, ".") {
			if port, id, ok := strings.Cut(label, "-"); ok {
				return route{id: id, port: port, envd: port == envdPort}, true
			}
		}
	}
	if r.URL.Path == "/files" && r.URL.Query().Get("signature") != "" {
		return route{port: envdPort, envd: true, signed: true}, true
	}
	return route{}, false
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request, s *Server, rt route) {
	port, err := strconv.Atoi(rt.port)
	if err != nil || port < 1 || port > 65535 {
		p.reject(w, rt, http.StatusBadRequest, "invalid_port", fmt.Sprintf("sandbox port %q: want a number from 1 to 65535", rt.port))
		return
	}
	if rt.signed {
		id, ok := p.signer(r)
		if !ok {
			p.reject(w, rt, http.StatusUnauthorized, "invalid_signature", "invalid signature: it was made with no sandbox's access token")
			return
		}
		rt.id = id
	}
	rec, err := p.sbs.Get(rt.id)
	if err != nil {
		p.fail(w, r, s, rt, err)
		return
	}
	if rec.AutoResume && (rec.State == sandbox.StatePaused || rec.State == sandbox.StatePausing) {
		// The request waits for the resume (behind a pause in progress,
		// which holds the sandbox), then goes through.
		if _, err := p.sbs.Resume(r.Context(), rt.id); err != nil && !errors.Is(err, sandbox.ErrNotPaused) {
			p.fail(w, r, s, rt, err)
			return
		}
		if rec, err = p.sbs.Get(rt.id); err != nil {
			p.fail(w, r, s, rt, err)
			return
		}
	}
	if rt.port != envdPort && rec.TrafficToken != "" &&
		subtle.ConstantTimeCompare([]byte(r.Header.Get(headerTrafficToken)), []byte(rec.TrafficToken)) != 1 {
		p.reject(w, rt, http.StatusForbidden, "traffic_token_required",
			"sandbox "+rt.id+" takes private traffic only: send its traffic access token in "+headerTrafficToken)
		return
	}
	addr, err := p.sbs.Address(rt.id)
	if err != nil {
		p.fail(w, r, s, rt, err)
		return
	}
	target := &url.URL{Scheme: "http", Host: upstreamHost(rec, addr, port)}
	p.rp.ServeHTTP(w, r.WithContext(contextWith(r, target)))
}

// upstreamHost names the upstream of a request by the sandbox's machine as
// well as its address: the transport pools connections by host, and an
// address passes to another machine when a slot is reused (or a sandbox
// resumes elsewhere), whose guest knows nothing of the old one's
// connections. A request sent on such a connection fails without being
// retried (a POST is not replayable), so each machine gets a pool of its
// own. The form is <id>-<vmm pid>.<address>:<port>; the dialer takes the
// address back out.
func upstreamHost(rec store.Sandbox, addr netip.Addr, port int) string {
	return net.JoinHostPort(fmt.Sprintf("%s-%d.%s", rec.ID, rec.VMMPID, addr), strconv.Itoa(port))
}

// upstreamAddr is the address of an upstreamHost, to dial.
func upstreamAddr(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	if _, ip, ok := strings.Cut(host, "."); ok {
		if _, err := netip.ParseAddr(ip); err == nil {
			return net.JoinHostPort(ip, port)
		}
	}
	return hostport
}

// reject answers a request the proxy refuses, in envd's shape for envd
// traffic and the API's otherwise.
func (p *proxy) reject(w http.ResponseWriter, rt route, status int, code, msg string) {
	if rt.envd {
		e2b.WriteError(w, status, msg)
		return
	}
	writeError(w, status, code, msg)
}

// fail answers a sandbox that cannot take the request. For envd traffic a
// sandbox gone or not running is a bad gateway (502), what E2B's SDKs take
// for "not running" (isRunning() is false, a call fails as a timeout);
// other traffic gets the API's status and code.
func (p *proxy) fail(w http.ResponseWriter, r *http.Request, s *Server, rt route, err error) {
	if !rt.envd {
		s.fail(w, r, err)
		return
	}
	status, _, msg := s.classify(r, err)
	if errors.Is(err, sandbox.ErrNotFound) || errors.Is(err, sandbox.ErrConflict) {
		status = http.StatusBadGateway
	}
	e2b.WriteError(w, status, msg)
}

// signer finds the sandbox whose access token made a signed /files URL's
// signature (E2B's: "v1_" and the unpadded base64 SHA-256 of
// path:operation:user:token, with :expiration when the URL carries one).
// The agent checks the signature again, with its expiration; this only
// routes.
func (p *proxy) signer(r *http.Request) (string, bool) {
	q := r.URL.Query()
	op := "read"
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		op = "write"
	}
	prefix := q.Get("path") + ":" + op + ":" + q.Get("username") + ":"
	suffix := ""
	if exp := q.Get("signature_expiration"); exp != "" {
		suffix = ":" + exp
	}
	got := []byte(q.Get("signature"))
	for _, rec := range p.sbs.List() {
		if rec.Token == "" {
			continue
		}
		sum := sha256.Sum256([]byte(prefix + rec.Token + suffix))
		want := "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
		if subtle.ConstantTimeCompare(got, []byte(want)) == 1 {
			return rec.ID, true
		}
	}
	return "", false
}

func contextWith(r *http.Request, target *url.URL) context.Context {
	return context.WithValue(r.Context(), targetKey{}, target)
}
