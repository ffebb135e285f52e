package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
)

// The fake guest: a map of files, errors as the agent's sentinels.

func (f *fakeSandboxes) guestFile(id, p string) ([]byte, bool, error) {
	if _, err := f.Get(id); err != nil {
		return nil, false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if p == "/full" {
		return nil, false, fmt.Errorf("write %q: %w", p, sandbox.ErrNoSpace)
	}
	if p == "/root-only" {
		return nil, false, fmt.Errorf("open %q: %w", p, sandbox.ErrPermission)
	}
	b, ok := f.files[p]
	return b, ok, nil
}

func (f *fakeSandboxes) ReadFile(ctx context.Context, id, user, p string) (io.ReadCloser, int64, error) {
	if user == "nobody-here" {
		return nil, 0, fmt.Errorf("user %q: %w", user, sandbox.ErrUnknownUser)
	}
	b, ok, err := f.guestFile(id, p)
	switch {
	case err != nil:
		return nil, 0, err
	case !ok:
		return nil, 0, fmt.Errorf("read %q: %w", p, sandbox.ErrFileNotFound)
	case b == nil:
		return nil, 0, fmt.Errorf("read %q: %w", p, sandbox.ErrIsDirectory)
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

func (f *fakeSandboxes) WriteFile(ctx context.Context, id, user, p string, src io.Reader, size int64) (agent.Entry, error) {
	if _, _, err := f.guestFile(id, p); err != nil {
		return agent.Entry{}, err
	}
	b, err := io.ReadAll(src)
	if err != nil {
		return agent.Entry{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.files[p]; ok && old == nil {
		return agent.Entry{}, fmt.Errorf("write %q: %w", p, sandbox.ErrIsDirectory)
	}
	f.files[p] = b
	return agent.Entry{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b))}, nil
}

func (f *fakeSandboxes) StatFile(ctx context.Context, id, user, p string) (agent.Entry, error) {
	b, ok, err := f.guestFile(id, p)
	switch {
	case err != nil:
		return agent.Entry{}, err
	case !ok:
		return agent.Entry{}, fmt.Errorf("stat %q: %w", p, sandbox.ErrFileNotFound)
	case b == nil:
		return agent.Entry{Name: path.Base(p), Path: p, Type: "dir", Owner: user}, nil
	}
	return agent.Entry{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(b)), Owner: user, ModTime: time.Unix(1, 0)}, nil
}

func (f *fakeSandboxes) ListFiles(ctx context.Context, id, user, p string, depth int) ([]agent.Entry, error) {
	if b, ok, err := f.guestFile(id, p); err != nil || !ok || b != nil {
		return nil, errors.Join(err, fmt.Errorf("list %q: %w", p, sandbox.ErrNotDirectory))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []agent.Entry
	for name, b := range f.files {
		if path.Dir(name) == p && name != p {
			out = append(out, agent.Entry{Name: path.Base(name), Path: name, Type: map[bool]string{true: "dir", false: "file"}[b == nil]})
		}
	}
	slices.SortFunc(out, func(a, b agent.Entry) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

func (f *fakeSandboxes) MakeDir(ctx context.Context, id, user, p string) (agent.Entry, error) {
	_, ok, err := f.guestFile(id, p)
	if err != nil {
		return agent.Entry{}, err
	}
	if ok {
		return agent.Entry{}, fmt.Errorf("make directory %q: %w", p, sandbox.ErrFileExists)
	}
	f.mu.Lock()
	f.files[p] = nil
	f.mu.Unlock()
	return agent.Entry{Name: path.Base(p), Path: p, Type: "dir"}, nil
}

func (f *fakeSandboxes) MoveFile(ctx context.Context, id, user, from, to string) (agent.Entry, error) {
	b, ok, err := f.guestFile(id, from)
	if err != nil || !ok {
		return agent.Entry{}, errors.Join(err, fmt.Errorf("move %q: %w", from, sandbox.ErrFileNotFound))
	}
	f.mu.Lock()
	delete(f.files, from)
	f.files[to] = b
	f.mu.Unlock()
	return agent.Entry{Name: path.Base(to), Path: to, Type: "file"}, nil
}

func (f *fakeSandboxes) RemoveFile(ctx context.Context, id, user, p string) error {
	_, ok, err := f.guestFile(id, p)
	if err != nil || !ok {
		return errors.Join(err, fmt.Errorf("remove %q: %w", p, sandbox.ErrFileNotFound))
	}
	f.mu.Lock()
	delete(f.files, p)
	f.mu.Unlock()
	return nil
}

func (f *fakeSandboxes) SendStdin(ctx context.Context, id string, pid uint32, data []byte) error {
	if pid != 42 {
		return fmt.Errorf("pid %d: %w", pid, sandbox.ErrNoProcess)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stdin[pid] = append(f.stdin[pid], data...)
	return nil
}

func (f *fakeSandboxes) CloseStdin(ctx context.Context, id string, pid uint32) error {
	return f.SendStdin(ctx, id, pid, []byte("<EOF>"))
}

func (f *fakeSandboxes) StartTerminal(ctx context.Context, id string, req agent.TerminalRequest) (sandbox.Terminal, error) {
	if _, err := f.Get(id); err != nil {
		return nil, err
	}
	t := &echoTerminal{out: make(chan []byte, 16), size: fmt.Sprintf("%dx%d", req.Cols, req.Rows)}
	t.out <- []byte("$ ")
	return t, nil
}

// echoTerminal echoes what is typed, reports resizes, and exits with the
// code typed after "exit ".
type echoTerminal struct {
	mu     sync.Mutex
	out    chan []byte
	size   string
	closed bool
}

func (t *echoTerminal) Pid() uint32 { return 7 }
func (t *echoTerminal) Recv() ([]byte, *agent.ExitStatus, error) {
	b, ok := <-t.out
	if !ok {
		return nil, nil, errors.New("closed")
	}
	if code, isExit := strings.CutPrefix(string(b), "exit "); isExit {
		var c int
		fmt.Sscan(code, &c)
		return nil, &agent.ExitStatus{Code: c}, nil
	}
	return b, nil, nil
}
func (t *echoTerminal) Write(ctx context.Context, p []byte) error {
	t.out <- bytes.Clone(p)
	return nil
}
func (t *echoTerminal) Resize(ctx context.Context, cols, rows uint32) error {
	t.mu.Lock()
	t.size = fmt.Sprintf("%dx%d", cols, rows)
	t.mu.Unlock()
	t.out <- []byte("size " + t.size)
	return nil
}
func (t *echoTerminal) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.out)
	}
	return nil
}

func guestServer(t *testing.T) (*fakeSandboxes, *client.Client, string) {
	f := &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}},
		files: map[string][]byte{"/home": nil}, stdin: map[uint32][]byte{}}
	srv, c := newServer(t, f)
	return f, c, srv.URL
}

