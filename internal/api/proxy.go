package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Headers that route a request to a sandbox port, as E2B's SDKs send them.
const (
	headerSandboxID   = "E2b-Sandbox-Id"
	headerSandboxPort = "E2b-Sandbox-Port"
)

// Addresser finds where the host reaches a running sandbox.
type Addresser interface {
	Address(id string) (netip.Addr, error)
}

// proxy forwards HTTP (WebSocket upgrades included) to a port inside a
// sandbox. A request is for a sandbox when its Host is
// <port>-<sandbox-id>.<domain> or it carries the E2b-Sandbox-Id and
// E2b-Sandbox-Port headers; everything else is the API's.
type proxy struct {
	domain string
	sbs    Addresser
	rp     *httputil.ReverseProxy
}

// targetKey carries the chosen upstream from route to Rewrite.
type targetKey struct{}

func newProxy(domain string, sbs Addresser) *proxy {
	p := &proxy{domain: strings.ToLower(strings.TrimPrefix(domain, ".")), sbs: sbs}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
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

// route reports which sandbox and port r is for; ok is false for API requests.
func (p *proxy) route(r *http.Request) (id, port string, ok bool) {
	if id := r.Header.Get(headerSandboxID); id != "" {
		return id, r.Header.Get(headerSandboxPort), true
	}
	if p.domain == "" {
		return "", "", false
	}
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	label, ok := strings.CutSuffix(host, "."+p.domain)
	if !ok || strings.Contains(label, ".") {
		return "", "", false
	}
	port, id, ok = strings.Cut(label, "-")
	return id, port, ok
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request, s *Server, id, portStr string) {
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		writeError(w, http.StatusBadRequest, "invalid_port", fmt.Sprintf("sandbox port %q: want a number from 1 to 65535", portStr))
		return
	}
	addr, err := p.sbs.Address(id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	target := &url.URL{Scheme: "http", Host: netip.AddrPortFrom(addr, uint16(port)).String()}
	p.rp.ServeHTTP(w, r.WithContext(contextWith(r, target)))
}

func contextWith(r *http.Request, target *url.URL) context.Context {
	return context.WithValue(r.Context(), targetKey{}, target)
}
