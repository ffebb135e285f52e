package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/emberhq/ember/internal/agent/proto/filesystem"
	"github.com/emberhq/ember/internal/agent/proto/filesystem/filesystemconnect"
	pb "github.com/emberhq/ember/internal/agent/proto/process"
	"github.com/emberhq/ember/internal/agent/proto/process/processconnect"
)

// serve runs a server on a random loopback port until the test ends and
// returns its base URL.
func serve(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

// h2c is a client speaking cleartext HTTP/2 with prior knowledge. Its idle
// connections are closed before the server shuts down (cleanups run last
// registered first), which spares the server HTTP/2's one-second wait for a
// client to hang up after GOAWAY.
func h2c(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// tokenClient adds a token header to every request.
type tokenClient struct {
	hc    *http.Client
	token string
}

func (c tokenClient) Do(r *http.Request) (*http.Response, error) {
	if c.token != "" {
		r.Header.Set(TokenHeader, c.token)
	}
	return c.hc.Do(r)
}

func procClient(t *testing.T, url, token string) processconnect.ProcessClient {
	return processconnect.NewProcessClient(tokenClient{h2c(t), token}, url)
}

// request sends a plain HTTP request with the token (when not empty) and
// returns the answer's status and body.
func request(t *testing.T, method, url, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set(TokenHeader, token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// result is everything a Start stream delivered.
type result struct {
	pid            uint32
	stdout, stderr string
	end            *pb.ProcessEvent_EndEvent
	order          []string // event kinds in arrival order
}

// run starts a process and collects its stream to the end.
func run(t *testing.T, pc processconnect.ProcessClient, req *pb.StartRequest) (result, error) {
	t.Helper()
	stream, err := pc.Start(t.Context(), connect.NewRequest(req))
	if err != nil {
		return result{}, err
	}
	defer stream.Close()
	var r result
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			r.pid = ev.Start.GetPid()
			r.order = append(r.order, "start")
		case *pb.ProcessEvent_Data:
			r.stdout += string(ev.Data.GetStdout())
			r.stderr += string(ev.Data.GetStderr())
			if r.order[len(r.order)-1] != "data" {
				r.order = append(r.order, "data")
			}
		case *pb.ProcessEvent_End:
			r.end = ev.End
			r.order = append(r.order, "end")
		}
	}
	return r, stream.Err()
}

// started opens a Start stream and reads its start event; it returns the
// stream and a selector for the new process. The stream lives until the
// test ends.
func started(t *testing.T, pc processconnect.ProcessClient, req *connect.Request[pb.StartRequest]) (*connect.ServerStreamForClient[pb.StartResponse], *pb.ProcessSelector) {
	t.Helper()
	stream, err := pc.Start(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stream.Close() })
	if !stream.Receive() {
		t.Fatalf("no start event: %v", stream.Err())
	}
	pid := stream.Msg().GetEvent().GetStart().GetPid()
	return stream, &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

// stdinReq is a SendInput request for sel.
func stdinReq(sel *pb.ProcessSelector, data string) *connect.Request[pb.SendInputRequest] {
	in := &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte(data)}}
	return connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: in})
}

func sh(script string) *pb.StartRequest {
	return &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}
}

func TestStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, url := serve(t, Config{Dir: dir, Env: []string{"PATH=/usr/bin:/bin", "BASE=base"}})
	pc := procClient(t, url, "")
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	withEnv := func(r *pb.StartRequest, env map[string]string) *pb.StartRequest {
		r.Process.Envs = env
		return r
	}
	withCwd := func(r *pb.StartRequest, cwd string) *pb.StartRequest {
		r.Process.Cwd = &cwd
		return r
	}
	tests := []struct {
		name       string
		req        *pb.StartRequest
		stdout     string
		stderr     string
		code       int32
		exited     bool
		status     string
		wantCode   connect.Code // non-zero: Start must fail so
		wantEvents string
	}{
		{name: "echo", req: sh("echo hello"), stdout: "hello\n", exited: true, status: "exit status 0", wantEvents: "start data end"},
		{name: "no output", req: sh("true"), exited: true, status: "exit status 0", wantEvents: "start end"},
		{name: "env from request", req: withEnv(sh(`echo "$GREETING"`), map[string]string{"GREETING": "hi there"}), stdout: "hi there\n", exited: true, status: "exit status 0"},
		{name: "request env wins over base", req: withEnv(sh(`echo "$BASE"`), map[string]string{"BASE": "mine"}), stdout: "mine\n", exited: true, status: "exit status 0"},
		{name: "base env", req: sh(`echo "$BASE"`), stdout: "base\n", exited: true, status: "exit status 0"},
		{name: "default cwd", req: sh("pwd"), stdout: dir + "\n", exited: true, status: "exit status 0"},
		{name: "absolute cwd", req: withCwd(sh("pwd"), sub), stdout: sub + "\n", exited: true, status: "exit status 0"},
		{name: "relative cwd", req: withCwd(sh("pwd"), "sub"), stdout: sub + "\n", exited: true, status: "exit status 0"},
		{name: "stdout and stderr apart", req: sh("echo out; echo err >&2; echo out2"), stdout: "out\nout2\n", stderr: "err\n", exited: true, status: "exit status 0"},
		{name: "exit code", req: sh("echo bye; exit 3"), stdout: "bye\n", code: 3, exited: true, status: "exit status 3"},
		{name: "killed by SIGKILL", req: sh("kill -KILL $$"), code: -1, status: "signal: killed"},
		{name: "command on PATH", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "echo", Args: []string{"a", "b"}}}, stdout: "a b\n", exited: true, status: "exit status 0"},
		{name: "no stdin reads EOF", req: sh("cat; echo done"), stdout: "done\n", exited: true, status: "exit status 0"},
		{name: "missing command", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "no-such-command-ember"}}, wantCode: connect.CodeInvalidArgument},
		{name: "missing cwd", req: withCwd(sh("pwd"), "/no/such/dir"), wantCode: connect.CodeInvalidArgument},
		{name: "empty cmd", req: &pb.StartRequest{Process: &pb.ProcessConfig{}}, wantCode: connect.CodeInvalidArgument},
		{name: "pty without a size", req: &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh"}, Pty: &pb.PTY{}}, wantCode: connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := run(t, pc, tt.req)
			if tt.wantCode != 0 {
				if connect.CodeOf(err) != tt.wantCode {
					t.Fatalf("got error %v (code %v), want code %v", err, connect.CodeOf(err), tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			if r.pid == 0 || r.end == nil {
				t.Fatalf("pid %d, end %v: want both", r.pid, r.end)
			}
			if r.stdout != tt.stdout || r.stderr != tt.stderr {
				t.Errorf("stdout %q stderr %q, want %q %q", r.stdout, r.stderr, tt.stdout, tt.stderr)
			}
			if e := r.end; e.GetExitCode() != tt.code || e.GetExited() != tt.exited || e.GetStatus() != tt.status || e.Error != nil {
				t.Errorf("end = %v, want exit_code %d exited %v status %q", e, tt.code, tt.exited, tt.status)
			}
			if tt.wantEvents != "" && strings.Join(r.order, " ") != tt.wantEvents {
				t.Errorf("events %v, want %s", r.order, tt.wantEvents)
			}
		})
	}
}

// TestOutputStreamsBeforeExit proves output is forwarded as it is
// produced: the process cannot end until the test answers its first line.
func TestOutputStreamsBeforeExit(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	stdin := true
	req := sh("echo first; read reply; echo got $reply")
	req.Stdin = &stdin
	stream, sel := started(t, pc, connect.NewRequest(req))
	var out string
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().GetEvent().(type) {
		case *pb.ProcessEvent_Data:
			out += string(ev.Data.GetStdout())
			if out == "first\n" {
				if _, err := pc.SendInput(t.Context(), stdinReq(sel, "pong\n")); err != nil {
					t.Fatalf("send input: %v", err)
				}
			}
		case *pb.ProcessEvent_End:
			if out != "first\ngot pong\n" || ev.End.GetExitCode() != 0 {
				t.Fatalf("output %q, exit %d", out, ev.End.GetExitCode())
			}
			return
		}
	}
	t.Fatalf("stream ended without end event: %v (output %q)", stream.Err(), out)
}

