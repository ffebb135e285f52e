package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"
)

// replayConn is a connection whose reads replay what a QEMU (or whatever
// sits on the socket) sent, and whose writes go nowhere.
type replayConn struct {
	net.Conn
	r *bytes.Reader
}

func (c replayConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c replayConn) Close() error                     { return nil }
func (c replayConn) SetDeadline(time.Time) error      { return nil }
func (c replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c replayConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzQMPReplies feeds the QMP client whatever a socket may send as the
// greeting and the replies of the commands the driver runs (query-status,
// query-version, query-migrate): it returns a value or an error, never
// panics, never hangs.
func FuzzQMPReplies(f *testing.F) {
	for _, seed := range []string{
		`{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}` + "\n" +
			`{"return": {}, "id": "1"}` + "\n" + `{"return": {"status": "running", "running": true}, "id": "2"}`,
		`{"QMP": {}}` + "\n" + `{"event": "STOP"}` + "\n" + `{"error": {"class": "GenericError", "desc": "no"}, "id": "1"}`,
		`{"QMP": {}}` + "\n" + `{"return": {}, "id": "1"}` + "\n" + `{"return": {"qemu": {"major": "x"}}, "id": "2"}`,
		`{"QMP": {}}` + "\n" + `{"return": {}, "id": "1"}` + "\n" + `{"return": {"status": "failed", "error-desc": "disk full"}}`,
		`{"return": 1, "id": 2}`,
		`{"QMP": {}}` + "\n" + `{"return": {}, "id": "1"}` + "\n" + `{"id": "2"}`,
		"\x00\xff{",
		`{"QMP": {}}` + "\n" + `[1,2,3]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn := replayConn{r: bytes.NewReader(data)}
		c := &qmpConn{conn: conn, dec: json.NewDecoder(conn)}
		var greeting qmpMessage
		if err := c.dec.Decode(&greeting); err != nil || greeting.Greeting == nil {
			return
		}
		if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
			return
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = c.execute(ctx, "query-status", nil, &st)
		var mig migrationStatus
		_ = c.execute(ctx, "query-migrate", nil, &mig)
	})
}
