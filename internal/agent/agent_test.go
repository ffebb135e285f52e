package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/agent/server"
	"github.com/emberhq/ember/internal/usage"
)

// startAgent runs the real agent on a random loopback port speaking
// HTTP/1.1 and cleartext HTTP/2, and returns its base URL.
func startAgent(t testing.TB, cfg server.Config) string {
	t.Helper()
	s := server.New(cfg)
	ts := httptest.NewUnstartedServer(s.Handler())
	ts.Config.Protocols = new(http.Protocols)
	ts.Config.Protocols.SetHTTP1(true)
	ts.Config.Protocols.SetUnencryptedHTTP2(true)
	ts.Start()
	t.Cleanup(func() {
		s.Close()
		ts.Close()
	})
	return ts.URL
}

// newClient returns a client whose idle connections close before the agent
// shuts down.
func newClient(t *testing.T, url, token string) *agent.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return agent.New(url, token, &http.Client{Transport: tr})
}

func TestExec(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	url := startAgent(t, server.Config{Dir: "/"})
	c := newClient(t, url, "tok")
	if err := c.Init(t.Context(), map[string]string{"FROM_INIT": "init", "SHADOWED": "init"}); err != nil {
		t.Fatalf("init: %v", err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: many stdin chunks
	sh := func(script string) agent.ExecRequest {
		return agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script}}
	}
	with := func(r agent.ExecRequest, f func(*agent.ExecRequest)) agent.ExecRequest {
		f(&r)
		return r
	}
	tests := []struct {
		name           string
		req            agent.ExecRequest
		stdout, stderr string
		want           agent.ExitStatus
		wantErr        bool
	}{
		{name: "echo", req: sh("echo hello"), stdout: "hello\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "env", req: with(sh(`echo "$A $SHADOWED"`), func(r *agent.ExecRequest) {
			r.Env = map[string]string{"A": "a", "SHADOWED": "mine"}
		}), stdout: "a mine\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "default env from init", req: sh(`echo "$FROM_INIT"`), stdout: "init\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "cwd", req: with(sh("pwd"), func(r *agent.ExecRequest) { r.Cwd = dir }), stdout: dir + "\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "stdin", req: with(agent.ExecRequest{Cmd: "cat"}, func(r *agent.ExecRequest) { r.Stdin = []byte("fed\n") }), stdout: "fed\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "large stdin", req: with(agent.ExecRequest{Cmd: "cat"}, func(r *agent.ExecRequest) { r.Stdin = big }), stdout: string(big), want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "empty stdin", req: with(sh("wc -c"), func(r *agent.ExecRequest) { r.Stdin = []byte{} }), stdout: "0\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "stdin not read", req: with(sh("exit 0"), func(r *agent.ExecRequest) { r.Stdin = big }), want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "stdout and stderr apart", req: sh("echo out; echo err >&2"), stdout: "out\n", stderr: "err\n", want: agent.ExitStatus{Status: "exit status 0"}},
		{name: "exit code", req: sh("exit 7"), want: agent.ExitStatus{Code: 7, Status: "exit status 7"}},
		{name: "killed", req: sh("kill -KILL $$"), want: agent.ExitStatus{Code: -1, Signaled: true, Status: "signal: killed"}},
		{name: "missing command", req: agent.ExecRequest{Cmd: "no-such-command-ember"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			st, err := c.Exec(t.Context(), tt.req, &stdout, &stderr)
			if tt.wantErr {
				if err == nil || errors.Is(err, agent.ErrUnauthorized) {
					t.Fatalf("exec = %v, %v: want a plain error", st, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			if st != tt.want {
				t.Errorf("status %+v, want %+v", st, tt.want)
			}
			if stdout.String() != tt.stdout || stderr.String() != tt.stderr {
				t.Errorf("stdout %.40q (%d bytes) stderr %q, want %.40q (%d bytes) %q",
					stdout.String(), stdout.Len(), stderr.String(), tt.stdout, len(tt.stdout), tt.stderr)
			}
		})
	}
}

// timedWriter records when each write arrived.
type timedWriter struct {
	mu     sync.Mutex
	writes []time.Time
	buf    bytes.Buffer
}

func (w *timedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, time.Now())
	return w.buf.Write(p)
}

// TestExecStreams: the first line reaches the writer while the command is
// still running, not at its end.
func TestExecStreams(t *testing.T) {
	t.Parallel()
	c := newClient(t, startAgent(t, server.Config{}), "")
	const pause = 400 * time.Millisecond
	var w timedWriter
	req := agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("echo first; sleep %.1f; echo second", pause.Seconds())}}
	st, err := c.Exec(t.Context(), req, &w, nil)
	done := time.Now()
	if err != nil || st.Code != 0 {
		t.Fatalf("exec: %+v %v", st, err)
	}
	if w.buf.String() != "first\nsecond\n" || len(w.writes) < 2 {
		t.Fatalf("output %q in %d writes, want two lines in two writes", w.buf.String(), len(w.writes))
	}
	// The sleep separates the lines, so a streamed first line arrives well
	// before the end; a buffered one would arrive with it.
	if gap := done.Sub(w.writes[0]); gap < pause/2 {
		t.Fatalf("first line arrived %v before the end, want at least %v", gap, pause/2)
	}
}

