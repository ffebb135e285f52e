package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/wire"
)

// terminalPing is how often the terminal WebSocket is pinged, so proxies
// and NATs keep an idle session open and a vanished client is noticed.
const terminalPing = 30 * time.Second

// terminalRequest reads a terminal's query: cols and rows (default 80x24),
// cmd and repeated arg (default a login shell), cwd, user.
func terminalRequest(r *http.Request) (agent.TerminalRequest, error) {
	q := r.URL.Query()
	req := agent.TerminalRequest{Cmd: q.Get("cmd"), Args: q["arg"], Cwd: q.Get("cwd"), User: q.Get("user"), Cols: 80, Rows: 24}
	for _, d := range []struct {
		name string
		v    *uint32
	}{{"cols", &req.Cols}, {"rows", &req.Rows}} {
		if s := q.Get(d.name); s != "" {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil || n == 0 {
				return req, fmt.Errorf("%s %q: want a number from 1 to 65535", d.name, s)
			}
			*d.v = uint32(n)
		}
	}
	return req, nil
}

// terminal serves a terminal in a sandbox over a WebSocket
// (GET /v1/sandboxes/{id}/pty): binary messages are its bytes both ways,
// text messages wire.TerminalMessage (resize from the client; exit, the
// last one, from the daemon). Errors before the upgrade are plain JSON.
func (s *Server) terminal(w http.ResponseWriter, r *http.Request) {
	req, err := terminalRequest(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_argument", err.Error())
		return
	}
	id := r.PathValue("id")
	term, err := s.sandboxes.StartTerminal(r.Context(), id, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer term.Close()
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the request
	}
	defer conn.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// A client that goes away ends the terminal, which ends Recv below.
	go func() {
		<-ctx.Done()
		term.Close()
	}()

	// Client to terminal: keystrokes and resizes, until the client goes.
	go func() {
		defer cancel()
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				if err := term.Write(ctx, data); err != nil {
					return
				}
				continue
			}
			var m wire.TerminalMessage
			if json.Unmarshal(data, &m) == nil && m.Type == "resize" && m.Cols > 0 && m.Rows > 0 {
				if err := term.Resize(ctx, m.Cols, m.Rows); err != nil {
					s.log.Debug("resize terminal", "sandbox", id, "err", err)
				}
			}
		}
	}()
	go func() {
		t := time.NewTicker(terminalPing)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				pctx, pcancel := context.WithTimeout(ctx, terminalPing)
				err := conn.Ping(pctx)
				pcancel()
				if err != nil {
					cancel()
					return
				}
			}
		}
	}()

	// Terminal to client, one message per chunk: a slow client slows the
	// terminal, nothing piles up here.
	for {
		data, st, err := term.Recv()
		if err != nil {
			conn.Close(websocket.StatusInternalError, "terminal stream failed")
			return
		}
		if st != nil {
			b, _ := json.Marshal(wire.TerminalMessage{Type: "exit", ExitCode: st.Code})
			if err := conn.Write(ctx, websocket.MessageText, b); err == nil {
				conn.Close(websocket.StatusNormalClosure, "exited")
			}
			return
		}
		if err := conn.Write(ctx, websocket.MessageBinary, data); err != nil {
			return
		}
	}
}
