package sandbox

import (
	"context"
	"fmt"
	"io"

	"github.com/emberhq/ember/internal/agent"
)

// DefaultUser is who commands, terminals and file operations through
// ember's API run as when a request names no user: "user", the
// unprivileged account every template has, as in E2B (whose SDKs get the
// same default from the agent). A request names "root" to run as root.
const DefaultUser = "user"

// guest returns the agent of a running sandbox.
func (m *Manager) guest(id string) (Agent, error) {
	sb, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	ag := sb.getAgent()
	if r := sb.Record(); r.State != StateRunning || ag == nil {
		return nil, stateError(r, "running")
	}
	return ag, nil
}

// userOr is the request's user or DefaultUser.
func userOr(u string) string {
	if u == "" {
		return DefaultUser
	}
	return u
}

// inGuest runs fn against a running sandbox's agent, naming the sandbox in
// its error.
func inGuest[T any](m *Manager, id, op string, fn func(Agent) (T, error)) (T, error) {
	ag, err := m.guest(id)
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := fn(ag)
	if err != nil {
		return v, fmt.Errorf("%s in sandbox %s: %w", op, id, err)
	}
	return v, nil
}

// ReadFile opens a file in a running sandbox for streaming; the caller
// closes it. size is -1 when unknown.
func (m *Manager) ReadFile(ctx context.Context, id, user, path string) (rc io.ReadCloser, size int64, err error) {
	err = m.each(id, "read file", func(ag Agent) (err error) {
		rc, size, err = ag.ReadFile(ctx, userOr(user), path)
		return err
	})
	return rc, size, err
}

// WriteFile streams src (size bytes, -1 when unknown) into a file in a
// running sandbox; the file is replaced only once all of it arrived.
func (m *Manager) WriteFile(ctx context.Context, id, user, path string, src io.Reader, size int64) (agent.Entry, error) {
	return inGuest(m, id, "write file", func(ag Agent) (agent.Entry, error) { return ag.WriteFile(ctx, userOr(user), path, src, size) })
}

// StatFile describes a file in a running sandbox.
func (m *Manager) StatFile(ctx context.Context, id, user, path string) (agent.Entry, error) {
	return inGuest(m, id, "stat", func(ag Agent) (agent.Entry, error) { return ag.Stat(ctx, userOr(user), path) })
}

// ListFiles lists a directory in a running sandbox to depth.
func (m *Manager) ListFiles(ctx context.Context, id, user, path string, depth int) ([]agent.Entry, error) {
	return inGuest(m, id, "list", func(ag Agent) ([]agent.Entry, error) { return ag.List(ctx, userOr(user), path, depth) })
}

// MakeDir creates a directory (and its parents) in a running sandbox.
func (m *Manager) MakeDir(ctx context.Context, id, user, path string) (agent.Entry, error) {
	return inGuest(m, id, "make directory", func(ag Agent) (agent.Entry, error) { return ag.MakeDir(ctx, userOr(user), path) })
}

// MoveFile renames an entry in a running sandbox.
func (m *Manager) MoveFile(ctx context.Context, id, user, from, to string) (agent.Entry, error) {
	return inGuest(m, id, "move", func(ag Agent) (agent.Entry, error) { return ag.Move(ctx, userOr(user), from, to) })
}

// RemoveFile deletes a file or directory tree in a running sandbox.
func (m *Manager) RemoveFile(ctx context.Context, id, user, path string) error {
	return m.each(id, "remove", func(ag Agent) error { return ag.Remove(ctx, userOr(user), path) })
}

// StartTerminal runs a program (a login shell by default) on a new
// terminal in a running sandbox.
func (m *Manager) StartTerminal(ctx context.Context, id string, req agent.TerminalRequest) (Terminal, error) {
	req.User = userOr(req.User)
	return inGuest(m, id, "start terminal", func(ag Agent) (Terminal, error) {
		t, err := ag.StartTerminal(ctx, req)
		if err != nil {
			return nil, err
		}
		return t, nil
	})
}

// SendStdin writes to the stdin of a process started with KeepStdin.
func (m *Manager) SendStdin(ctx context.Context, id string, pid uint32, data []byte) error {
	return m.each(id, "send stdin", func(ag Agent) error { return ag.SendStdin(ctx, pid, data) })
}

// CloseStdin closes the stdin of a process started with KeepStdin.
func (m *Manager) CloseStdin(ctx context.Context, id string, pid uint32) error {
	return m.each(id, "close stdin", func(ag Agent) error { return ag.CloseStdin(ctx, pid) })
}

// each is inGuest for calls that return only an error.
func (m *Manager) each(id, op string, fn func(Agent) error) error {
	_, err := inGuest(m, id, op, func(ag Agent) (struct{}, error) { return struct{}{}, fn(ag) })
	return err
}
