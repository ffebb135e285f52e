// Package agent is the host side of ember-agent, the envd-compatible agent
// that runs inside every sandbox: a client for its health check, /init,
// /files and its process and filesystem services. The wire contract lives
// in agent/proto and the agent itself in agent/server.
package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/emberhq/ember/internal/agent/proto"
	"github.com/emberhq/ember/internal/agent/proto/filesystem/filesystemconnect"
	pb "github.com/emberhq/ember/internal/agent/proto/process"
	"github.com/emberhq/ember/internal/agent/proto/process/processconnect"
)

// Port is the TCP port the agent listens on inside a sandbox, as envd's.
const Port = 49983

// tokenHeader carries the access token on every request.
const tokenHeader = "X-Access-Token"

// ErrUnauthorized means the agent refused the client's access token.
var ErrUnauthorized = errors.New("agent refused the access token")

const (
	// readyInterval is how often WaitReady polls /health.
	readyInterval = 20 * time.Millisecond
	// readyTimeoutMin and readyTimeoutMax bound one /health attempt in
	// WaitReady: short while a dropped SYN would otherwise stall the first
	// poll for a full TCP retransmit, doubling when the agent is just slow.
	readyTimeoutMin = 250 * time.Millisecond
	readyTimeoutMax = 2 * time.Second
	// killTimeout bounds the SIGKILL Exec sends after its context ended.
	killTimeout = 5 * time.Second
	// stdinChunk is the most stdin one SendInput carries.
	stdinChunk = 256 << 10
)

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    connect.HTTPClient // adds token to every request
	files connect.HTTPClient // the same, for /files transfers
	proc  processconnect.ProcessClient
	fs    filesystemconnect.FilesystemClient
}

// Flow-control windows of the cleartext HTTP/2 connection to an agent:
// what the host buffers of one stream's output (and of all of them) that
// its reader has not taken yet, so a slow reader costs at most this much.
const (
	streamWindow = 256 << 10
	connWindow   = 4 << 20
)

// New returns a client for the agent at baseURL (like
// http://10.11.0.2:49983) that sends token with every request. A nil hc
// gets a client speaking cleartext HTTP/2 for RPCs, so concurrent streams
// share one connection, and HTTP/1.1 for file transfers, which then have a
// TCP connection each and no framing in the way; hc, when given, serves
// both.
func New(baseURL, token string, hc *http.Client) *Client {
	files := hc
	if hc == nil {
		var protocols http.Protocols
		protocols.SetUnencryptedHTTP2(true)
		hc = &http.Client{Transport: &http.Transport{Protocols: &protocols, HTTP2: &http.HTTP2Config{
			MaxReceiveBufferPerStream: streamWindow, MaxReceiveBufferPerConnection: connWindow,
		}}}
		files = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second,
			// Large writes: one segment per few KiB costs the guest's
			// emulated network dearly.
			WriteBufferSize: 256 << 10, ReadBufferSize: 64 << 10}}
	}
	base := strings.TrimRight(baseURL, "/")
	doer := &tokenDoer{hc: hc, token: token}
	// No gzip: compressing every chunk of output in a guest without
	// hardware acceleration costs far more than the host's own virtual
	// network saves (it held exec output to a few MiB/s).
	plain := connect.WithAcceptCompression("gzip", nil, nil)
	return &Client{
		base:  base,
		token: token,
		hc:    doer,
		files: &tokenDoer{hc: files, token: token},
		proc:  processconnect.NewProcessClient(doer, base, plain),
		fs:    filesystemconnect.NewFilesystemClient(doer, base, plain),
	}
}

// tokenDoer adds the access token to every request, Connect and plain.
type tokenDoer struct {
	hc    *http.Client
	token string
}

func (d *tokenDoer) Do(r *http.Request) (*http.Response, error) {
	if d.token != "" {
		r.Header.Set(tokenHeader, d.token)
	}
	return d.hc.Do(r)
}

// Health asks the agent whether it is up.
func (c *Client) Health(ctx context.Context) error {
	return c.call(ctx, http.MethodGet, "/health", nil, nil)
}

// Init sets the environment every later process starts with, hands the
// agent the client's token, which it then requires on every request, and
// moves the guest's clock forward to the host's when it is behind (as after
// a restore from a snapshot).
func (c *Client) Init(ctx context.Context, env map[string]string) error {
	return c.Rekey(ctx, env, c.token)
}

