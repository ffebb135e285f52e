package api

import (
	"context"
	"net/http"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/wire"
)

// Warm is the warm pools as the API uses them (the sandbox manager
// implements it).
type Warm interface {
	WarmPools() []sandbox.WarmPool
	SetWarm(ctx context.Context, template string, count int) (sandbox.WarmPool, error)
}

// routeWarm registers the warm pools' endpoints: every pool, and one
// template's size.
func (s *Server) routeWarm() {
	if s.cfg.Warm == nil {
		return
	}
	s.mux.HandleFunc("GET /v1/warm", s.auth(s.listWarm))
	s.mux.HandleFunc("PUT /v1/templates/{name}/warm", s.auth(s.setWarm))
}

func (s *Server) listWarm(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, WarmPools(s.cfg.Warm.WarmPools()))
}

// setWarm sets a template's pool size. Lowering it answers once the
// surplus is gone.
func (s *Server) setWarm(w http.ResponseWriter, r *http.Request) {
	var req wire.WarmRequest
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	p, err := s.cfg.Warm.SetWarm(r.Context(), r.PathValue("name"), req.Count)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toWarmPool(p))
}

// WarmPools converts the manager's pools to their wire form (the daemon's
// info carries them too).
func WarmPools(ps []sandbox.WarmPool) []wire.WarmPool {
	out := make([]wire.WarmPool, 0, len(ps))
	for _, p := range ps {
		out = append(out, toWarmPool(p))
	}
	return out
}

func toWarmPool(p sandbox.WarmPool) wire.WarmPool {
	out := wire.WarmPool{Template: p.Template, Target: p.Target, Ready: p.Ready, Starting: p.Starting, LastError: p.LastError}
	if !p.RetryAt.IsZero() {
		t := p.RetryAt.UTC()
		out.RetryAt = &t
	}
	return out
}
