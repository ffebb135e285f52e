package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/emberhq/ember/internal/agent/proto/process"
	"github.com/emberhq/ember/internal/agent/proto/process/processconnect"
)

// keepAliveHeader is how E2B clients ask for keepalive events on a stream,
// in whole seconds, so proxies do not close a quiet one.
const keepAliveHeader = "Keepalive-Ping-Interval"

// processService implements process.Process. Connect, Update and
// StreamInput answer Unimplemented for now.
type processService struct {
	processconnect.UnimplementedProcessHandler
	s *Server
}

// Start runs a process and streams its events: start (pid), data as it is
// produced, then end. The process outlives the stream if the client leaves.
func (ps *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	sp, err := ps.s.spec(req.Msg)
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

	send := func(ev *pb.ProcessEvent) error {
		if err := stream.Send(&pb.StartResponse{Event: ev}); err != nil {
			return fmt.Errorf("send event of pid %d: %w", p.pid, err)
		}
		return nil
	}
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	var tick <-chan time.Time // nil: no keepalives
	if every := keepAliveEvery(req.Header().Get(keepAliveHeader)); every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	keepAlive := &pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}
	for {
		select {
		case ev, ok := <-sub.ch:
			if !ok {
				return nil
			}
			if err := send(ev); err != nil {
				return err
			}
		case <-tick:
			if err := send(keepAlive); err != nil {
				return err
			}
		case <-ctx.Done():
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
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
	switch in := req.Msg.GetInput().GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		if err := p.writeStdin(ctx, in.Stdin); err != nil {
			return nil, stdinError(err)
		}
	case *pb.ProcessInput_Pty:
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has no pty", p.pid))
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("input is empty"))
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
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

// spec validates a start request and resolves the command, working
// directory and environment.
func (s *Server) spec(req *pb.StartRequest) (spec, error) {
	invalid := func(format string, args ...any) (spec, error) {
		return spec{}, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
	}
	if req.Pty != nil {
		return spec{}, connect.NewError(connect.CodeUnimplemented, errors.New("pty is not supported yet"))
	}
	cfg := req.GetProcess()
	if cfg.GetCmd() == "" {
		return invalid("process.cmd is empty")
	}
	dir := s.dir
	if cwd := cfg.GetCwd(); cwd != "" {
		dir = cwd
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(s.dir, dir)
		}
	}
	if fi, err := os.Stat(dir); err != nil {
		return invalid("cwd %q: %w", dir, err)
	} else if !fi.IsDir() {
		return invalid("cwd %q is not a directory", dir)
	}
	env := s.environ(cfg.GetEnvs())
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
	}, nil
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
		return connect.NewError(connect.CodeInvalidArgument, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}

// stdinError maps a failed stdin write to a Connect code.
func stdinError(err error) error {
	switch {
	case errors.Is(err, errNoStdin), errors.Is(err, syscall.EPIPE), errors.Is(err, os.ErrClosed):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}
