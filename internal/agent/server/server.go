// Package server is ember-agent's envd-compatible API: the HTTP endpoints
// (/health, /init, /files) and the Connect RPC services (process and
// filesystem) the E2B SDKs call inside a sandbox, each run as the user the
// request names. It serves HTTP/1.1 and cleartext HTTP/2 on one listener,
// because Connect clients use both.
package server

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/emberhq/ember/internal/agent/proto/filesystem/filesystemconnect"
	"github.com/emberhq/ember/internal/agent/proto/process/processconnect"
	"github.com/emberhq/ember/internal/usage"
)

// TokenHeader carries the access token set by /init on every request.
const TokenHeader = "X-Access-Token"

// defaultPath is PATH for processes when neither the agent's environment nor
// /init nor the request sets one (busybox init starts us with almost none).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// shutdownGrace bounds how long Serve waits for open requests to finish
// once its context ends.
const shutdownGrace = 5 * time.Second

// Config holds what the agent is started with.
type Config struct {
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Dir is the working directory of processes that name none, and what
	// relative ones are taken against; "" means the user's home directory.
	Dir string
	// Env is the environment every process starts from, before /init's
	// variables and the request's own ("KEY=value" form); nil means the
	// agent's own environment.
	Env []string
	// Usage reads the guest's resource use for GET /metrics; nil reads
	// this machine's (/proc and the root file system).
	Usage func() (usage.System, error)
}

// Server is the agent's API. The zero value is not usable; call New.
type Server struct {
	log     *slog.Logger
	dir     string
	baseEnv map[string]string
	procs   *table
	meter   *meter

	mu sync.RWMutex
	// token, once set by /init, must accompany every request but /health.
	token string
	// env is the default environment /init set, layered over baseEnv.
	env map[string]string
	// defaultUser is the user /init named for requests that name none;
	// "" means DefaultUser.
	defaultUser string

	// watchMu guards watchers, the polling watchers by id.
	watchMu  sync.Mutex
	watchers map[string]*watcher
}

// New returns a server ready to serve.
func New(cfg Config) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir := cfg.Dir
	env := cfg.Env
	if env == nil {
		env = os.Environ()
	}
	base := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			base[k] = v
		}
	}
	if _, ok := base["PATH"]; !ok {
		base["PATH"] = defaultPath
	}
	return &Server{log: log, dir: dir, baseEnv: base, procs: newTable(log), meter: newMeter(cfg.Usage), env: map[string]string{},
		watchers: map[string]*watcher{}}
}

// Handler returns the agent's routes behind the access-token check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.health)
	mux.HandleFunc("POST /init", s.initialize)
	mux.HandleFunc("GET /metrics", s.metrics)
	mux.HandleFunc("GET /files", s.download)
	mux.HandleFunc("POST /files", s.upload)
	procPath, procHandler := processconnect.NewProcessHandler(&processService{s: s})
	mux.Handle(procPath, procHandler)
	fsPath, fsHandler := filesystemconnect.NewFilesystemHandler(&fsService{s: s})
	mux.Handle(fsPath, fsHandler)
	return s.authorize(mux, procPath, fsPath)
}

// Serve answers HTTP/1.1 and cleartext HTTP/2 on ln until ctx ends, then
// kills the processes it started and shuts down. It returns nil after a
// shutdown asked for by ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s.Handler(),
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		s.Close()
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	// Killing the processes first ends their Start streams, so Shutdown
	// mostly finds idle connections.
	s.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown timed out, closing connections", "err", err)
		hs.Close()
	}
	return nil
}

// Close kills every process the server started (SIGKILL to its process
// group) and ends its polling watchers. It is safe to call more than once.
func (s *Server) Close() {
	s.procs.killAll()
	s.watchMu.Lock()
	ws := s.watchers
	s.watchers = map[string]*watcher{}
	s.watchMu.Unlock()
	for _, w := range ws {
		w.close()
	}
}

// defaults returns the token and the default environment /init set.
func (s *Server) defaults() (string, map[string]string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.token, s.env
}

// environ merges the base environment, the user's (HOME, USER), /init's
// variables and the request's own, later ones winning, into exec's
// "KEY=value" form.
func (s *Server) environ(user, req map[string]string) []string {
	_, def := s.defaults()
	m := maps.Clone(s.baseEnv)
	maps.Copy(m, user)
	maps.Copy(m, def)
	maps.Copy(m, req)
	out := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// initRequest is envd's /init body. Fields we do not act on
// (hyperloopIP, defaultWorkdir) are ignored.
type initRequest struct {
	EnvVars     map[string]string `json:"envVars"`
	AccessToken *string           `json:"accessToken"`
	// DefaultUser is who requests that name no user run as.
	DefaultUser *string `json:"defaultUser"`
	// Timestamp is the host's time: a guest restored from a snapshot wakes
	// with the clock it was saved with, and moves it forward to this.
	Timestamp *time.Time `json:"timestamp"`
}

// setClock sets the system clock; a variable so tests do not.
var setClock = setSystemClock

// initialize merges the given variables into the default environment and, when
// the body carries one, sets the access token.
func (s *Server) initialize(w http.ResponseWriter, r *http.Request) {
	var req initRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("decode init request: %v", err))
		return
	}
	s.mu.Lock()
	env := maps.Clone(s.env)
	maps.Copy(env, req.EnvVars)
	s.env = env
	if req.AccessToken != nil && *req.AccessToken != "" {
		s.token = *req.AccessToken
	}
	if req.DefaultUser != nil {
		s.defaultUser = *req.DefaultUser
	}
	s.mu.Unlock()
	if req.Timestamp != nil && time.Now().Before(*req.Timestamp) {
		if err := setClock(*req.Timestamp); err != nil {
			s.log.Warn("set clock", "to", *req.Timestamp, "err", err)
		}
	}
	s.log.Info("initialized", "env_vars", len(req.EnvVars), "token_set", req.AccessToken != nil && *req.AccessToken != "")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// errUnauthenticated is what a request without the right token gets.
var errUnauthenticated = errors.New("missing or wrong " + TokenHeader)

// authorize lets a request through when no token is set yet, when it is
// GET /health, when it carries the token, or when it is for /files, whose
// handlers accept the token or a signed URL instead (checkSigned). Others
// get 401: a Connect error for requests under rpcPaths, envd's JSON error
// for the rest. The daemon's port proxy forwards requests without looking
// at them, so this is the only gate in front of the guest.
func (s *Server) authorize(next http.Handler, rpcPaths ...string) http.Handler {
	rpc := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := s.defaults()
		if token == "" || (r.Method == http.MethodGet && r.URL.Path == "/health") || r.URL.Path == "/files" ||
			subtle.ConstantTimeCompare([]byte(r.Header.Get(TokenHeader)), []byte(token)) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		isRPC := slices.ContainsFunc(rpcPaths, func(p string) bool { return strings.HasPrefix(r.URL.Path, p) })
		if isRPC && rpc.IsSupported(r) {
			_ = rpc.Write(w, r, connect.NewError(connect.CodeUnauthenticated, errUnauthenticated))
			return
		}
		writeError(w, http.StatusUnauthorized, errUnauthenticated.Error())
	})
}

// writeError writes envd's error body: {"code": <status>, "message": "..."}.
func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{code, msg})
}
