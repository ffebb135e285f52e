package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"

	contract "github.com/emberhq/ember/internal/agent/proto"
	fspb "github.com/emberhq/ember/internal/agent/proto/filesystem"
)

// Sentinels for what a caller of a file operation or a terminal branches
// on; the agent names them in its answers (contract.ReasonHeader).
var (
	// ErrFileNotFound: nothing at that path.
	ErrFileNotFound = errors.New("file not found")
	// ErrIsDirectory: a directory where a file is expected.
	ErrIsDirectory = errors.New("is a directory")
	// ErrNotDirectory: a file where a directory is expected.
	ErrNotDirectory = errors.New("not a directory")
	// ErrPermission: the user may not do that.
	ErrPermission = errors.New("permission denied")
	// ErrNoSpace: the sandbox's disk is full; nothing was written.
	ErrNoSpace = errors.New("no space left in the sandbox")
	// ErrExists: something is at that path already.
	ErrExists = errors.New("file exists")
	// ErrUnknownUser: the sandbox has no such user.
	ErrUnknownUser = errors.New("unknown user")
	// ErrInvalid: the request is malformed (an empty path, a terminal
	// of no size, a command not found); the message says what.
	ErrInvalid = errors.New("invalid request")
)

// reasons maps the agent's reason words to the sentinels.
var reasons = map[string]error{
	contract.ReasonNotFound:     ErrFileNotFound,
	contract.ReasonIsDirectory:  ErrIsDirectory,
	contract.ReasonNotDirectory: ErrNotDirectory,
	contract.ReasonPermission:   ErrPermission,
	contract.ReasonNoSpace:      ErrNoSpace,
	contract.ReasonExists:       ErrExists,
	contract.ReasonUnknownUser:  ErrUnknownUser,
	contract.ReasonInvalid:      ErrInvalid,
	contract.ReasonSignature:    ErrUnauthorized,
}

// fileError turns the agent's answer into an error wrapping the sentinel
// its reason names (the agent's message kept), or nil for a reason it does
// not know.
func fileError(op, reason, msg string) error {
	if s, ok := reasons[reason]; ok {
		return fmt.Errorf("%s: %w: %s", op, s, msg)
	}
	return nil
}

// Entry describes one file system entry in a sandbox.
type Entry struct {
	Name string
	// Type is "file", "dir", "symlink" or "" (anything else).
	Type        string
	Path        string
	Size        int64
	Mode        uint32
	Permissions string
	Owner       string
	Group       string
	ModTime     time.Time
	// SymlinkTarget is set for symbolic links.
	SymlinkTarget string
}

func entry(e *fspb.EntryInfo) Entry {
	out := Entry{
		Name: e.GetName(), Path: e.GetPath(), Size: e.GetSize(), Mode: e.GetMode(),
		Permissions: e.GetPermissions(), Owner: e.GetOwner(), Group: e.GetGroup(), SymlinkTarget: e.GetSymlinkTarget(),
	}
	if e.GetModifiedTime() != nil {
		out.ModTime = e.GetModifiedTime().AsTime()
	}
	switch e.GetType() {
	case fspb.FileType_FILE_TYPE_FILE:
		out.Type = "file"
	case fspb.FileType_FILE_TYPE_DIRECTORY:
		out.Type = "dir"
	case fspb.FileType_FILE_TYPE_SYMLINK:
		out.Type = "symlink"
	}
	return out
}

// asUser names the user a request runs as, envd's way; "" is the agent's
// default.
func asUser[T any](req *connect.Request[T], user string) *connect.Request[T] {
	if user != "" {
		req.Header().Set("Authorization", basicUser(user))
	}
	return req
}

func basicUser(user string) string {
	r := http.Request{Header: http.Header{}}
	r.SetBasicAuth(user, "")
	return r.Header.Get("Authorization")
}

// reasonError wraps a Connect error, with the sentinel of the reason the
// agent gave.
func (c *Client) reasonError(op string, err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		if ferr := fileError(op, ce.Meta().Get(contract.ReasonHeader), ce.Message()); ferr != nil {
			return ferr
		}
	}
	return c.rpcError(op, err)
}

// Stat describes the entry at path (a symbolic link itself, not its
// target).
func (c *Client) Stat(ctx context.Context, user, path string) (Entry, error) {
	r, err := c.fs.Stat(ctx, asUser(connect.NewRequest(&fspb.StatRequest{Path: path}), user))
	if err != nil {
		return Entry{}, c.reasonError(fmt.Sprintf("stat %q", path), err)
	}
	return entry(r.Msg.GetEntry()), nil
}

