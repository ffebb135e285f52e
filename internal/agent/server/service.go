package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/creack/pty"

	pb "github.com/emberhq/ember/internal/agent/proto/process"
	"github.com/emberhq/ember/internal/agent/proto/process/processconnect"
)

// keepAliveHeader is how E2B clients ask for keepalive events on a stream,
// in whole seconds, so proxies do not close a quiet one.
const keepAliveHeader = "Keepalive-Ping-Interval"

// processService implements process.Process.
type processService struct {
	processconnect.UnimplementedProcessHandler
	s *Server
}

// Start runs a process and streams its events: start (pid), data as it is
// produced, then end. The process outlives the stream if the client leaves,
// but not the deadline the client gave (Connect-Timeout-Ms), as in envd.
func (ps *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	sp, err := ps.s.spec(req.Msg, userFromHeader(req.Header()))
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return connect.NewError(connect.CodeCanceled, err)
	}
	sub := newSubscriber()
	p, err := ps.s.procs.start(sp, sub)
	if err != nil {
		return startError(err)
	}
	defer p.unsubscribe(sub)
	if deadline, ok := ctx.Deadline(); ok {
		ps.s.procs.killAt(p, deadline)
	}
	return follow(ctx, p, sub, req.Header(), func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: ev})
	})
}

// Connect re-attaches to a running process: a start event with its pid,
// then the output it produces from now on and its end.
func (ps *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := ps.s.find(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	sub := newSubscriber()
	if !p.subscribe(sub) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("process %d has ended", p.pid))
	}
	defer p.unsubscribe(sub)
	return follow(ctx, p, sub, req.Header(), func(ev *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: ev})
	})
}