// Rekey is Init handing the agent token instead of the client's own, which
// the agent requires from then on: a guest restored from a snapshot wakes
// knowing the token of the sandbox it was taken from, and is given one of
// its own. The request itself still carries the client's token.
func (c *Client) Rekey(ctx context.Context, env map[string]string, token string) error {
	body, err := json.Marshal(struct {
		EnvVars     map[string]string `json:"envVars,omitempty"`
		AccessToken string            `json:"accessToken,omitempty"`
		Timestamp   time.Time         `json:"timestamp"`
	}{env, token, time.Now().UTC()})
	if err != nil {
		return fmt.Errorf("encode init request: %w", err)
	}
	return c.call(ctx, http.MethodPost, "/init", body, nil)
}

// Metrics returns the guest's resource use as envd reports it (GET
// /metrics); its CPU share covers the time since the previous call.
func (c *Client) Metrics(ctx context.Context) (proto.Metrics, error) {
	var m proto.Metrics
	err := c.call(ctx, http.MethodGet, "/metrics", nil, &m)
	return m, err
}

// call makes a plain HTTP request that expects a 2xx, decoding its JSON
// body into out when out is not nil.
func (c *Client) call(ctx context.Context, method, path string, body []byte, out any) error {
	op := strings.ToLower(method) + " " + c.base + path
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 && out != nil {
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
			return fmt.Errorf("%s: decode response: %w", op, err)
		}
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%s: %w", op, ErrUnauthorized)
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("%s: status %s: %s", op, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// WaitReady polls /health every ~20ms until the agent answers or ctx ends.
func (c *Client) WaitReady(ctx context.Context) error {
	timeout := readyTimeoutMin
	for {
		actx, cancel := context.WithTimeout(ctx, timeout)
		err := c.Health(actx)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			timeout = min(2*timeout, readyTimeoutMax)
		}
		t := time.NewTimer(readyInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for agent at %s: %w (last error: %v)", c.base, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// ExecRequest is a command to run to completion.
type ExecRequest struct {
	// Cmd is the program, resolved against the process's PATH.
	Cmd  string
	Args []string
	// Env is layered over the agent's default environment.
	Env map[string]string
	// Cwd is the working directory; "" means the agent's default.
	Cwd string
	// User runs the command as that guest user; "" is the agent's default.
	User string
	// Stdin is fed to the process, then closed; nil gives no stdin at all
	// (unless KeepStdin).
	Stdin []byte
	// KeepStdin leaves stdin open after Stdin, for SendStdin and
	// CloseStdin with the pid Started is given.
	KeepStdin bool
	// Started, when set, learns the process's pid as soon as it runs.
	Started func(pid uint32)
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code; -1 when a signal ended the process.
	Code int
	// Signaled reports that a signal, not exit, ended the process.
	Signaled bool
	// Status is the agent's description, like "exit status 1" or
	// "signal: killed".
	Status string
}

// Exec runs a command to completion, writing stdout/stderr to the writers as
// data arrives. When ctx ends first it kills the process (SIGKILL) and
// returns ctx.Err().
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdout, stderr io.Writer) (ExitStatus, error) {
	op := fmt.Sprintf("exec %q", req.Cmd)
	// A tag names the process before its pid is known, so it can be killed
	// even if ctx ends before the start event arrives.
	tag := newTag()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()

	withStdin := req.Stdin != nil || req.KeepStdin
	start := &pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: req.Cmd, Args: req.Args, Envs: req.Env},
		Tag:     &tag,
		Stdin:   &withStdin,
	}
	if req.Cwd != "" {
		start.Process.Cwd = &req.Cwd
	}
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
	// fail ends the command early: on ctx's end or a writer's failure the
	// process is killed, not left running unseen.
	fail := func(err error) (ExitStatus, error) {
		kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer kcancel()
		_, kerr := c.proc.SendSignal(kctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL}))
		if kerr != nil && connect.CodeOf(kerr) != connect.CodeNotFound {
			err = errors.Join(err, fmt.Errorf("kill process %v: %w", sel, kerr))
		}
		return ExitStatus{}, err
	}

	stream, err := c.proc.Start(sctx, asUser(connect.NewRequest(start), req.User))
	if err != nil {
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		return ExitStatus{}, c.reasonError(op, err)
	}
	defer stream.Close()

	stdinErr := make(chan error, 1)
	started := false
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			if started {
				continue
			}
			started = true
			sel = &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: ev.Start.GetPid()}}
			if req.Started != nil {
				req.Started(ev.Start.GetPid())
			}
			if withStdin {
				// Fed concurrently: a process that writes before it has
				// read all its input would otherwise deadlock with us.
				go func(sel *pb.ProcessSelector) { stdinErr <- c.feed(sctx, sel, req.Stdin, !req.KeepStdin) }(sel)
			}
		case *pb.ProcessEvent_Data:
			w, data := stdout, ev.Data.GetStdout()
			if _, ok := ev.Data.GetOutput().(*pb.ProcessEvent_DataEvent_Stderr); ok {
				w, data = stderr, ev.Data.GetStderr()
			}
			if w == nil {
				continue
			}
			if _, err := w.Write(data); err != nil {
				return fail(fmt.Errorf("%s: write output: %w", op, err))
			}
		case *pb.ProcessEvent_End:
			st := ExitStatus{Code: int(ev.End.GetExitCode()), Signaled: !ev.End.GetExited(), Status: ev.End.GetStatus()}
			var errs []error
			if ev.End.Error != nil {
				errs = append(errs, fmt.Errorf("%s: agent: %s", op, ev.End.GetError()))
			}
			if withStdin {
				if err := <-stdinErr; err != nil {
					errs = append(errs, err)
				}
			}
			return st, errors.Join(errs...)
		}
	}
	if ctx.Err() != nil {
		return fail(ctx.Err())
	}
	err = stream.Err()
	if err == nil {
		err = errors.New("stream ended without an end event")
	}
	if !started {
		// The agent refused the request (bad input, an unknown user,
		// token, shutdown): no process to kill.
		return ExitStatus{}, c.reasonError(op, err)
	}
	return fail(c.rpcError(op, err))
}

