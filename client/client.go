// Package client is the Go SDK for ember's REST API. The CLI is built on it.
//
//	c := client.New("http://127.0.0.1:7070", apiKey)
//	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "base"})
//	res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "uname", Args: []string{"-a"}})
//	_, err = c.AsUser("user").WriteFile(ctx, sb.ID, "notes.txt", strings.NewReader("hi"))
//	term, err := c.OpenTerminal(ctx, sb.ID, client.TerminalOptions{Cols: 80, Rows: 24})
//
// Output and stdin are bytes, exactly; files stream both ways without
// being held in memory; a Terminal is an io.ReadWriter with Resize.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// APIError is an error response from the daemon.
type APIError struct {
	Status  int
	Code    string
	Message string
	// RetryAfter is the wait the daemon asked for (its Retry-After
	// header), on a 429 capacity_exhausted; zero otherwise.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// IsCode reports whether err is an APIError with the given code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// Client talks to one ember daemon.
type Client struct {
	base   string
	apiKey string
	hc     *http.Client
	// user is who commands, terminals and file operations run as when a
	// request names no one; "" leaves it to the daemon (root).
	user string
}

// AsUser returns a copy of c whose commands, terminals and file
// operations run as the given guest user (E2B sandboxes have "user" and
// "root") unless a request names another.
func (c *Client) AsUser(user string) *Client {
	cp := *c
	cp.user = user
	return &cp
}

// New returns a client for the daemon at baseURL authenticating with apiKey.
func New(baseURL, apiKey string) *Client {
	return &Client{base: strings.TrimRight(baseURL, "/"), apiKey: apiKey, hc: &http.Client{}}
}

// WithHTTPClient returns a copy of c that sends its requests through hc.
func (c *Client) WithHTTPClient(hc *http.Client) *Client {
	cp := *c
	cp.hc = hc
	return &cp
}

// CreateSandbox creates a sandbox and returns once it is running.
func (c *Client) CreateSandbox(ctx context.Context, req CreateSandboxRequest) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes", req, &sb)
	return sb, err
}

// ListSandboxes lists every sandbox.
func (c *Client) ListSandboxes(ctx context.Context) ([]Sandbox, error) {
	var out []Sandbox
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes", nil, &out)
	return out, err
}

// GetSandbox returns one sandbox.
func (c *Client) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+url.PathEscape(id), nil, &sb)
	return sb, err
}

// DeleteSandbox destroys a sandbox.
func (c *Client) DeleteSandbox(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+url.PathEscape(id), nil, nil)
}

// SetNetwork replaces a running sandbox's egress policy.
func (c *Client) SetNetwork(ctx context.Context, id string, pol NetworkPolicy) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodPut, "/v1/sandboxes/"+url.PathEscape(id)+"/network", pol, &sb)
	return sb, err
}

// PauseSandbox saves a running sandbox's memory and stops it; it then costs
// only disk space.
func (c *Client) PauseSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/pause", nil, &sb)
	return sb, err
}

// ResumeSandbox brings a paused sandbox back exactly as it was.
func (c *Client) ResumeSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/resume", nil, &sb)
	return sb, err
}

// SetTimeout sets a sandbox's end time to now + seconds.
func (c *Client) SetTimeout(ctx context.Context, id string, seconds int) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/timeout", TimeoutRequest{TimeoutS: seconds}, &sb)
	return sb, err
}

// ForkSandbox makes count copies of a running sandbox as it is now.
func (c *Client) ForkSandbox(ctx context.Context, id string, count int) ([]Sandbox, error) {
	var out []Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/fork", ForkRequest{Count: count}, &out)
	return out, err
}

// CreateSnapshot captures a running or paused sandbox as the named snapshot.
func (c *Client) CreateSnapshot(ctx context.Context, sandboxID, name string) (Snapshot, error) {
	var sn Snapshot
	err := c.do(ctx, http.MethodPost, "/v1/snapshots", CreateSnapshotRequest{Sandbox: sandboxID, Name: name}, &sn)
	return sn, err
}

// ListSnapshots lists the snapshots.
func (c *Client) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	var out []Snapshot
	err := c.do(ctx, http.MethodGet, "/v1/snapshots", nil, &out)
	return out, err
}

// GetSnapshot returns one snapshot.
func (c *Client) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	var sn Snapshot
	err := c.do(ctx, http.MethodGet, "/v1/snapshots/"+url.PathEscape(name), nil, &sn)
	return sn, err
}

// DeleteSnapshot deletes a snapshot no sandbox was created from.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/snapshots/"+url.PathEscape(name), nil, nil)
}

// Exec runs a command to completion and returns its output: at most the
// daemon's limit of each stream (16 MiB by default), Truncated saying
// whether some was dropped.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest) (ExecResult, error) {
	if req.User == "" {
		req.User = c.user
	}
	var res ExecResult
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/exec", req, &res)
	return res, err
}

// ExecStream runs a command, writing its output to stdout and stderr as the
// daemon streams it, and returns the exit code and duration once it ends.
func (c *Client) ExecStream(ctx context.Context, id string, req ExecRequest, stdout, stderr io.Writer) (ExecResult, error) {
	return c.ExecPipe(ctx, id, req, nil, stdout, stderr)
}