// TestFilesThroughClient: every byte value round-trips, and each kind of
// bad path gets its status and code.
func TestFilesThroughClient(t *testing.T) {
	t.Parallel()
	_, c, _ := guestServer(t)
	ctx := t.Context()
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	if e, err := c.WriteFile(ctx, "sb1", "/home/all.bin", bytes.NewReader(all)); err != nil || e.Size != 256 || e.Type != "file" {
		t.Fatalf("write = %+v, %v", e, err)
	}
	rc, err := c.ReadFile(ctx, "sb1", "/home/all.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, all) {
		t.Fatalf("read back %d bytes, not the 256 values", len(got))
	}
	if _, err := c.MakeDir(ctx, "sb1", "/home/d"); err != nil {
		t.Fatal(err)
	}
	es, err := c.ListFiles(ctx, "sb1", "/home", 1)
	if err != nil || len(es) != 2 || es[0].Path != "/home/all.bin" || es[1].Type != "dir" {
		t.Fatalf("list = %+v, %v", es, err)
	}
	if e, err := c.AsUser("user").StatFile(ctx, "sb1", "/home/all.bin"); err != nil || e.Owner != "user" {
		t.Fatalf("stat as user = %+v, %v (want the user passed through)", e, err)
	}
	if _, err := c.MoveFile(ctx, "sb1", "/home/all.bin", "/home/moved"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveFile(ctx, "sb1", "/home/moved"); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		call   func() error
		status int
		code   string
	}{
		{"missing", func() error { _, err := c.ReadFile(ctx, "sb1", "/nope"); return err }, 404, "file_not_found"},
		{"read a directory", func() error { _, err := c.ReadFile(ctx, "sb1", "/home"); return err }, 400, "is_directory"},
		{"list a file", func() error {
			c.WriteFile(ctx, "sb1", "/home/f", strings.NewReader("x"))
			_, err := c.ListFiles(ctx, "sb1", "/home/f", 1)
			return err
		}, 400, "not_directory"},
		{"permission", func() error { _, err := c.StatFile(ctx, "sb1", "/root-only"); return err }, 403, "permission_denied"},
		{"full disk", func() error { _, err := c.WriteFile(ctx, "sb1", "/full", strings.NewReader("x")); return err }, 507, "no_space"},
		{"unknown user", func() error { _, err := c.AsUser("nobody-here").ReadFile(ctx, "sb1", "/home/f"); return err }, 400, "unknown_user"},
		{"existing dir", func() error { _, err := c.MakeDir(ctx, "sb1", "/home"); return err }, 409, "file_exists"},
		{"no path", func() error { _, err := c.StatFile(ctx, "sb1", ""); return err }, 400, "invalid_argument"},
		{"no sandbox", func() error { _, err := c.StatFile(ctx, "nope", "/x"); return err }, 404, "sandbox_not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ae *client.APIError
			if err := tt.call(); !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code {
				t.Fatalf("got %v, want %d %s", err, tt.status, tt.code)
			}
		})
	}
}

