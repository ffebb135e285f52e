package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/api/e2b"
	"github.com/emberhq/ember/internal/build"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/wire"
)

// Builds builds and deletes templates (package build's Builder and the
// sandbox manager's checks, wired by the daemon).
type Builds interface {
	// Context and Build: as E2B's template SDK builds, so do /v1's.
	e2b.Builds
	// DeleteTemplate deletes a template nothing needs.
	DeleteTemplate(ctx context.Context, name string) error
}

// routeTemplates serves template builds and deletes, when the daemon
// builds templates.
func (s *Server) routeTemplates() {
	if s.cfg.Builds == nil {
		return
	}
	s.mux.HandleFunc("POST /v1/templates", s.auth(s.buildTemplate))
	s.mux.HandleFunc("DELETE /v1/templates/{name}", s.auth(s.deleteTemplate))
}

// buildTemplate builds a template from a Dockerfile in a context sent as
// a tar stream. What is wrong with the request (the context, the
// Dockerfile, its base, a COPY source) is a plain JSON error with its
// status; once the build starts the answer is NDJSON progress ending in a
// "done" or an "error" event.
func (s *Server) buildTemplate(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("name")
	if name == "" {
		writeError(w, http.StatusBadRequest, "invalid_argument", "name: the template's name is required")
		return
	}
	req := build.Request{NoCache: q.Get("no_cache") == "1" || q.Get("no_cache") == "true"}
	for _, f := range []struct {
		key string
		dst *int
	}{{"disk_mib", &req.DiskMiB}, {"vcpus", &req.VCPUs}, {"memory_mib", &req.MemoryMiB}} {
		if v := q.Get(f.key); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeError(w, http.StatusBadRequest, "invalid_argument", f.key+": a positive integer")
				return
			}
			*f.dst = n
		}
	}
	args := map[string]string{}
	for _, a := range q["build_arg"] {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			writeError(w, http.StatusBadRequest, "invalid_argument", fmt.Sprintf("build_arg %q: want KEY=VALUE", a))
			return
		}
		args[k] = v
	}
	dir, cleanup, err := s.cfg.Builds.Context(http.MaxBytesReader(w, r.Body, maxContextBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("build context exceeds %d bytes", int64(maxContextBody)))
			return
		}
		writeError(w, http.StatusBadRequest, "invalid_context", "build context: "+err.Error())
		return
	}
	defer cleanup()
	dockerfile := q.Get("dockerfile")
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	df, err := os.Open(filepath.Join(dir, filepath.Clean("/"+dockerfile)))
	if err != nil {
		writeError(w, http.StatusBadRequest, "dockerfile_not_found", fmt.Sprintf("%s: not in the build context", dockerfile))
		return
	}
	spec, err := build.ParseDockerfile(df, args)
	df.Close()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	spec.Name = name
	if c := q.Get("start_cmd"); c != "" {
		spec.Steps = append(spec.Steps, build.Step{Kind: build.Start, Command: c})
	}
	if c := q.Get("ready_cmd"); c != "" {
		spec.Steps = append(spec.Steps, build.Step{Kind: build.Ready, Command: c})
	}
	req.Spec, req.Context = spec, dir
	ew := &eventWriter{w: w}
	start := time.Now()
	committed := false
	req.OnPrepared = func() {
		committed = true
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		ew.flush()
	}
	_, err = s.cfg.Builds.Build(r.Context(), req, func(e wire.BuildEvent) { ew.sendJSON(e) })
	if err == nil {
		return
	}
	if !committed {
		s.fail(w, r, err)
		return
	}
	ev := s.buildError(r, err)
	ev.ElapsedMS = float64(time.Since(start).Microseconds()) / 1000
	ew.sendJSON(ev)
}

// maxContextBody bounds a build context's tar stream.
const maxContextBody = 4 << 30

// buildError is the last event of a failed build.
func (s *Server) buildError(r *http.Request, err error) wire.BuildEvent {
	_, code, msg := s.classify(r, err)
	ev := wire.BuildEvent{Type: wire.BuildError, Code: code, Message: msg}
	var se *build.StepError
	if errors.As(err, &se) {
		code := se.ExitCode
		ev.Step, ev.Total, ev.Instruction, ev.Line, ev.ExitCode, ev.Output = se.Step, se.Total, se.Text, se.Line, &code, se.Output
	}
	return ev
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Builds.DeleteTemplate(r.Context(), r.PathValue("name")); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// buildStatus maps a build's failure to a status and a stable code; ok is
// false for an error that is no build's.
func buildStatus(err error) (status int, code string, ok bool) {
	switch {
	case errors.Is(err, build.ErrUnknownInstruction):
		return http.StatusBadRequest, "unknown_instruction", true
	case errors.Is(err, build.ErrDockerfile):
		return http.StatusBadRequest, "dockerfile_invalid", true
	case errors.Is(err, build.ErrCopySource):
		return http.StatusBadRequest, "copy_source_not_found", true
	case errors.Is(err, build.ErrInvalidSpec):
		return http.StatusBadRequest, "invalid_argument", true
	case errors.Is(err, build.ErrRegistry):
		return http.StatusUnprocessableEntity, "registry_unreachable", true
	case errors.Is(err, build.ErrPlatform):
		return http.StatusUnprocessableEntity, "image_platform", true
	case errors.Is(err, build.ErrInvalidImage):
		return http.StatusUnprocessableEntity, "invalid_image", true
	case errors.Is(err, build.ErrBaseTemplate):
		return http.StatusUnprocessableEntity, "base_template_not_found", true
	case errors.Is(err, build.ErrBusy):
		return http.StatusConflict, "build_in_progress", true
	case errors.Is(err, build.ErrStepFailed):
		return http.StatusUnprocessableEntity, "step_failed", true
	case errors.Is(err, sandbox.ErrTemplateInUse):
		return http.StatusConflict, "template_in_use", true
	}
	return 0, "", false
}