// ExecPipe is ExecStream with the command's stdin streamed from stdin as it
// is read (a terminal's lines as they are typed); its end closes the
// command's stdin. A nil stdin gives the command req.Stdin only.
func (c *Client) ExecPipe(ctx context.Context, id string, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (ExecResult, error) {
	if req.User == "" {
		req.User = c.user
	}
	if stdin != nil {
		req.StdinOpen = true
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.send(ctx, http.MethodPost, "/v1/sandboxes/"+url.PathEscape(id)+"/exec/stream", req)
	if err != nil {
		return ExecResult{}, err
	}
	defer resp.Body.Close()
	stdinErr := make(chan error, 1)
	sc := bufio.NewScanner(resp.Body)
	// A data event carries at most one 32 KiB chunk, base64 in JSON.
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var ev ExecEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return ExecResult{}, fmt.Errorf("decode exec event: %w", err)
		}
		switch ev.Type {
		case "start":
			if stdin != nil {
				go func() { stdinErr <- c.SendStdin(ctx, id, ev.Pid, stdin, true) }()
			}
		case "stdout", "stderr":
			w := stdout
			if ev.Type == "stderr" {
				w = stderr
			}
			if w == nil {
				continue
			}
			if _, err := w.Write(ev.Data); err != nil {
				return ExecResult{}, fmt.Errorf("write %s: %w", ev.Type, err)
			}
		case "exit":
			return ExecResult{ExitCode: ev.ExitCode, DurationMS: ev.DurationMS}, nil
		case "error":
			return ExecResult{}, &APIError{Status: resp.StatusCode, Code: ev.Code, Message: ev.Message}
		}
	}
	if err := sc.Err(); err != nil {
		return ExecResult{}, fmt.Errorf("read exec stream: %w", err)
	}
	select {
	case err := <-stdinErr:
		if err != nil {
			return ExecResult{}, err
		}
	default:
	}
	return ExecResult{}, errors.New("exec stream ended without an exit event")
}

// SendStdin streams r into the stdin of a command ExecPipe (or an
// ExecStream with StdinOpen) started, chunk by chunk as it is read; close
// closes the command's stdin once r ends.
func (c *Client) SendStdin(ctx context.Context, id string, pid uint32, r io.Reader, close bool) error {
	path := fmt.Sprintf("/v1/sandboxes/%s/processes/%d/stdin", url.PathEscape(id), pid)
	if close {
		path += "?close=true"
	}
	resp, err := c.sendRaw(ctx, http.MethodPost, path, "application/octet-stream", r)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// CloseStdin closes the stdin of a command started with StdinOpen.
func (c *Client) CloseStdin(ctx context.Context, id string, pid uint32) error {
	return c.do(ctx, http.MethodPost, fmt.Sprintf("/v1/sandboxes/%s/processes/%d/close-stdin", url.PathEscape(id), pid), nil, nil)
}

// ListTemplates lists the templates sandboxes can be created from.
func (c *Client) ListTemplates(ctx context.Context) ([]Template, error) {
	var out []Template
	err := c.do(ctx, http.MethodGet, "/v1/templates", nil, &out)
	return out, err
}

// Info describes the daemon: its VMM and root disk backend and why.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var out Info
	err := c.do(ctx, http.MethodGet, "/v1/info", nil, &out)
	return out, err
}

// WarmPools lists the templates' warm pools: sandboxes restored ahead of
// demand, which creates of a template's default shape claim.
func (c *Client) WarmPools(ctx context.Context) ([]WarmPool, error) {
	var out []WarmPool
	err := c.do(ctx, http.MethodGet, "/v1/warm", nil, &out)
	return out, err
}

// SetWarmPool sets how many sandboxes of template are kept restored ahead
// of demand; lowering it returns once the surplus is gone.
func (c *Client) SetWarmPool(ctx context.Context, template string, count int) (WarmPool, error) {
	var out WarmPool
	err := c.do(ctx, http.MethodPut, "/v1/templates/"+url.PathEscape(template)+"/warm", WarmRequest{Count: count}, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode response of %s %s: %w", method, path, err)
	}
	return nil
}

// send performs a request with a JSON body (nil: none) and turns a non-2xx
// answer into an *APIError.
func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	if body == nil {
		return c.sendRaw(ctx, method, path, "", nil)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	return c.sendRaw(ctx, method, path, "application/json", bytes.NewReader(b))
}

// sendRaw performs a request whose body (streamed, when it is not a
// bytes.Reader) has the given content type.
func (c *Client) sendRaw(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("X-API-Key", c.apiKey)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	return nil, apiError(resp)
}

// apiError reads a non-2xx answer's error body and closes it.
func apiError(resp *http.Response) error {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e Error
	if json.Unmarshal(b, &e) != nil || e.Code == "" {
		return &APIError{Status: resp.StatusCode, Code: "http_error", Message: strings.TrimSpace(string(b))}
	}
	ae := &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Message}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		ae.RetryAfter = time.Duration(secs) * time.Second
	}
	return ae
}