// TestStdin feeds stdin by pid and by tag, closes it and sees it echoed.
func TestStdin(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	tests := []struct {
		name string
		sel  func(pid uint32, tag string) *pb.ProcessSelector
	}{
		{"by pid", func(pid uint32, _ string) *pb.ProcessSelector {
			return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
		}},
		{"by tag", func(_ uint32, tag string) *pb.ProcessSelector {
			return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdin, tag := true, "tag-"+strings.ReplaceAll(tt.name, " ", "-")
			req := &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Stdin: &stdin, Tag: &tag}
			stream, bypid := started(t, pc, connect.NewRequest(req))
			sel := tt.sel(bypid.GetPid(), tag)
			for _, chunk := range []string{"one ", "two\n"} {
				if _, err := pc.SendInput(t.Context(), stdinReq(sel, chunk)); err != nil {
					t.Fatalf("send input: %v", err)
				}
			}
			if _, err := pc.CloseStdin(t.Context(), connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
				t.Fatalf("close stdin: %v", err)
			}
			var out string
			for stream.Receive() {
				out += string(stream.Msg().GetEvent().GetData().GetStdout())
				if end := stream.Msg().GetEvent().GetEnd(); end != nil && end.GetExitCode() != 0 {
					t.Errorf("exit %d", end.GetExitCode())
				}
			}
			if out != "one two\n" {
				t.Fatalf("echoed %q, want %q", out, "one two\n")
			}
		})
	}
}

// TestSignalAndList runs a process that ignores nothing and only ends when
// signalled; List shows it while it runs, and the signal reaches the whole
// process group (the sleeping grandchild too).
func TestSignalAndList(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	tests := []struct {
		name   string
		signal pb.Signal
		status string
	}{
		{"sigterm", pb.Signal_SIGNAL_SIGTERM, "signal: terminated"},
		{"sigkill", pb.Signal_SIGNAL_SIGKILL, "signal: killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			tag := "sig-" + tt.name
			req := sh("sleep 60 & echo $!; wait")
			req.Tag = &tag
			stream, sel := started(t, pc, connect.NewRequest(req))
			pid := sel.GetPid()
			if !stream.Receive() {
				t.Fatalf("no output: %v", stream.Err())
			}
			var child int
			if _, err := fmt.Sscan(string(stream.Msg().GetEvent().GetData().GetStdout()), &child); err != nil {
				t.Fatalf("child pid: %v", err)
			}

			list, err := pc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range list.Msg.GetProcesses() {
				if p.GetPid() == pid && p.GetTag() == tag && p.GetConfig().GetCmd() == "/bin/sh" {
					found = true
				}
			}
			if !found {
				t.Fatalf("pid %d tag %s not in list %v", pid, tag, list.Msg.GetProcesses())
			}

			if _, err := pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: tt.signal})); err != nil {
				t.Fatalf("send signal: %v", err)
			}
			var end *pb.ProcessEvent_EndEvent
			for stream.Receive() {
				if e := stream.Msg().GetEvent().GetEnd(); e != nil {
					end = e
				}
			}
			if end == nil || end.GetExited() || end.GetExitCode() != -1 || end.GetStatus() != tt.status {
				t.Fatalf("end = %v, want signalled %q", end, tt.status)
			}
			// Its pipes close a moment before it turns zombie.
			for deadline := time.Now().Add(5 * time.Second); running(child); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("grandchild %d still running after the group was signalled", child)
				}
			}
			_, err = pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: tt.signal}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("signal after end: %v, want NotFound", err)
			}
		})
	}
}

// TestUnknownProcess: every by-process call on a pid or tag that is not
// running answers NotFound.
func TestUnknownProcess(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	ctx := context.Background()
	for _, sel := range []*pb.ProcessSelector{
		{Selector: &pb.ProcessSelector_Pid{Pid: 1 << 30}},
		{Selector: &pb.ProcessSelector_Tag{Tag: "nobody"}},
	} {
		calls := map[string]error{}
		_, calls["SendInput"] = pc.SendInput(ctx, stdinReq(sel, "x"))
		_, calls["SendSignal"] = pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL}))
		_, calls["CloseStdin"] = pc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel}))
		for name, err := range calls {
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("%s(%v) = %v, want NotFound", name, sel, err)
			}
		}
	}
}