// follow sends a start event, then the subscriber's events until the end
// event, with keepalives at the pace the client asked for while it is idle.
func follow(ctx context.Context, p *proc, sub *subscriber, h http.Header, send func(*pb.ProcessEvent) error) error {
	sendEv := func(ev *pb.ProcessEvent) error {
		if err := send(ev); err != nil {
			return fmt.Errorf("send event of pid %d: %w", p.pid, err)
		}
		return nil
	}
	if err := sendEv(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	tick, stop := keepAliveTicker(h)
	defer stop()
	keepAlive := &pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}
	for {
		select {
		case ev, ok := <-sub.ch:
			if !ok {
				return nil
			}
			if err := sendEv(ev); err != nil {
				return err
			}
		case <-tick:
			if err := sendEv(keepAlive); err != nil {
				return err
			}
		case <-ctx.Done():
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

// keepAliveTicker ticks at the keepalive pace a request's header asks for;
// a nil channel (never ticking) when it asks for none.
func keepAliveTicker(h http.Header) (<-chan time.Time, func()) {
	every := keepAliveEvery(h.Get(keepAliveHeader))
	if every <= 0 {
		return nil, func() {}
	}
	t := time.NewTicker(every)
	return t.C, t.Stop
}

// Update resizes a process's terminal.
func (ps *processService) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := ps.s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty == nil {
		return connect.NewResponse(&pb.UpdateResponse{}), nil
	}
	size, err := winsize(req.Msg.GetPty())
	if err != nil {
		return nil, err
	}
	if err := p.resize(size); err != nil {
		return nil, inputError(err)
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// StreamInput writes a client stream of input to one process: a start
// message naming it, then data; keepalives are skipped.
func (ps *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			found, err := ps.s.find(ev.Start.GetProcess())
			if err != nil {
				return nil, err
			}
			p = found
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("input before the start message naming the process"))
			}
			if err := ps.s.input(ctx, p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, connect.NewError(connect.CodeOf(err), fmt.Errorf("receive input: %w", err))
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// List returns the processes that have not ended.
func (ps *processService) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	resp := &pb.ListResponse{}
	for _, p := range ps.s.procs.list() {
		resp.Processes = append(resp.Processes, &pb.ProcessInfo{Config: p.config, Pid: p.pid, Tag: p.tag})
	}
	return connect.NewResponse(resp), nil
}

// SendInput writes to a process's stdin.
func (ps *processService) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := ps.s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := ps.s.input(ctx, p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// input writes one ProcessInput to a process's stdin or terminal.
func (s *Server) input(ctx context.Context, p *proc, in *pb.ProcessInput) error {
	var err error
	switch in := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		err = p.writeInput(ctx, in.Stdin, false)
	case *pb.ProcessInput_Pty:
		err = p.writeInput(ctx, in.Pty, true)
	default:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("input is empty"))
	}
	if err != nil {
		return inputError(err)
	}
	return nil
}

// CloseStdin closes a process's stdin so it reads EOF. Closing a closed or
// never opened stdin succeeds.
func (ps *processService) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := ps.s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	p.closeStdin()
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

// SendSignal signals a process's whole process group.
func (ps *processService) SendSignal(_ context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := ps.s.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("unsupported signal %v", req.Msg.GetSignal()))
	}
	if err := p.signal(sig); err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// find returns the process a selector names, or a NotFound error.
func (s *Server) find(sel *pb.ProcessSelector) (*proc, error) {
	var what string
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		what = fmt.Sprintf("pid %d", v.Pid)
	case *pb.ProcessSelector_Tag:
		what = fmt.Sprintf("tag %q", v.Tag)
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector is empty"))
	}
	if p := s.procs.get(sel); p != nil {
		return p, nil
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with %s not found", what))
}

// spec validates a start request and resolves the user, command, working
// directory and environment.
func (s *Server) spec(req *pb.StartRequest, username string) (spec, error) {
	invalid := func(format string, args ...any) (spec, error) {
		return spec{}, rpcError(fmt.Errorf("%w: "+format, append([]any{errInvalid}, args...)...))
	}
	cfg := req.GetProcess()
	if cfg.GetCmd() == "" {
		return invalid("process.cmd is empty")
	}
	acct, err := s.account(username)
	if err != nil {
		return spec{}, rpcError(err)
	}
	var size *pty.Winsize
	if req.Pty != nil {
		if size, err = winsize(req.GetPty()); err != nil {
			return spec{}, err
		}
	}
	// The working directory: the request's (relative to the agent's
	// directory, else the user's home), else the agent's, else the home.
	home := s.dir
	if home == "" {
		home = acct.home
	}
	dir := home
	if cwd := cfg.GetCwd(); cwd != "" {
		dir = cwd
		if strings.HasPrefix(dir, "~") {
			if dir, err = acct.resolve(dir); err != nil {
				return invalid("cwd: %w", err)
			}
		} else if !filepath.IsAbs(dir) {
			dir = filepath.Join(home, dir)
		}
	}
	if _, err := os.Stat(dir); err != nil && cfg.GetCwd() == "" {
		dir = "/" // a user without a home directory starts at the root
	}
	if fi, err := os.Stat(dir); err != nil {
		return invalid("cwd %q: %w", dir, err)
	} else if !fi.IsDir() {
		return invalid("cwd %q is not a directory", dir)
	}
	user := acct.env()
	if size != nil {
		// A terminal's programs need to know what it speaks; the
		// agent's own TERM (if any) describes no terminal of theirs.
		user["TERM"] = "xterm-256color"
	}
	env := s.environ(user, cfg.GetEnvs())
	path, err := lookPath(cfg.GetCmd(), env, dir)
	if err != nil {
		return invalid("%w", err)
	}
	return spec{
		config: cfg,
		tag:    req.Tag,
		name:   cfg.GetCmd(),
		path:   path,
		args:   cfg.GetArgs(),
		env:    env,
		dir:    dir,
		stdin:  req.GetStdin(),
		pty:    size,
		cred:   acct.credential(),
	}, nil
}

// winsize converts a requested terminal size; a terminal needs both.
func winsize(p *pb.PTY) (*pty.Winsize, error) {
	cols, rows := p.GetSize().GetCols(), p.GetSize().GetRows()
	if cols == 0 || rows == 0 || cols > 0xffff || rows > 0xffff {
		return nil, rpcError(fmt.Errorf("%w: pty size %dx%d: want columns and rows from 1 to 65535", errInvalid, cols, rows))
	}
	return &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}, nil
}

// lookPath resolves a command name against the PATH the process will get
// (not the agent's own), as a shell would. Names with a slash are used as
// they are, relative to dir.
func lookPath(name string, env []string, dir string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	var path string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in PATH %q: %w", name, path, exec.ErrNotFound)
}

// startError maps a failure to start a process to a Connect code: the
// client's fault (no such file, not executable) or ours.
func startError(err error) error {
	switch {
	case errors.Is(err, errClosed):
		return connect.NewError(connect.CodeUnavailable, err)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC):
		return rpcError(fmt.Errorf("%w: %w", errInvalid, err))
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}

// inputError maps a failed write of input, or a resize, to a Connect code.
func inputError(err error) error {
	switch {
	case errors.Is(err, errNoStdin), errors.Is(err, errNoPTY), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.EIO), errors.Is(err, os.ErrClosed):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}
