package agent

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	pb "github.com/emberhq/ember/internal/agent/proto/process"
)

// TerminalRequest is a program to run on a new terminal.
type TerminalRequest struct {
	// Cmd is the program; "" runs /bin/bash -i -l, as E2B's terminals do.
	Cmd        string
	Args       []string
	Env        map[string]string
	Cwd        string
	User       string
	Cols, Rows uint32
}

// Terminal is a process on a terminal in the sandbox, read with Recv until
// it ends. The process lives until it exits or Close kills it.
type Terminal struct {
	c      *Client
	pid    uint32
	stream *connect.ServerStreamForClient[pb.StartResponse]
	cancel context.CancelFunc
}

// StartTerminal runs a program on a new terminal of the given size.
func (c *Client) StartTerminal(ctx context.Context, req TerminalRequest) (*Terminal, error) {
	if req.Cmd == "" {
		req.Cmd, req.Args = "/bin/bash", []string{"-i", "-l"}
	}
	start := &pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: req.Cmd, Args: req.Args, Envs: req.Env},
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: req.Cols, Rows: req.Rows}},
	}
	if req.Cwd != "" {
		start.Process.Cwd = &req.Cwd
	}
	// The stream outlives the call that started it, not the caller's
	// context: the terminal ends with Close or its program.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stream, err := c.proc.Start(sctx, asUser(connect.NewRequest(start), req.User))
	if err != nil {
		cancel()
		return nil, c.reasonError("start terminal", err)
	}
	for stream.Receive() {
		if s := stream.Msg().GetEvent().GetStart(); s != nil {
			return &Terminal{c: c, pid: s.GetPid(), stream: stream, cancel: cancel}, nil
		}
	}
	err = stream.Err()
	stream.Close()
	cancel()
	if err == nil {
		err = errors.New("stream ended before the start event")
	}
	return nil, c.reasonError("start terminal", err)
}

// Pid is the terminal's process.
func (t *Terminal) Pid() uint32 { return t.pid }

// Recv returns the next output of the terminal, or how its program ended
// (then data is nil and st set; later calls return an error).
func (t *Terminal) Recv() (data []byte, st *ExitStatus, err error) {
	for t.stream.Receive() {
		switch ev := t.stream.Msg().GetEvent().GetEvent().(type) {
		case *pb.ProcessEvent_Data:
			if d := ev.Data.GetPty(); len(d) > 0 {
				return d, nil, nil
			}
		case *pb.ProcessEvent_End:
			return nil, &ExitStatus{Code: int(ev.End.GetExitCode()), Signaled: !ev.End.GetExited(), Status: ev.End.GetStatus()}, nil
		}
	}
	if err := t.stream.Err(); err != nil {
		return nil, nil, t.c.rpcError(fmt.Sprintf("read terminal of pid %d", t.pid), err)
	}
	return nil, nil, fmt.Errorf("read terminal of pid %d: stream ended without an end event", t.pid)
}

// Write sends keystrokes to the terminal.
func (t *Terminal) Write(ctx context.Context, p []byte) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: t.pid}}
	in := &pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: p}}}
	if _, err := t.c.proc.SendInput(ctx, connect.NewRequest(in)); err != nil {
		return t.c.processError(fmt.Sprintf("write terminal of pid %d", t.pid), err)
	}
	return nil
}

// Resize changes the terminal's size; its program gets SIGWINCH.
func (t *Terminal) Resize(ctx context.Context, cols, rows uint32) error {
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: t.pid}}
	req := &pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: cols, Rows: rows}}}
	if _, err := t.c.proc.Update(ctx, connect.NewRequest(req)); err != nil {
		if connect.CodeOf(err) == connect.CodeInvalidArgument {
			return t.c.reasonError(fmt.Sprintf("resize terminal of pid %d", t.pid), err)
		}
		return t.c.processError(fmt.Sprintf("resize terminal of pid %d", t.pid), err)
	}
	return nil
}

// Close kills the terminal's program (its process group) if it still runs
// and ends the stream.
func (t *Terminal) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: t.pid}}
	_, err := t.c.proc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL}))
	t.stream.Close()
	t.cancel()
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return t.c.rpcError(fmt.Sprintf("kill terminal of pid %d", t.pid), err)
	}
	return nil
}