// TestExecContext: when ctx ends first, Exec returns ctx's error and the
// process is killed.
func TestExecContext(t *testing.T) {
	t.Parallel()
	c := newClient(t, startAgent(t, server.Config{}), "")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var pidLine lineWriter
	pidLine.onLine = cancel
	req := agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo $$; exec sleep 60"}}
	start := time.Now()
	_, err := c.Exec(ctx, req, &pidLine, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("exec = %v, want context.Canceled", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("exec returned only after %v", time.Since(start))
	}
	waitGone(t, pidLine.String())

	ended, end := context.WithCancel(t.Context())
	end()
	if _, err := c.Exec(ended, req, nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("exec with an ended context = %v, want context.Canceled", err)
	}
}

// lineWriter calls onLine once, at the first newline.
type lineWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	onLine func()
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.onLine != nil && bytes.ContainsRune(w.buf.Bytes(), '\n') {
		w.onLine()
		w.onLine = nil
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestExecWriterFails: a failing writer ends Exec with its error and kills
// the process instead of leaving it running.
func TestExecWriterFails(t *testing.T) {
	t.Parallel()
	c := newClient(t, startAgent(t, server.Config{}), "")
	var errOut lineWriter
	req := agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo $$ >&2; sleep 0.1; echo out; exec sleep 60"}}
	_, err := c.Exec(t.Context(), req, failWriter{}, &errOut)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("exec = %v, want the writer's error", err)
	}
	waitGone(t, errOut.String())
}

// waitGone fails the test unless the process whose pid the output starts
// with is gone (or a zombie) within a few seconds.
func waitGone(t *testing.T, output string) {
	t.Helper()
	var pid int
	if _, err := fmt.Sscan(output, &pid); err != nil {
		t.Fatalf("pid from %q: %v", output, err)
	}
	for deadline := time.Now().Add(10 * time.Second); running(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
	}
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || !bytes.HasPrefix(stat[i+1:], []byte(" Z"))
}

// TestToken: after Init hands over a token, a client with another token or
// none gets ErrUnauthorized from everything but Health.
func TestToken(t *testing.T) {
	t.Parallel()
	url := startAgent(t, server.Config{})
	if err := newClient(t, url, "secret").Init(t.Context(), nil); err != nil {
		t.Fatalf("init: %v", err)
	}
	echo := agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo ok"}}
	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"right token", "secret", nil},
		{"wrong token", "guess", agent.ErrUnauthorized},
		{"no token", "", agent.ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, url, tt.token)
			if err := c.Health(t.Context()); err != nil {
				t.Errorf("health: %v", err)
			}
			var out bytes.Buffer
			if _, err := c.Exec(t.Context(), echo, &out, nil); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Errorf("exec = %v, want %v", err, tt.want)
			}
			if tt.want == nil && out.String() != "ok\n" {
				t.Errorf("exec output %q", out.String())
			}
			if err := c.Init(t.Context(), map[string]string{"X": "1"}); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Errorf("init = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestRekey: a client holding the agent's token hands it a new one; from
// then on the old token is refused and the new one accepted.
func TestRekey(t *testing.T) {
	t.Parallel()
	url := startAgent(t, server.Config{})
	old := newClient(t, url, "snapshot-token")
	if err := old.Init(t.Context(), nil); err != nil {
		t.Fatalf("init: %v", err)
	}
	if err := old.Rekey(t.Context(), nil, "own-token"); err != nil {
		t.Fatalf("rekey: %v", err)
	}
	echo := agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo ok"}}
	if _, err := old.Exec(t.Context(), echo, io.Discard, nil); !errors.Is(err, agent.ErrUnauthorized) {
		t.Fatalf("exec with the old token = %v, want ErrUnauthorized", err)
	}
	if _, err := newClient(t, url, "own-token").Exec(t.Context(), echo, io.Discard, nil); err != nil {
		t.Fatalf("exec with the new token: %v", err)
	}
}

// TestWaitReady: WaitReady returns once an agent starts listening, and with
// ctx's error when none does.
func TestWaitReady(t *testing.T) {
	t.Parallel()
	// Reserve a port, free it, and bring the agent up on it a little later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, "http://"+addr, "")

	short, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
	defer cancel()
	if err := c.WaitReady(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with nothing listening = %v, want DeadlineExceeded", err)
	}

	const delay = 200 * time.Millisecond
	ready := make(chan error, 1)
	begin := time.Now()
	go func() { ready <- c.WaitReady(t.Context()) }()
	time.Sleep(delay)
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	s := server.New(server.Config{})
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if err := <-ready; err != nil {
		t.Fatalf("wait: %v", err)
	}
	if took := time.Since(begin); took < delay {
		t.Fatalf("ready after %v, before the agent listened (%v)", took, delay)
	}
}

// BenchmarkExec measures a short command through the agent (Start stream,
// end event) against running the same command directly with os/exec, in
// the same run; it reports the agent's time per command and the ratio.
func BenchmarkExec(b *testing.B) {
	url := startAgent(b, server.Config{})
	c := agent.New(url, "", nil)
	req := agent.ExecRequest{Cmd: "/bin/true"}
	if _, err := c.Exec(b.Context(), req, nil, nil); err != nil {
		b.Fatal(err)
	}
	var direct, through time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := c.Exec(b.Context(), req, nil, nil); err != nil {
			b.Fatal(err)
		}
		direct += t1.Sub(t0)
		through += time.Since(t1)
	}
	b.ReportMetric(float64(through.Microseconds())/float64(b.N), "µs/agent-exec")
	b.ReportMetric(float64(direct.Microseconds())/float64(b.N), "µs/os-exec")
	b.ReportMetric(float64(through)/float64(direct), "x-os-exec")
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	read := func() (usage.System, error) {
		return usage.System{CPUCount: 3, CPUBusy: 1, CPUTotal: 4, MemTotal: 512 << 20, MemUsed: 100 << 20, DiskTotal: 2 << 30}, nil
	}
	url := startAgent(t, server.Config{Usage: read})
	c := newClient(t, url, "tok")
	if err := c.Init(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	m, err := c.Metrics(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUCount != 3 || m.CPUUsedPct != 25 || m.MemTotal != 512<<20 || m.MemUsed != 100<<20 || m.DiskTotal != 2<<30 {
		t.Fatalf("metrics %+v", m)
	}
	if _, err := newClient(t, url, "wrong").Metrics(t.Context()); !errors.Is(err, agent.ErrUnauthorized) {
		t.Fatalf("with the wrong token: %v", err)
	}
}
