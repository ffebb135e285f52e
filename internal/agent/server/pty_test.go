package server

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/emberhq/ember/internal/agent/proto/process"
)

// ptyReq starts a shell on a terminal of the given size.
func ptyReq(cols, rows uint32) *pb.StartRequest {
	return &pb.StartRequest{
		Process: &pb.ProcessConfig{Cmd: "/bin/sh", Envs: map[string]string{"PS1": "$ "}},
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: cols, Rows: rows}},
	}
}

// screen collects a terminal's output until want appears (or the stream
// ends or the deadline passes), returning everything read.
type screen struct {
	t   *testing.T
	buf bytes.Buffer
	end *pb.ProcessEvent_EndEvent
	rcv func() (*pb.ProcessEvent, bool)
}

func (s *screen) waitFor(want string) string {
	s.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(s.buf.String(), want) {
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q on the terminal; it shows %q", want, s.buf.String())
		}
		ev, ok := s.rcv()
		if !ok {
			s.t.Fatalf("stream ended before %q; terminal shows %q", want, s.buf.String())
		}
		if d := ev.GetData(); d != nil {
			if len(d.GetStdout())+len(d.GetStderr()) > 0 {
				s.t.Fatalf("terminal output came as stdout/stderr: %v", d)
			}
			s.buf.Write(d.GetPty())
		}
		if e := ev.GetEnd(); e != nil {
			s.end = e
		}
	}
	return s.buf.String()
}

func ptyInput(sel *pb.ProcessSelector, data string) *connect.Request[pb.SendInputRequest] {
	return connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte(data)}}})
}

// TestPTY: a shell on a terminal echoes input, sees its size change with
// Update, and ends with its exit code; a second client re-attaches with
// Connect and receives the output from then on.
func TestPTY(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{Dir: t.TempDir()})
	pc := procClient(t, url, "")
	stream, sel := started(t, pc, connect.NewRequest(ptyReq(80, 24)))
	sc := &screen{t: t, rcv: func() (*pb.ProcessEvent, bool) {
		if !stream.Receive() {
			return nil, false
		}
		return stream.Msg().GetEvent(), true
	}}
	ctx := t.Context()
	send := func(s string) {
		t.Helper()
		if _, err := pc.SendInput(ctx, ptyInput(sel, s)); err != nil {
			t.Fatalf("send %q: %v", s, err)
		}
	}
	send("tty; stty size; echo TERM=$TERM\n")
	out := sc.waitFor("TERM=xterm-256color")
	if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "24 80") {
		t.Fatalf("terminal shows %q, want a /dev/pts name and 24 80", out)
	}

	if _, err := pc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 120, Rows: 40}}})); err != nil {
		t.Fatalf("update: %v", err)
	}
	send("stty size\n")
	sc.waitFor("40 120")

	// Re-attach: the new stream starts with the pid, then later output.
	cs, err := pc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: sel}))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if !cs.Receive() || cs.Msg().GetEvent().GetStart().GetPid() != sel.GetPid() {
		t.Fatalf("connect: first event %v, %v; want start with pid %d", cs.Msg(), cs.Err(), sel.GetPid())
	}
	attached := &screen{t: t, rcv: func() (*pb.ProcessEvent, bool) {
		if !cs.Receive() {
			return nil, false
		}
		return cs.Msg().GetEvent(), true
	}}
	// Both streams are read concurrently: the agent holds output until
	// every subscriber has taken it.
	go func() {
		for stream.Receive() {
		}
	}()
	send("echo again-$((6*7)); exit 7\n")
	attached.waitFor("again-42")
	for attached.end == nil {
		ev, ok := attached.rcv()
		if !ok {
			t.Fatalf("connect stream ended without an end event: %v", cs.Err())
		}
		attached.end = ev.GetEnd()
	}
	if attached.end.GetExitCode() != 7 {
		t.Fatalf("end = %v, want exit code 7", attached.end)
	}

	// An ended process can be neither attached to nor resized.
	if _, err := pc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 1, Rows: 1}}})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("update after exit = %v, want NotFound", err)
	}
}

// TestStreamInputAndNoPTY: a client stream of input reaches a process's
// stdin; terminal input and resizes of a process without one are refused.
func TestStreamInputAndNoPTY(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	ctx := t.Context()
	stdin := true
	req := sh("cat")
	req.Stdin = &stdin
	stream, sel := started(t, pc, connect.NewRequest(req))

	in := pc.StreamInput(ctx)
	msgs := []*pb.StreamInputRequest{
		{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: sel}}},
		{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}},
		{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("streamed ")}}}}},
		{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("input\n")}}}}},
	}
	for _, m := range msgs {
		if err := in.Send(m); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	if _, err := in.CloseAndReceive(); err != nil {
		t.Fatalf("stream input: %v", err)
	}
	if _, err := pc.SendInput(ctx, ptyInput(sel, "x")); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("pty input to a piped process = %v, want FailedPrecondition", err)
	}
	if _, err := pc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 10, Rows: 10}}})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("resize of a piped process = %v, want FailedPrecondition", err)
	}
	if _, err := pc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
		t.Fatal(err)
	}
	var out string
	for stream.Receive() {
		out += string(stream.Msg().GetEvent().GetData().GetStdout())
	}
	if out != "streamed input\n" {
		t.Fatalf("cat printed %q", out)
	}
}

// TestDeadlineKillsProcess: a Start whose client set a deadline
// (Connect-Timeout-Ms) does not outlive it, as envd's do not.
func TestDeadlineKillsProcess(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	stream, err := pc.Start(ctx, connect.NewRequest(sh("sleep 30")))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	pid := int(stream.Msg().GetEvent().GetStart().GetPid())
	stream.Close()
	deadline := time.Now().Add(10 * time.Second)
	for running(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still running 10s after its deadline", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConnectByTag: a process started with a tag can be re-attached to by
// that tag, and an ended one cannot.
func TestConnectByTag(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	tag := "re-attach-me"
	req := sh("read line; echo got $line")
	stdin := true
	req.Stdin, req.Tag = &stdin, &tag
	first, sel := started(t, pc, connect.NewRequest(req))
	go func() {
		for first.Receive() {
		}
	}()
	byTag := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
	cs, err := pc.Connect(t.Context(), connect.NewRequest(&pb.ConnectRequest{Process: byTag}))
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if !cs.Receive() || cs.Msg().GetEvent().GetStart().GetPid() != sel.GetPid() {
		t.Fatalf("connect by tag: %v, %v; want start of pid %d", cs.Msg(), cs.Err(), sel.GetPid())
	}
	if _, err := pc.SendInput(t.Context(), stdinReq(byTag, "hello\n")); err != nil {
		t.Fatal(err)
	}
	var out string
	var end *pb.ProcessEvent_EndEvent
	for cs.Receive() {
		out += string(cs.Msg().GetEvent().GetData().GetStdout())
		if e := cs.Msg().GetEvent().GetEnd(); e != nil {
			end = e
		}
	}
	if out != "got hello\n" || end == nil || end.GetExitCode() != 0 {
		t.Fatalf("re-attached stream: %q, end %v, %v", out, end, cs.Err())
	}
	again, err := pc.Connect(t.Context(), connect.NewRequest(&pb.ConnectRequest{Process: byTag}))
	if err == nil {
		again.Receive()
		err = again.Err()
		again.Close()
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("connect to an ended process = %v, want NotFound", err)
	}
}
