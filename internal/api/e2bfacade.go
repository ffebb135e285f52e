package api

import (
	"net/http"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/api/e2b"
)

// routeE2B mounts E2B's control plane beside /v1 (its paths do not
// collide), behind the same API key and with the same mapping of the
// manager's errors to statuses; only its error bodies differ: E2B's
// numeric code, which its SDKs branch on.
func (s *Server) routeE2B() {
	cfg := s.cfg.E2B
	cfg.Authorize = s.authorized
	cfg.Classify = func(r *http.Request, err error) (int, string) {
		status, _, msg := s.classify(r, err)
		return status, msg
	}
	cfg.Log = s.log
	if s.cfg.Builds != nil {
		cfg.Builds = s.cfg.Builds
	}
	if cfg.Domain == "" {
		cfg.Domain = s.cfg.Domain
	}
	if cfg.EnvdVersion == "" {
		cfg.EnvdVersion = proto.EnvdVersion
	}
	e2b.New(cfg, s.sandboxes, s.templates).Register(s.mux)
}
