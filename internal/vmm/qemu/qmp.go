package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// QMPError is an error QEMU returned for a QMP command: its class (for
// example "GenericError", "CommandNotFound") and human-readable description.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// Error implements error.
func (e *QMPError) Error() string { return e.Class + ": " + e.Desc }

// qmpMessage is any message QEMU sends on a QMP socket: the greeting, a
// command's return or error, or an asynchronous event.
type qmpMessage struct {
	Greeting json.RawMessage `json:"QMP"`
	Event    string          `json:"event"`
	ID       json.RawMessage `json:"id"`
	Return   json.RawMessage `json:"return"`
	Error    *QMPError       `json:"error"`
}

// qmpConn is one QMP session over a Unix socket, past the capabilities
// negotiation. Commands run one at a time; events that arrive in between are
// skipped, since ember learns about process exit from the process itself.
// A qmpConn is not safe for concurrent use.
type qmpConn struct {
	conn net.Conn
	dec  *json.Decoder
	next uint64
}

// dialQMP connects to the QMP socket at path, reads QEMU's greeting and
// leaves negotiation mode. ctx bounds the whole exchange.
func dialQMP(ctx context.Context, path string) (_ *qmpConn, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	c := &qmpConn{conn: conn, dec: json.NewDecoder(conn)}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	err = c.withContext(ctx, func() error {
		var greeting qmpMessage
		if err := c.dec.Decode(&greeting); err != nil {
			return fmt.Errorf("read qmp greeting: %w", err)
		}
		if greeting.Greeting == nil {
			return fmt.Errorf("read qmp greeting: unexpected message %+v", greeting)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		return nil, err
	}
	return c, nil
}

// Close ends the session.
func (c *qmpConn) Close() error { return c.conn.Close() }

// execute runs one command with optional arguments and decodes its return
// value into out (when out is not nil). A command QEMU rejects yields a
// *QMPError.
func (c *qmpConn) execute(ctx context.Context, command string, args, out any) error {
	return c.executeFile(ctx, command, args, out, nil)
}

// executeFile is execute that also passes f's descriptor to QEMU with the
// command (SCM_RIGHTS), as getfd wants; f may be nil.
func (c *qmpConn) executeFile(ctx context.Context, command string, args, out any, f *os.File) error {
	c.next++
	id := strconv.FormatUint(c.next, 10)
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: encode: %w", command, err)
	}
	wantID, _ := json.Marshal(id)
	return c.withContext(ctx, func() error {
		if err := c.send(append(b, '\n'), f); err != nil {
			return fmt.Errorf("qmp %s: send: %w", command, err)
		}
		for {
			var msg qmpMessage
			if err := c.dec.Decode(&msg); err != nil {
				return fmt.Errorf("qmp %s: read reply: %w", command, err)
			}
			if msg.Event != "" {
				continue
			}
			// A reply without an id answers a request QEMU could not parse;
			// with one request in flight it can only be ours.
			if msg.ID != nil && !bytes.Equal(msg.ID, wantID) {
				continue
			}
			if msg.Error != nil {
				return fmt.Errorf("qmp %s: %w", command, msg.Error)
			}
			if msg.Return == nil {
				return fmt.Errorf("qmp %s: reply has neither return nor error", command)
			}
			if out != nil {
				if err := json.Unmarshal(msg.Return, out); err != nil {
					return fmt.Errorf("qmp %s: decode return: %w", command, err)
				}
			}
			return nil
		}
	})
}

// send writes one request, with f's descriptor attached when f is set.
func (c *qmpConn) send(b []byte, f *os.File) error {
	if f == nil {
		_, err := c.conn.Write(b)
		return err
	}
	uc, ok := c.conn.(*net.UnixConn)
	if !ok {
		return errors.New("passing a file needs a unix socket")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = uc.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	return werr
}

// withContext runs fn, which does blocking I/O on the connection, so that
// ctx's cancellation or deadline interrupts it. When ctx ends, the error is
// ctx's own.
func (c *qmpConn) withContext(ctx context.Context, fn func() error) error {
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetDeadline(time.Unix(1, 0))
	})
	err := fn()
	if !stop() && err != nil && ctx.Err() != nil {
		// The deadline was forced: the connection's read state is
		// undefined from here on, but the caller only closes it.
		return fmt.Errorf("%w: %w", err, context.Cause(ctx))
	}
	return err
}