// TestStdinNotOpen: input to a process started without stdin is refused.
func TestStdinNotOpen(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	_, sel := started(t, pc, connect.NewRequest(sh("sleep 30")))
	_, err := pc.SendInput(t.Context(), stdinReq(sel, "x"))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("send input = %v, want FailedPrecondition", err)
	}
	if _, err := pc.SendSignal(t.Context(), connect.NewRequest(&pb.SendSignalRequest{Process: sel, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
}

// TestCloseKillsProcesses: shutting the server down kills what it started.
func TestCloseKillsProcesses(t *testing.T) {
	t.Parallel()
	s, url := serve(t, Config{})
	pc := procClient(t, url, "")
	stream, _ := started(t, pc, connect.NewRequest(sh("sleep 60")))
	s.Close()
	var end *pb.ProcessEvent_EndEvent
	for stream.Receive() {
		end = stream.Msg().GetEvent().GetEnd()
	}
	if end.GetStatus() != "signal: killed" {
		t.Fatalf("end = %v, want killed", end)
	}
	if _, err := run(t, pc, sh("true")); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("start after close = %v, want Unavailable", err)
	}
}

// TestKeepAlive: a stream that asks for keepalives gets them while the
// process is quiet.
func TestKeepAlive(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	pc := procClient(t, url, "")
	req := connect.NewRequest(sh("sleep 1.5"))
	req.Header().Set(keepAliveHeader, "1")
	stream, _ := started(t, pc, req)
	keepalives := 0
	for stream.Receive() {
		if stream.Msg().GetEvent().GetKeepalive() != nil {
			keepalives++
		}
	}
	if err := stream.Err(); err != nil || keepalives == 0 {
		t.Fatalf("keepalives %d, err %v: want at least one", keepalives, err)
	}
}

// TestInitAndToken covers /init (default env, token) and the token check
// on plain HTTP and on both RPC kinds.
func TestInitAndToken(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	post := func(token, body string) (int, string) {
		status, b := request(t, http.MethodPost, url+"/init", token, body)
		return status, string(b)
	}
	health := func() int {
		resp, err := http.Get(url + "/health")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	// Before a token is set, anything goes.
	if r, err := run(t, procClient(t, url, ""), sh("true")); err != nil || r.end == nil {
		t.Fatalf("start before init: %v", err)
	}
	if code, body := post("", `{"envVars":{"FROM_INIT":"one","KEEP":"k"},"accessToken":"secret"}`); code != http.StatusNoContent {
		t.Fatalf("init = %d %s", code, body)
	}
	tests := []struct {
		name  string
		token string
		code  connect.Code
	}{
		{"missing token", "", connect.CodeUnauthenticated},
		{"wrong token", "guess", connect.CodeUnauthenticated},
		{"right token", "secret", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pc := procClient(t, url, tt.token)
			_, err := pc.List(context.Background(), connect.NewRequest(&pb.ListRequest{}))
			if connect.CodeOf(err) != tt.code && !(tt.code == 0 && err == nil) {
				t.Errorf("list (unary) = %v, want code %v", err, tt.code)
			}
			_, err = run(t, pc, sh("true"))
			if connect.CodeOf(err) != tt.code && !(tt.code == 0 && err == nil) {
				t.Errorf("start (stream) = %v, want code %v", err, tt.code)
			}
			if tt.code != 0 {
				code, body := post(tt.token, `{}`)
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if code != http.StatusUnauthorized || json.Unmarshal([]byte(body), &e) != nil || e.Code != 401 || e.Message == "" {
					t.Errorf("init = %d %s, want 401 with a JSON error", code, body)
				}
			}
		})
	}
	if code := health(); code != http.StatusNoContent {
		t.Errorf("health without token = %d, want 204", code)
	}

	// A second /init with the token merges variables and may rotate it.
	if code, body := post("secret", `{"envVars":{"KEEP":"changed"},"accessToken":"rotated"}`); code != http.StatusNoContent {
		t.Fatalf("re-init = %d %s", code, body)
	}
	pc := procClient(t, url, "rotated")
	req := sh(`echo "$FROM_INIT $KEEP $MINE"`)
	req.Process.Envs = map[string]string{"MINE": "mine", "KEEP": "request"}
	r, err := run(t, pc, req)
	if err != nil || r.stdout != "one request mine\n" {
		t.Fatalf("env after init: %q, %v", r.stdout, err)
	}
	r, err = run(t, pc, sh(`echo "$KEEP"`))
	if err != nil || r.stdout != "changed\n" {
		t.Fatalf("merged init env: %q, %v", r.stdout, err)
	}
}

// TestProtocols: the agent answers Connect over HTTP/1.1 and cleartext
// HTTP/2, both services included.
func TestProtocols(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	tests := []struct {
		name  string
		hc    *http.Client
		proto int
	}{
		{"http1", &http.Client{}, 1},
		{"h2c", h2c(t), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var seen int
			hc := doerFunc(func(r *http.Request) (*http.Response, error) {
				resp, err := tt.hc.Do(r)
				if err == nil {
					seen = resp.ProtoMajor
				}
				return resp, err
			})
			r, err := run(t, processconnect.NewProcessClient(hc, url), sh("echo $((6*7))"))
			if err != nil || r.stdout != "42\n" {
				t.Fatalf("run: %q %v", r.stdout, err)
			}
			if seen != tt.proto {
				t.Errorf("spoke HTTP/%d, want HTTP/%d", seen, tt.proto)
			}
			fc := filesystemconnect.NewFilesystemClient(hc, url)
			st, err := fc.Stat(context.Background(), connect.NewRequest(&filesystem.StatRequest{Path: "/"}))
			if err != nil || st.Msg.GetEntry().GetType() != filesystem.FileType_FILE_TYPE_DIRECTORY {
				t.Errorf("stat / = %v, %v, want a directory", st, err)
			}
		})
	}
}