// feed writes data to a process's stdin, then closes it when asked. A
// process that ended or closed its stdin before reading everything is not
// an error, as with a shell pipe.
func (c *Client) feed(ctx context.Context, sel *pb.ProcessSelector, data []byte, close bool) error {
	ignore := func(err error) bool {
		code := connect.CodeOf(err)
		return code == connect.CodeNotFound || code == connect.CodeFailedPrecondition || ctx.Err() != nil
	}
	for len(data) > 0 {
		n := min(len(data), stdinChunk)
		in := &pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data[:n]}}}
		if _, err := c.proc.SendInput(ctx, connect.NewRequest(in)); err != nil {
			if ignore(err) {
				return nil
			}
			return c.rpcError("send stdin", err)
		}
		data = data[n:]
	}
	if !close {
		return nil
	}
	if _, err := c.proc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil && !ignore(err) {
		return c.rpcError("close stdin", err)
	}
	return nil
}

// ErrNoProcess: no running process has that pid, or its stdin is closed.
var ErrNoProcess = errors.New("no such process, or its stdin is closed")

// SendStdin writes data to the stdin of a running process started with
// KeepStdin (or to its terminal).
func (c *Client) SendStdin(ctx context.Context, pid uint32, data []byte) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	for len(data) > 0 {
		n := min(len(data), stdinChunk)
		in := &pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: data[:n]}}}
		if _, err := c.proc.SendInput(ctx, connect.NewRequest(in)); err != nil {
			return c.processError(fmt.Sprintf("send stdin to pid %d", pid), err)
		}
		data = data[n:]
	}
	return nil
}

// CloseStdin closes a running process's stdin, so it reads EOF.
func (c *Client) CloseStdin(ctx context.Context, pid uint32) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	if _, err := c.proc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
		return c.processError(fmt.Sprintf("close stdin of pid %d", pid), err)
	}
	return nil
}

// processError maps not found and a closed stdin to ErrNoProcess.
func (c *Client) processError(op string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeNotFound, connect.CodeFailedPrecondition:
		return fmt.Errorf("%s: %w: %w", op, ErrNoProcess, err)
	}
	return c.rpcError(op, err)
}

// rpcError wraps a Connect error, turning Unauthenticated into
// ErrUnauthorized.
func (c *Client) rpcError(op string, err error) error {
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		return fmt.Errorf("%s at %s: %w: %w", op, c.base, ErrUnauthorized, err)
	}
	return fmt.Errorf("%s at %s: %w", op, c.base, err)
}

// newTag returns a tag unique to one Exec.
func newTag() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "ember-exec-" + hex.EncodeToString(b[:])
}
