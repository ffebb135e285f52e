package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/agent/server"
)

// TestFiles: the host client's file calls against the real agent, every
// byte value through, each bad path to its sentinel.
func TestFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClient(t, startAgent(t, server.Config{}), "")
	ctx := t.Context()
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	p := filepath.Join(dir, "sub", "all.bin")
	if e, err := c.WriteFile(ctx, "", p, bytes.NewReader(all), 256); err != nil || e.Path != p {
		t.Fatalf("write = %+v, %v", e, err)
	}
	body, size, err := c.ReadFile(ctx, "", p)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if !bytes.Equal(got, all) || size != 256 {
		t.Fatalf("read %d bytes (size %d), not the 256 values", len(got), size)
	}
	if e, err := c.Stat(ctx, "", p); err != nil || e.Type != "file" || e.Size != 256 || e.ModTime.IsZero() {
		t.Fatalf("stat = %+v, %v", e, err)
	}
	if _, err := c.MakeDir(ctx, "", filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Move(ctx, "", p, filepath.Join(dir, "d", "moved")); err != nil {
		t.Fatal(err)
	}
	es, err := c.List(ctx, "", dir, 2)
	if err != nil || len(es) != 3 {
		t.Fatalf("list = %+v, %v; want sub, d and d/moved", es, err)
	}
	if err := c.Remove(ctx, "", filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		err  func() error
		want error
	}{
		{"read missing", func() error { _, _, err := c.ReadFile(ctx, "", filepath.Join(dir, "nope")); return err }, agent.ErrFileNotFound},
		{"read a directory", func() error { _, _, err := c.ReadFile(ctx, "", dir); return err }, agent.ErrIsDirectory},
		{"list a file", func() error {
			os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
			_, err := c.List(ctx, "", filepath.Join(dir, "f"), 1)
			return err
		}, agent.ErrNotDirectory},
		{"make an existing directory", func() error { _, err := c.MakeDir(ctx, "", dir); return err }, agent.ErrExists},
		{"stat as nobody known", func() error { _, err := c.Stat(ctx, "no-such-user-ember", dir); return err }, agent.ErrUnknownUser},
		{"write over a directory", func() error { _, err := c.WriteFile(ctx, "", dir, strings.NewReader("x"), -1); return err }, agent.ErrIsDirectory},
		{"remove missing", func() error { return c.Remove(ctx, "", filepath.Join(dir, "nope")) }, agent.ErrFileNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.err(); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestTerminal: keystrokes in, output and the exit code out, a resize
// seen by the program.
func TestTerminal(t *testing.T) {
	t.Parallel()
	c := newClient(t, startAgent(t, server.Config{}), "")
	ctx := t.Context()
	term, err := c.StartTerminal(ctx, agent.TerminalRequest{Cmd: "/bin/sh", Cols: 80, Rows: 24})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	var screen strings.Builder
	waitFor := func(want string) {
		t.Helper()
		for !strings.Contains(screen.String(), want) {
			data, st, err := term.Recv()
			if err != nil || st != nil {
				t.Fatalf("terminal ended (%v, %v) before %q; it shows %q", st, err, want, screen.String())
			}
			screen.Write(data)
		}
	}
	term.Write(ctx, []byte("stty size\n"))
	waitFor("24 80")
	if err := term.Resize(ctx, 100, 30); err != nil {
		t.Fatal(err)
	}
	term.Write(ctx, []byte("stty size; exit 3\n"))
	waitFor("30 100")
	for {
		_, st, err := term.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if st != nil {
			if st.Code != 3 {
				t.Fatalf("exit %+v, want code 3", st)
			}
			break
		}
	}
	if _, err := c.StartTerminal(ctx, agent.TerminalRequest{Cmd: "/bin/sh", Cols: 0, Rows: 24}); !errors.Is(err, agent.ErrInvalid) {
		t.Fatalf("terminal of no width = %v, want ErrInvalid", err)
	}
}

// TestStdinKeptOpen: a command started with KeepStdin takes input by pid
// until CloseStdin.
func TestStdinKeptOpen(t *testing.T) {
	t.Parallel()
	c := newClient(t, startAgent(t, server.Config{}), "")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	pids := make(chan uint32, 1)
	var out bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	var st agent.ExitStatus
	var execErr error
	go func() {
		defer wg.Done()
		st, execErr = c.Exec(ctx, agent.ExecRequest{Cmd: "cat", KeepStdin: true, Started: func(pid uint32) { pids <- pid }}, &out, io.Discard)
	}()
	pid := <-pids
	for _, s := range []string{"one ", "two\n"} {
		if err := c.SendStdin(ctx, pid, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CloseStdin(ctx, pid); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if execErr != nil || st.Code != 0 || out.String() != "one two\n" {
		t.Fatalf("exec = %+v, %q, %v", st, out.String(), execErr)
	}
	if err := c.SendStdin(ctx, pid, []byte("late")); !errors.Is(err, agent.ErrNoProcess) {
		t.Fatalf("stdin after the end = %v, want ErrNoProcess", err)
	}
}

// TestExecRefusals: a command the agent will not start says why, as the
// sentinel the API maps.
func TestExecRefusals(t *testing.T) {
	t.Parallel()
	c := newClient(t, startAgent(t, server.Config{}), "")
	for _, tt := range []struct {
		name string
		req  agent.ExecRequest
		want error
	}{
		{"unknown user", agent.ExecRequest{Cmd: "true", User: "no-such-user-ember"}, agent.ErrUnknownUser},
		{"missing binary", agent.ExecRequest{Cmd: "/no/such/binary"}, agent.ErrInvalid},
		{"missing cwd", agent.ExecRequest{Cmd: "true", Cwd: "/no/such/dir"}, agent.ErrInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Exec(t.Context(), tt.req, io.Discard, io.Discard); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}
