package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// filesPath is a file endpoint of a sandbox with its path and user.
func (c *Client) filesPath(id, endpoint, path string, extra url.Values) string {
	q := url.Values{"path": {path}}
	if c.user != "" {
		q.Set("user", c.user)
	}
	for k, v := range extra {
		q[k] = v
	}
	return "/v1/sandboxes/" + url.PathEscape(id) + "/files" + endpoint + "?" + q.Encode()
}

// ReadFile streams a file out of a sandbox. The caller reads and closes
// the body; nothing is held in memory on the way.
func (c *Client) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	resp, err := c.sendRaw(ctx, http.MethodGet, c.filesPath(id, "", path, nil), "", nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// WriteFile streams r into a file in a sandbox, creating its missing
// parent directories. The file is replaced only once all of r arrived: a
// failure (a full disk: code no_space) leaves the old one as it was.
func (c *Client) WriteFile(ctx context.Context, id, path string, r io.Reader) (FileEntry, error) {
	var e FileEntry
	resp, err := c.sendRaw(ctx, http.MethodPut, c.filesPath(id, "", path, nil), "application/octet-stream", r)
	if err != nil {
		return e, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		return e, fmt.Errorf("decode answer of write %q: %w", path, err)
	}
	return e, nil
}

// StatFile describes the entry at path (a link, not its target).
func (c *Client) StatFile(ctx context.Context, id, path string) (FileEntry, error) {
	var e FileEntry
	err := c.do(ctx, http.MethodGet, c.filesPath(id, "/stat", path, nil), nil, &e)
	return e, err
}

// ListFiles lists a directory to depth (1: its entries; 0 counts as 1).
func (c *Client) ListFiles(ctx context.Context, id, path string, depth int) ([]FileEntry, error) {
	var out []FileEntry
	err := c.do(ctx, http.MethodGet, c.filesPath(id, "/list", path, url.Values{"depth": {strconv.Itoa(max(depth, 1))}}), nil, &out)
	return out, err
}

// MakeDir creates a directory and its missing parents; one that exists
// already is an error with code file_exists.
func (c *Client) MakeDir(ctx context.Context, id, path string) (FileEntry, error) {
	var e FileEntry
	err := c.do(ctx, http.MethodPost, c.filesPath(id, "/mkdir", path, nil), nil, &e)
	return e, err
}

// MoveFile renames an entry, creating the destination's missing parents.
func (c *Client) MoveFile(ctx context.Context, id, from, to string) (FileEntry, error) {
	var e FileEntry
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/files/move", MoveRequest{From: from, To: to, User: c.user}, &e)
	return e, err
}

// RemoveFile deletes a file, or a directory with everything in it.
func (c *Client) RemoveFile(ctx context.Context, id, path string) error {
	return c.do(ctx, http.MethodDelete, c.filesPath(id, "", path, nil), nil, nil)
}

// TerminalOptions say what to run on a terminal and its size.
type TerminalOptions struct {
	// Cmd and Args: "" runs a login shell (/bin/bash -i -l).
	Cmd  string
	Args []string
	Cwd  string
	// Cols and Rows: 0 means 80 and 24.
	Cols, Rows int
}

// Terminal is a program on a terminal in a sandbox: Read its output,
// Write keystrokes, Resize it; Read returns io.EOF once the program has
// exited, and ExitCode then says how.
type Terminal struct {
	conn   *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex // guards pending, exited and code
	pending  []byte
	exited   bool
	code     int
	readOnce sync.Mutex // one Read at a time
}

// OpenTerminal starts a program on a new terminal in a sandbox, spoken to
// over a WebSocket (/v1/sandboxes/{id}/pty).
func (c *Client) OpenTerminal(ctx context.Context, id string, o TerminalOptions) (*Terminal, error) {
	q := url.Values{}
	if o.Cmd != "" {
		q.Set("cmd", o.Cmd)
		q["arg"] = o.Args
	}
	if o.Cwd != "" {
		q.Set("cwd", o.Cwd)
	}
	if c.user != "" {
		q.Set("user", c.user)
	}
	if o.Cols > 0 {
		q.Set("cols", strconv.Itoa(o.Cols))
	}
	if o.Rows > 0 {
		q.Set("rows", strconv.Itoa(o.Rows))
	}
	u := "ws" + strings.TrimPrefix(c.base, "http") + "/v1/sandboxes/" + url.PathEscape(id) + "/pty?" + q.Encode()
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient: c.hc,
		HTTPHeader: http.Header{"X-API-Key": {c.apiKey}},
	})
	if err != nil {
		if resp != nil && resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, apiError(resp)
		}
		return nil, fmt.Errorf("open terminal in sandbox %s: %w", id, err)
	}
	conn.SetReadLimit(1 << 20)
	tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &Terminal{conn: conn, ctx: tctx, cancel: cancel}, nil
}

// Read returns the terminal's next output.
func (t *Terminal) Read(p []byte) (int, error) {
	t.readOnce.Lock()
	defer t.readOnce.Unlock()
	for {
		t.mu.Lock()
		if len(t.pending) > 0 {
			n := copy(p, t.pending)
			t.pending = t.pending[n:]
			t.mu.Unlock()
			return n, nil
		}
		if t.exited {
			t.mu.Unlock()
			return 0, io.EOF
		}
		t.mu.Unlock()
		typ, data, err := t.conn.Read(t.ctx)
		if err != nil {
			return 0, fmt.Errorf("read terminal: %w", err)
		}
		t.mu.Lock()
		if typ == websocket.MessageBinary {
			t.pending = data
		} else {
			var m TerminalMessage
			if json.Unmarshal(data, &m) == nil && m.Type == "exit" {
				t.exited, t.code = true, m.ExitCode
			}
		}
		t.mu.Unlock()
	}
}

// Write sends keystrokes.
func (t *Terminal) Write(p []byte) (int, error) {
	if err := t.conn.Write(t.ctx, websocket.MessageBinary, p); err != nil {
		return 0, fmt.Errorf("write terminal: %w", err)
	}
	return len(p), nil
}

// Resize changes the terminal's size; its program gets SIGWINCH.
func (t *Terminal) Resize(cols, rows int) error {
	b, _ := json.Marshal(TerminalMessage{Type: "resize", Cols: uint32(cols), Rows: uint32(rows)})
	if err := t.conn.Write(t.ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("resize terminal: %w", err)
	}
	return nil
}

// ExitCode is the program's exit code once Read returned io.EOF.
func (t *Terminal) ExitCode() (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.exited {
		return 0, errors.New("the terminal's program has not exited")
	}
	return t.code, nil
}

// Close ends the terminal, killing its program if it still runs. Closing
// a terminal whose program exited (the daemon closed it) is no error.
func (t *Terminal) Close() error {
	t.conn.Close(websocket.StatusNormalClosure, "closed by the client")
	t.cancel()
	return nil
}
