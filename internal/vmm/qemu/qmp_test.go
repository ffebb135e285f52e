package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// startFake serves f on a fresh socket and returns its path.
func startFake(t *testing.T, f *fakeQMP) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := f.listen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return path
}

func TestQMPExecute(t *testing.T) {
	for _, tc := range []struct {
		name  string
		noise bool
	}{
		{"plain", false},
		{"events and foreign replies interleaved", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeQMP()
			f.noise = tc.noise
			path := startFake(t, f)
			ctx := t.Context()
			c, err := dialQMP(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var st struct{ Status string }
			for _, step := range []struct{ cmd, want string }{
				{"query-status", "running"}, {"stop", ""}, {"query-status", "paused"}, {"cont", ""}, {"query-status", "running"},
			} {
				st.Status = ""
				if err := c.execute(ctx, step.cmd, nil, &st); err != nil {
					t.Fatalf("%s: %v", step.cmd, err)
				}
				if st.Status != step.want {
					t.Errorf("%s: status %q, want %q", step.cmd, st.Status, step.want)
				}
			}
			want := []string{"qmp_capabilities", "query-status", "stop", "query-status", "cont", "query-status"}
			if got := f.commands(); !slices.Equal(got, want) {
				t.Errorf("server saw %v, want %v", got, want)
			}
		})
	}
}

func TestQMPError(t *testing.T) {
	path := startFake(t, newFakeQMP())
	c, err := dialQMP(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.execute(t.Context(), "no-such-command", map[string]int{"x": 1}, nil)
	var qerr *QMPError
	if !errors.As(err, &qerr) {
		t.Fatalf("error %v is not a *QMPError", err)
	}
	if qerr.Class != "CommandNotFound" || qerr.Desc == "" {
		t.Errorf("got class %q desc %q", qerr.Class, qerr.Desc)
	}
	if want := "qmp no-such-command: CommandNotFound: The command no-such-command has not been found"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	// The session stays usable after an error.
	if err := c.execute(t.Context(), "query-status", nil, nil); err != nil {
		t.Errorf("after error: %v", err)
	}
}

func TestQMPContext(t *testing.T) {
	f := newFakeQMP()
	f.silent = true
	path := startFake(t, f)
	c, err := dialQMP(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	begin := time.Now()
	err = c.execute(ctx, "query-status", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want deadline exceeded", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("gave up after %s", d)
	}
}

// TestQMPBadPeer covers servers that do not speak QMP properly.
func TestQMPBadPeer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		serve func(c net.Conn)
	}{
		{"closes at once", func(c net.Conn) {}},
		{"no greeting", func(c net.Conn) {
			json.NewEncoder(c).Encode(map[string]any{"return": map[string]any{}})
		}},
		{"refuses negotiation", func(c net.Conn) {
			enc := json.NewEncoder(c)
			enc.Encode(map[string]any{"QMP": map[string]any{}})
			var req map[string]any
			json.NewDecoder(c).Decode(&req)
			enc.Encode(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "no"}, "id": req["id"]})
		}},
		{"reply without return", func(c net.Conn) {
			enc := json.NewEncoder(c)
			enc.Encode(map[string]any{"QMP": map[string]any{}})
			var req map[string]any
			json.NewDecoder(c).Decode(&req)
			enc.Encode(map[string]any{"id": req["id"]})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "qmp.sock")
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				tc.serve(c)
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c, err := dialQMP(ctx, path)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("hung: %v", err)
			}
		})
	}
}