// List lists a directory to depth (1: its entries).
func (c *Client) List(ctx context.Context, user, path string, depth int) ([]Entry, error) {
	r, err := c.fs.ListDir(ctx, asUser(connect.NewRequest(&fspb.ListDirRequest{Path: path, Depth: uint32(max(depth, 1))}), user))
	if err != nil {
		return nil, c.reasonError(fmt.Sprintf("list %q", path), err)
	}
	out := make([]Entry, 0, len(r.Msg.GetEntries()))
	for _, e := range r.Msg.GetEntries() {
		out = append(out, entry(e))
	}
	return out, nil
}

// MakeDir creates a directory and its missing parents.
func (c *Client) MakeDir(ctx context.Context, user, path string) (Entry, error) {
	r, err := c.fs.MakeDir(ctx, asUser(connect.NewRequest(&fspb.MakeDirRequest{Path: path}), user))
	if err != nil {
		return Entry{}, c.reasonError(fmt.Sprintf("make directory %q", path), err)
	}
	return entry(r.Msg.GetEntry()), nil
}

// Move renames an entry.
func (c *Client) Move(ctx context.Context, user, from, to string) (Entry, error) {
	r, err := c.fs.Move(ctx, asUser(connect.NewRequest(&fspb.MoveRequest{Source: from, Destination: to}), user))
	if err != nil {
		return Entry{}, c.reasonError(fmt.Sprintf("move %q to %q", from, to), err)
	}
	return entry(r.Msg.GetEntry()), nil
}

// Remove deletes a file or a directory tree.
func (c *Client) Remove(ctx context.Context, user, path string) error {
	if _, err := c.fs.Remove(ctx, asUser(connect.NewRequest(&fspb.RemoveRequest{Path: path}), user)); err != nil {
		return c.reasonError(fmt.Sprintf("remove %q", path), err)
	}
	return nil
}

// filesURL is /files for a path and user.
func (c *Client) filesURL(user, path string) string {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("username", user)
	}
	return c.base + "/files?" + q.Encode()
}

// filesResponse turns a non-2xx /files answer into an error.
func (c *Client) filesResponse(op string, resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var e struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &e) == nil && e.Message != "" {
		msg = e.Message
	}
	if err := fileError(op, resp.Header.Get(contract.ReasonHeader), msg); err != nil {
		return err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("%s: %w", op, ErrUnauthorized)
	}
	return fmt.Errorf("%s: status %s: %s", op, resp.Status, msg)
}

// ReadFile opens a file in the sandbox for streaming: the body as the agent
// sends it and its size (-1 when unknown). The caller closes the body.
func (c *Client) ReadFile(ctx context.Context, user, path string) (io.ReadCloser, int64, error) {
	op := fmt.Sprintf("read %q", path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.filesURL(user, path), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", op, err)
	}
	// Bytes as they are: compressing in a guest without hardware
	// acceleration costs more than it saves on the host's own network.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.files.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", op, err)
	}
	if err := c.filesResponse(op, resp); err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// WriteFile streams src into a file in the sandbox, creating missing parent
// directories. The file is replaced whole once everything arrived: a
// failure leaves the old one (or none) in place. size is src's length, or
// -1 when unknown (the body is then chunked).
func (c *Client) WriteFile(ctx context.Context, user, path string, src io.Reader, size int64) (Entry, error) {
	op := fmt.Sprintf("write %q", path)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.filesURL(user, path), io.NopCloser(src))
	if err != nil {
		return Entry{}, fmt.Errorf("%s: %w", op, err)
	}
	// A known length goes as one body, not as chunks flushed one by one.
	req.ContentLength = size
	if size == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.files.Do(req)
	if err != nil {
		return Entry{}, fmt.Errorf("%s: %w", op, err)
	}
	if err := c.filesResponse(op, resp); err != nil {
		return Entry{}, err
	}
	defer resp.Body.Close()
	var done []struct {
		Path string `json:"path"`
		Name string `json:"name"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&done); err != nil || len(done) != 1 {
		return Entry{}, fmt.Errorf("%s: decode answer: %v (%d entries)", op, err, len(done))
	}
	return Entry{Name: done[0].Name, Path: done[0].Path, Type: "file"}, nil
}
