package agent_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
)

// FuzzAgentReplies answers the daemon's agent client with whatever a guest
// (which runs untrusted code) may send: as the stream of a command's
// events, and as the replies of /health and /init. The client returns a
// result or an error, never panics and never waits past its deadline.
func FuzzAgentReplies(f *testing.F) {
	for _, seed := range []struct {
		ctype string
		body  []byte
	}{
		{"application/connect+proto", []byte{0, 0, 0, 0, 2, 0x0a, 0x00}},
		{"application/connect+proto", []byte{2, 0, 0, 0, 2, '{', '}'}},
		{"application/connect+proto", []byte{0, 0xff, 0xff, 0xff, 0xff}},
		{"application/connect+proto", []byte{2, 0, 0, 0, 40, '{', '"', 'e', 'r', 'r', 'o', 'r', '"', ':', '{', '"', 'c', 'o', 'd', 'e', '"', ':', '"', 'n', 'o', 't', '_', 'f', 'o', 'u', 'n', 'd', '"', '}', '}', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '}},
		{"application/json", []byte(`{"code":"unavailable"}`)},
		{"text/plain", []byte("\x00\x01garbage")},
	} {
		f.Add(seed.ctype, uint16(200), seed.body)
	}
	f.Add("application/json", uint16(401), []byte(`{}`))
	f.Add("", uint16(599), []byte(nil))
	f.Fuzz(func(t *testing.T, ctype string, status uint16, body []byte) {
		code := int(status)%500 + 100
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			if ctype != "" {
				w.Header().Set("Content-Type", ctype)
			}
			w.WriteHeader(code)
			w.Write(body)
		}))
		defer srv.Close()
		c := agent.New(srv.URL, "tok", srv.Client())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		begin := time.Now()
		_, _ = c.Exec(ctx, agent.ExecRequest{Cmd: "true"}, io.Discard, io.Discard)
		_ = c.Health(ctx)
		_ = c.Init(ctx, map[string]string{"A": "b"})
		if time.Since(begin) > 5*time.Second {
			t.Fatalf("the client waited %s on a bad reply", time.Since(begin))
		}
	})
}