// running reports whether pid exists and is not a zombie waiting for
// whichever process inherited it to reap it.
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesized command name.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || !strings.HasPrefix(string(stat[i+1:]), " Z")
}

type doerFunc func(*http.Request) (*http.Response, error)

func (f doerFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

// TestLargeOutput: output larger than a pipe buffer and a read chunk
// arrives whole and in order.
func TestLargeOutput(t *testing.T) {
	t.Parallel()
	_, url := serve(t, Config{})
	r, err := run(t, procClient(t, url, ""), sh("head -c 1000000 /dev/zero | tr '\\0' x"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("x", 1000000); r.stdout != want {
		t.Fatalf("got %d bytes (%q…), want 1000000 x", len(r.stdout), r.stdout[:min(len(r.stdout), 20)])
	}
	if r.end.GetStatus() != "exit status 0" {
		t.Fatalf("end %v", r.end)
	}
}

func TestKeepAliveEvery(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", 0},
		{"50", 50 * time.Second},
		{"0", 0},
		{"-3", 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := keepAliveEvery(tt.header); got != tt.want {
			t.Errorf("keepAliveEvery(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

func TestInitMovesTheClockForwardOnly(t *testing.T) {
	var got []time.Time
	setClock = func(ts time.Time) error { got = append(got, ts); return nil }
	t.Cleanup(func() { setClock = setSystemClock })
	_, url := serve(t, Config{})
	future, past := time.Now().Add(time.Hour).UTC(), time.Now().Add(-time.Hour).UTC()
	for _, ts := range []time.Time{future, past} {
		body := fmt.Sprintf(`{"timestamp":%q}`, ts.Format(time.RFC3339Nano))
		resp, err := http.Post(url+"/init", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("init = %d", resp.StatusCode)
		}
	}
	if len(got) != 1 || !got[0].Equal(future) {
		t.Fatalf("clock set to %v, want only %v", got, future)
	}
}