// TestExecBytesAndLimit: output that is not UTF-8 comes back byte for
// byte, buffered and streamed; the buffered exec keeps at most its limit
// of a stream and says so.
func TestExecBytesAndLimit(t *testing.T) {
	t.Parallel()
	binary := "\xff\xfe\x00é"[:5] // ends inside the two-byte é
	f := &fakeSandboxes{execOut: []string{binary, "\xa9tail"}, outLimit: 6,
		recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}}}
	_, c := newServer(t, f)
	res, err := c.Exec(t.Context(), "sb1", client.ExecRequest{Cmd: "x", Stdin: []byte{0, 0xff}})
	if err != nil {
		t.Fatal(err)
	}
	if want := (binary + "\xa9tail")[:6]; string(res.Stdout) != want || !res.Truncated || !res.StdoutTruncated || res.StderrTruncated {
		t.Fatalf("exec = %q truncated %v/%v/%v, want %q and stdout truncated", res.Stdout, res.Truncated, res.StdoutTruncated, res.StderrTruncated, want)
	}
	var out bytes.Buffer
	if _, err := c.ExecStream(t.Context(), "sb1", client.ExecRequest{Cmd: "x"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out.String() != binary+"\xa9tail" {
		t.Fatalf("streamed %q", out.String())
	}
}

// TestExecPipeStreamsStdin: ExecPipe sends stdin to the pid of the start
// event as it is read, then closes it.
func TestExecPipeStreamsStdin(t *testing.T) {
	t.Parallel()
	f, c, _ := guestServer(t)
	f.execOut = []string{"a", "b"} // 200 ms apart: stdin arrives meanwhile
	if _, err := c.ExecPipe(t.Context(), "sb1", client.ExecRequest{Cmd: "cat"}, strings.NewReader("typed\n"), io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	got := string(f.stdin[42])
	f.mu.Unlock()
	if got != "typed\n<EOF>" {
		t.Fatalf("stdin got %q", got)
	}
	if err := c.CloseStdin(t.Context(), "sb1", 9); !client.IsCode(err, "process_not_found") {
		t.Fatalf("close stdin of an unknown pid = %v", err)
	}
}

// TestTerminalWebSocket: bytes both ways, resize, the exit code, and the
// key accepted from the query for browsers.
func TestTerminalWebSocket(t *testing.T) {
	t.Parallel()
	_, c, base := guestServer(t)
	term, err := c.OpenTerminal(t.Context(), "sb1", client.TerminalOptions{Cols: 100, Rows: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 256)
		n, err := term.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("read %q, %v; want %q", buf[:n], err, want)
		}
	}
	read("$ ")
	term.Write([]byte("ls\r"))
	read("ls\r")
	term.Resize(120, 40)
	read("size 120x40")
	term.Write([]byte("exit 3"))
	if n, err := term.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("read after exit = %d, %v; want EOF", n, err)
	}
	if code, err := term.ExitCode(); code != 3 || err != nil {
		t.Fatalf("exit code %d, %v", code, err)
	}

	for _, tt := range []struct {
		name, query string
		status      int
	}{
		{"no key", "", http.StatusUnauthorized},
		{"bad size", "?api_key=" + key + "&cols=0", http.StatusBadRequest},
		{"no such sandbox", "?api_key=" + key, http.StatusNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := "sb1"
			if tt.name == "no such sandbox" {
				id = "nope"
			}
			resp, err := http.Get(base + "/v1/sandboxes/" + id + "/pty" + tt.query)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("= %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}

// TestExecStreamBackpressure: while the client reads nothing, the daemon
// takes output from the command only as fast as the connection carries it:
// what it accepted stays within the socket buffers, not the command's whole
// output.
func TestExecStreamBackpressure(t *testing.T) {
	t.Parallel()
	var written atomic.Int64
	chunk := bytes.Repeat([]byte("y\n"), 16<<10)
	f := &fakeSandboxes{recs: map[string]store.Sandbox{"sb1": {ID: "sb1", State: sandbox.StateRunning}},
		execFn: func(ctx context.Context, stdout io.Writer) (sandbox.ExecResult, error) {
			for range 1024 { // 32 MiB if nothing pushed back
				if _, err := stdout.Write(chunk); err != nil {
					return sandbox.ExecResult{}, err
				}
				written.Add(int64(len(chunk)))
			}
			return sandbox.ExecResult{}, nil
		}}
	srv, _ := newServer(t, f)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/v1/sandboxes/sb1/exec/stream", strings.NewReader(`{"cmd":"yes"}`))
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The client reads nothing: the command must come to a stop, having
	// had no more taken than the socket buffers hold.
	var first int64
	for prev, deadline := int64(-1), time.Now().Add(5*time.Second); ; prev = first {
		time.Sleep(300 * time.Millisecond)
		if first = written.Load(); first == prev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with no reader the command's output went on: %d bytes taken after 5 s", first)
		}
	}
	if first > 16<<20 {
		t.Fatalf("with no reader %d bytes were taken, want the socket buffers' worth", first)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	if written.Load() != 1024*int64(len(chunk)) || n < written.Load() {
		t.Fatalf("after reading: %d bytes taken, %d bytes of events", written.Load(), n)
	}
	t.Logf("taken while nobody read: %d KiB of %d MiB", first>>10, (1024*len(chunk))>>20)
}
