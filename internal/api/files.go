package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/wire"
)

// fileEntry is an agent entry as the API describes it.
func fileEntry(e agent.Entry) wire.FileEntry {
	return wire.FileEntry{
		Name: e.Name, Type: e.Type, Path: e.Path, Size: e.Size, Mode: e.Mode, Permissions: e.Permissions,
		Owner: e.Owner, Group: e.Group, ModifiedAt: e.ModTime, SymlinkTarget: e.SymlinkTarget,
	}
}

// fileTarget reads the path and user query parameters every file endpoint
// takes; a missing path is answered here.
func fileTarget(w http.ResponseWriter, r *http.Request) (id, user, p string, ok bool) {
	q := r.URL.Query()
	p = q.Get("path")
	if p == "" {
		writeError(w, http.StatusBadRequest, "invalid_argument", "path: the query parameter is required")
		return "", "", "", false
	}
	return r.PathValue("id"), q.Get("user"), p, true
}

// readFile streams a file out of a sandbox (GET /files?path=): the bytes as
// the guest sends them, never all held here, so any size goes; the reader's
// pace sets the guest's.
func (s *Server) readFile(w http.ResponseWriter, r *http.Request) {
	id, user, p, ok := fileTarget(w, r)
	if !ok {
		return
	}
	body, size, err := s.sandboxes.ReadFile(r.Context(), id, user, p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, body); err != nil {
		// The status is sent: a short body (and, with a length, a cut
		// connection) is how the client learns.
		s.log.Debug("file download ended early", "sandbox", id, "path", p, "err", err)
	}
}

// fileOp is a handler for one file operation answering with the entry it
// leaves: op gets the sandbox, the user and the path of the request.
func (s *Server) fileOp(status int, op func(r *http.Request, id, user, p string) (agent.Entry, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, user, p, ok := fileTarget(w, r)
		if !ok {
			return
		}
		e, err := op(r, id, user, p)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, status, fileEntry(e))
	}
}

// writeFile streams the request body into a file in a sandbox (PUT
// /files?path=); the file is replaced only once all of it arrived.
func (s *Server) writeFile(r *http.Request, id, user, p string) (agent.Entry, error) {
	if _, err := s.sandboxes.WriteFile(r.Context(), id, user, p, r.Body, r.ContentLength); err != nil {
		return agent.Entry{}, err
	}
	return s.sandboxes.StatFile(r.Context(), id, user, p)
}

func (s *Server) statFile(r *http.Request, id, user, p string) (agent.Entry, error) {
	return s.sandboxes.StatFile(r.Context(), id, user, p)
}

func (s *Server) makeDir(r *http.Request, id, user, p string) (agent.Entry, error) {
	return s.sandboxes.MakeDir(r.Context(), id, user, p)
}

func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	id, user, p, ok := fileTarget(w, r)
	if !ok {
		return
	}
	depth := 1
	if d := r.URL.Query().Get("depth"); d != "" {
		n, err := strconv.Atoi(d)
		if err != nil || n < 1 || n > 64 {
			writeError(w, http.StatusBadRequest, "invalid_argument", fmt.Sprintf("depth %q: want a number from 1 to 64", d))
			return
		}
		depth = n
	}
	es, err := s.sandboxes.ListFiles(r.Context(), id, user, p, depth)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]wire.FileEntry, 0, len(es))
	for _, e := range es {
		out = append(out, fileEntry(e))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) moveFile(w http.ResponseWriter, r *http.Request) {
	var req wire.MoveRequest
	if !decode(w, r, maxCreateBody, &req) {
		return
	}
	if req.From == "" || req.To == "" {
		writeError(w, http.StatusBadRequest, "invalid_argument", "from, to: both are required")
		return
	}
	e, err := s.sandboxes.MoveFile(r.Context(), r.PathValue("id"), req.User, req.From, req.To)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, fileEntry(e))
}

func (s *Server) removeFile(w http.ResponseWriter, r *http.Request) {
	id, user, p, ok := fileTarget(w, r)
	if !ok {
		return
	}
	if err := s.sandboxes.RemoveFile(r.Context(), id, user, p); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// processPid reads the {pid} of a process route.
func processPid(w http.ResponseWriter, r *http.Request) (uint32, bool) {
	pid, err := strconv.ParseUint(r.PathValue("pid"), 10, 32)
	if err != nil || pid == 0 {
		writeError(w, http.StatusBadRequest, "invalid_argument", fmt.Sprintf("pid %q: want a process id", r.PathValue("pid")))
		return 0, false
	}
	return uint32(pid), true
}

// sendStdin forwards the request body to the stdin of a command the
// streaming exec started with stdin_open, as it arrives: a client that
// streams its body (chunked) types into the command. With ?close=true the
// stdin is closed once the body ends.
func (s *Server) sendStdin(w http.ResponseWriter, r *http.Request) {
	pid, ok := processPid(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	// A read returns what has arrived: a keystroke alone, or up to this
	// much of a bulk stream in one call to the guest.
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if serr := s.sandboxes.SendStdin(r.Context(), id, pid, buf[:n]); serr != nil {
				s.fail(w, r, serr)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_argument", "read request body: "+err.Error())
			return
		}
	}
	if r.URL.Query().Get("close") == "true" {
		if err := s.sandboxes.CloseStdin(r.Context(), id, pid); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) closeStdin(w http.ResponseWriter, r *http.Request) {
	pid, ok := processPid(w, r)
	if !ok {
		return
	}
	if err := s.sandboxes.CloseStdin(r.Context(), r.PathValue("id"), pid); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
