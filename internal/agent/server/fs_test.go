package server

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	contract "github.com/emberhq/ember/internal/agent/proto"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	pb "github.com/emberhq/ember/internal/agent/proto/filesystem"
	"github.com/emberhq/ember/internal/agent/proto/filesystem/filesystemconnect"
	"github.com/emberhq/ember/internal/testutil"
)

// asUser adds E2B's user header (Basic, the name and no password) and a
// token to every request.
type asUser struct {
	hc          *http.Client
	user, token string
}

func (c asUser) Do(r *http.Request) (*http.Response, error) {
	if c.user != "" {
		r.SetBasicAuth(c.user, "")
	}
	if c.token != "" {
		r.Header.Set(TokenHeader, c.token)
	}
	return c.hc.Do(r)
}

func fsClient(t *testing.T, url, user string) filesystemconnect.FilesystemClient {
	return filesystemconnect.NewFilesystemClient(asUser{hc: h2c(t), user: user}, url)
}

// sharedDir is a temporary directory everyone may write to, as /tmp is, so
// tests can act as an unprivileged user inside it.
func sharedDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.Chmod(filepath.Dir(d), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o1777); err != nil {
		t.Fatal(err)
	}
	return d
}

func reason(err error) string {
	var ce *connect.Error
	if ok := asConnect(err, &ce); ok {
		return ce.Meta().Get(contract.ReasonHeader)
	}
	return ""
}

func asConnect(err error, target **connect.Error) bool {
	ce, ok := err.(*connect.Error)
	if ok {
		*target = ce
	}
	return ok
}

// TestFilesystem drives every unary call of the filesystem service, with
// the error each kind of bad path gets.
func TestFilesystem(t *testing.T) {
	t.Parallel()
	dir := sharedDir(t)
	_, url := serve(t, Config{})
	fc := fsClient(t, url, "")
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a/b/c"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a/f.txt"), []byte("hello"), 0o640))
	must(os.WriteFile(filepath.Join(dir, "a/b/c/deep"), nil, 0o644))
	must(os.Symlink("f.txt", filepath.Join(dir, "a/link")))

	st, err := fc.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: filepath.Join(dir, "a/f.txt")}))
	must(err)
	if e := st.Msg.GetEntry(); e.GetType() != pb.FileType_FILE_TYPE_FILE || e.GetSize() != 5 || e.GetMode() != 0o640 ||
		e.GetPermissions() != "-rw-r-----" || e.GetName() != "f.txt" || e.GetModifiedTime() == nil || e.GetOwner() == "" {
		t.Errorf("stat file = %v", e)
	}
	st, err = fc.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: filepath.Join(dir, "a/link")}))
	must(err)
	if e := st.Msg.GetEntry(); e.GetType() != pb.FileType_FILE_TYPE_SYMLINK || e.GetSymlinkTarget() != "f.txt" {
		t.Errorf("stat link = %v", e)
	}

	ls := func(depth uint32) []string {
		t.Helper()
		r, err := fc.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: filepath.Join(dir, "a"), Depth: depth}))
		must(err)
		var out []string
		for _, e := range r.Msg.GetEntries() {
			rel, _ := filepath.Rel(filepath.Join(dir, "a"), e.GetPath())
			out = append(out, rel)
		}
		slices.Sort(out)
		return out
	}
	if got := ls(0); !slices.Equal(got, []string{"b", "f.txt", "link"}) {
		t.Errorf("list depth 1 = %v", got)
	}
	if got := ls(2); !slices.Equal(got, []string{"b", "b/c", "f.txt", "link"}) {
		t.Errorf("list depth 2 = %v", got)
	}
	if got := ls(9); !slices.Equal(got, []string{"b", "b/c", "b/c/deep", "f.txt", "link"}) {
		t.Errorf("list depth 9 = %v", got)
	}

	mk, err := fc.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(dir, "new/sub")}))
	must(err)
	if mk.Msg.GetEntry().GetType() != pb.FileType_FILE_TYPE_DIRECTORY {
		t.Errorf("make dir = %v", mk.Msg.GetEntry())
	}
	mv, err := fc.Move(ctx, connect.NewRequest(&pb.MoveRequest{Source: filepath.Join(dir, "a/f.txt"), Destination: filepath.Join(dir, "moved/into/g.txt")}))
	must(err)
	if mv.Msg.GetEntry().GetPath() != filepath.Join(dir, "moved/into/g.txt") {
		t.Errorf("move = %v", mv.Msg.GetEntry())
	}
	_, err = fc.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: filepath.Join(dir, "a")}))
	must(err)
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Errorf("a still there after remove: %v", err)
	}

	tests := []struct {
		name   string
		call   func() error
		code   connect.Code
		reason string
	}{
		{"stat missing", func() error {
			_, err := fc.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: filepath.Join(dir, "nope")}))
			return err
		}, connect.CodeNotFound, contract.ReasonNotFound},
		{"list a file", func() error {
			_, err := fc.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: filepath.Join(dir, "moved/into/g.txt")}))
			return err
		}, connect.CodeInvalidArgument, contract.ReasonNotDirectory},
		{"list missing", func() error {
			_, err := fc.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: filepath.Join(dir, "nope")}))
			return err
		}, connect.CodeNotFound, contract.ReasonNotFound},
		{"make existing dir", func() error {
			_, err := fc.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(dir, "new")}))
			return err
		}, connect.CodeAlreadyExists, contract.ReasonExists},
		{"move missing", func() error {
			_, err := fc.Move(ctx, connect.NewRequest(&pb.MoveRequest{Source: filepath.Join(dir, "nope"), Destination: filepath.Join(dir, "x")}))
			return err
		}, connect.CodeNotFound, contract.ReasonNotFound},
		{"remove missing", func() error {
			_, err := fc.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{Path: filepath.Join(dir, "nope")}))
			return err
		}, connect.CodeNotFound, contract.ReasonNotFound},
		{"empty path", func() error {
			_, err := fc.Stat(ctx, connect.NewRequest(&pb.StatRequest{}))
			return err
		}, connect.CodeInvalidArgument, contract.ReasonInvalid},
		{"unknown user", func() error {
			_, err := fsClient(t, url, "no-such-user-ember").Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: "/"}))
			return err
		}, connect.CodeInvalidArgument, contract.ReasonUnknownUser},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if connect.CodeOf(err) != tt.code || reason(err) != tt.reason {
				t.Errorf("got %v (code %v, reason %q), want code %v reason %q", err, connect.CodeOf(err), reason(err), tt.code, tt.reason)
			}
		})
	}
}

// TestFilesystemAsUser: operations run with the named user's identity:
// what they create is theirs, what they may not touch is refused, and
// relative paths are under their home.
func TestFilesystemAsUser(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	dir := sharedDir(t)
	private := filepath.Join(dir, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	_, url := serve(t, Config{})
	fc := fsClient(t, url, "nobody")
	ctx := t.Context()
	if _, err := fc.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(dir, "mine/deeper")})); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"mine", "mine/deeper"} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, p), &st); err != nil || st.Uid != 65534 {
			t.Errorf("%s: uid %d, %v; want nobody's 65534", p, st.Uid, err)
		}
	}
	_, err := fc.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{Path: private}))
	if connect.CodeOf(err) != connect.CodePermissionDenied || reason(err) != contract.ReasonPermission {
		t.Errorf("list root's 0700 dir as nobody = %v, want PermissionDenied", err)
	}
	_, err = fc.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{Path: filepath.Join(private, "x")}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("mkdir in root's 0700 dir as nobody = %v, want PermissionDenied", err)
	}
	// nobody's home is /nonexistent: a relative path resolves under it.
	_, err = fc.Stat(ctx, connect.NewRequest(&pb.StatRequest{Path: "rel"}))
	if ce := new(connect.Error); !asConnect(err, &ce) || !strings.Contains(ce.Message(), "/nonexistent/rel") {
		t.Errorf("stat of a relative path = %v, want it under /nonexistent", err)
	}
}

// TestWatchDir: a recursive watch reports changes in directories created
// after it started, named relative to the watched one; the polling
// watcher collects the same events.
func TestWatchDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, url := serve(t, Config{})
	fc := fsClient(t, url, "")
	ctx := t.Context()

	req := connect.NewRequest(&pb.WatchDirRequest{Path: dir, Recursive: true, IncludeEntry: true})
	stream, err := fc.WatchDir(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().GetStart() == nil {
		t.Fatalf("first event %v, %v; want start", stream.Msg(), stream.Err())
	}
	cw, err := fc.CreateWatcher(ctx, connect.NewRequest(&pb.CreateWatcherRequest{Path: dir}))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The watch on sub is added when its create event is read.
	want := map[string]bool{"sub create": false, "sub/file create": false, "sub/file write": false}
	deadline := time.Now().Add(10 * time.Second)
	wrote := false
	for slices.Contains(mapValues(want), false) {
		if time.Now().After(deadline) {
			t.Fatalf("events seen: %v", want)
		}
		if !stream.Receive() {
			t.Fatalf("watch ended: %v", stream.Err())
		}
		ev := stream.Msg().GetFilesystem()
		if ev == nil {
			continue
		}
		key := ev.GetName() + " " + strings.ToLower(strings.TrimPrefix(ev.GetType().String(), "EVENT_TYPE_"))
		if _, ok := want[key]; ok {
			want[key] = true
		}
		if key == "sub create" && !wrote {
			wrote = true
			if ev.GetEntry().GetType() != pb.FileType_FILE_TYPE_DIRECTORY {
				t.Errorf("create of sub carries entry %v", ev.GetEntry())
			}
			if err := os.WriteFile(filepath.Join(dir, "sub/file"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}

	var polled []string
	for range 50 {
		r, err := fc.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: cw.Msg.GetWatcherId()}))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range r.Msg.GetEvents() {
			polled = append(polled, ev.GetName())
		}
		if slices.Contains(polled, "sub") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !slices.Contains(polled, "sub") {
		t.Errorf("polling watcher saw %v, want sub", polled)
	}
	if _, err := fc.RemoveWatcher(ctx, connect.NewRequest(&pb.RemoveWatcherRequest{WatcherId: cw.Msg.GetWatcherId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.GetWatcherEvents(ctx, connect.NewRequest(&pb.GetWatcherEventsRequest{WatcherId: cw.Msg.GetWatcherId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("events of a removed watcher = %v, want NotFound", err)
	}
	missing, err := fc.WatchDir(ctx, connect.NewRequest(&pb.WatchDirRequest{Path: filepath.Join(dir, "nope")}))
	if err == nil {
		missing.Receive()
		err = missing.Err()
		missing.Close()
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("watch of a missing directory = %v, want NotFound", err)
	}
}

func mapValues(m map[string]bool) []bool {
	var out []bool
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// filesReq makes a /files request.
func filesReq(t *testing.T, method, u string, body io.Reader, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// TestFilesHTTP: /files uploads (multipart with several files, raw,
// gzip-encoded) and downloads byte for byte, with envd's error statuses.
func TestFilesHTTP(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, base := serve(t, Config{})
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}

	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for _, f := range []struct{ name, data string }{{"one.txt", "first"}, {"sub/dir/two.bin", string(all)}} {
		w, err := mw.CreateFormFile("file", filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, f.data)
	}
	mw.Close()
	code, _, body := filesReq(t, http.MethodPost, base+"/files", &mp, map[string]string{"Content-Type": mw.FormDataContentType()})
	var up []uploaded
	if code != http.StatusOK || json.Unmarshal(body, &up) != nil || len(up) != 2 || up[1].Path != filepath.Join(dir, "sub/dir/two.bin") {
		t.Fatalf("multipart upload = %d %s", code, body)
	}
	code, _, body = filesReq(t, http.MethodGet, base+"/files?path="+url.QueryEscape(filepath.Join(dir, "sub/dir/two.bin")), nil, nil)
	if code != http.StatusOK || !bytes.Equal(body, all) {
		t.Fatalf("download = %d, %d bytes, want the 256 byte values", code, len(body))
	}

	raw := bytes.Repeat([]byte("raw\x00\xff"), 1000)
	p := filepath.Join(dir, "raw.bin")
	code, _, body = filesReq(t, http.MethodPost, base+"/files?path="+url.QueryEscape(p), bytes.NewReader(raw), map[string]string{"Content-Type": "application/octet-stream"})
	if code != http.StatusOK {
		t.Fatalf("raw upload = %d %s", code, body)
	}
	code, _, body = filesReq(t, http.MethodPost, base+"/files?path="+url.QueryEscape(p), strings.NewReader("with metadata"),
		map[string]string{"Content-Type": "application/octet-stream", "X-Metadata-Author": "Ember", "x-metadata-purpose": "test"})
	if code != http.StatusOK {
		t.Fatalf("upload with metadata = %d %s", code, body)
	}
	st, err := fsClient(t, base, "").Stat(t.Context(), connect.NewRequest(&pb.StatRequest{Path: p}))
	if md := st.Msg.GetEntry().GetMetadata(); err != nil || md["author"] != "Ember" || md["purpose"] != "test" || len(md) != 2 {
		t.Fatalf("metadata read back: %v, %v", md, err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("zipped"))
	zw.Close()
	code, _, body = filesReq(t, http.MethodPost, base+"/files?path="+url.QueryEscape(p), &gz,
		map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})
	if got, _ := os.ReadFile(p); code != http.StatusOK || string(got) != "zipped" {
		t.Fatalf("gzip upload = %d %s; file holds %q", code, body, got)
	}
	if entries, _ := os.ReadDir(dir); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.Contains(e.Name(), ".ember-") }) {
		t.Errorf("temporary files left in %s: %v", dir, entries)
	}

	tests := []struct {
		name, method, path string
		body               string
		header             map[string]string
		status             int
		reason             string
	}{
		{"read missing", http.MethodGet, filepath.Join(dir, "nope"), "", nil, 404, contract.ReasonNotFound},
		{"read a directory", http.MethodGet, dir, "", nil, 400, contract.ReasonIsDirectory},
		{"write over a directory", http.MethodPost, filepath.Join(dir, "sub"), "x", map[string]string{"Content-Type": "application/octet-stream"}, 400, contract.ReasonIsDirectory},
		{"write below a file", http.MethodPost, filepath.Join(dir, "raw.bin/x"), "x", map[string]string{"Content-Type": "application/octet-stream"}, 400, contract.ReasonNotDirectory},
		{"unknown content type", http.MethodPost, filepath.Join(dir, "y"), "x", map[string]string{"Content-Type": "text/plain"}, 400, contract.ReasonInvalid},
		{"bad gzip", http.MethodPost, filepath.Join(dir, "y"), "not gzip", map[string]string{"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}, 400, contract.ReasonInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := filesReq(t, tt.method, base+"/files?path="+url.QueryEscape(tt.path), strings.NewReader(tt.body), tt.header)
			var e struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if code != tt.status || h.Get(contract.ReasonHeader) != tt.reason || json.Unmarshal(body, &e) != nil || e.Code != tt.status {
				t.Errorf("= %d %q %s, want %d %q", code, h.Get(contract.ReasonHeader), body, tt.status, tt.reason)
			}
		})
	}
}

// TestFilesSigned: once a token is set, /files takes the token or a URL
// signed with it, and refuses the rest with 401; every other route wants
// the token.
func TestFilesSigned(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, base := serve(t, Config{})
	p := filepath.Join(dir, "signed.txt")
	if err := os.WriteFile(p, []byte("secret data"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.token = "tok"
	s.mu.Unlock()
	future, past := time.Now().Add(time.Hour).Unix(), time.Now().Add(-time.Minute).Unix()
	signed := func(op, user string, exp int64, sig string) string {
		q := url.Values{"path": {p}}
		if user != "" {
			q.Set("username", user)
		}
		if sig == "" {
			sig = Signature(p, op, user, "tok", exp)
		}
		q.Set("signature", sig)
		if exp != 0 {
			q.Set("signature_expiration", strconv.FormatInt(exp, 10))
		}
		return base + "/files?" + q.Encode()
	}
	tests := []struct {
		name   string
		url    string
		header map[string]string
		status int
	}{
		{"token", base + "/files?path=" + url.QueryEscape(p), map[string]string{TokenHeader: "tok"}, 200},
		{"wrong token", base + "/files?path=" + url.QueryEscape(p), map[string]string{TokenHeader: "bad"}, 401},
		{"nothing", base + "/files?path=" + url.QueryEscape(p), nil, 401},
		{"signed", signed(signRead, "", 0, ""), nil, 200},
		{"signed with expiry", signed(signRead, "", future, ""), nil, 200},
		{"expired", signed(signRead, "", past, ""), nil, 401},
		{"signed for writing", signed(signWrite, "", 0, ""), nil, 401},
		{"tampered", signed(signRead, "", 0, "v1_AAAA"), nil, 401},
		{"another user's", signed(signRead, "root", 0, Signature(p, signRead, "", "tok", 0)), nil, 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := filesReq(t, http.MethodGet, tt.url, nil, tt.header)
			if code != tt.status {
				t.Fatalf("= %d %s, want %d", code, body, tt.status)
			}
			if code == 200 && string(body) != "secret data" {
				t.Fatalf("body %q", body)
			}
			if code == 401 && h.Get(contract.ReasonHeader) != contract.ReasonSignature {
				t.Errorf("reason %q", h.Get(contract.ReasonHeader))
			}
		})
	}
	up := signed(signWrite, "", future, "")
	code, _, body := filesReq(t, http.MethodPost, up, strings.NewReader("new"), map[string]string{"Content-Type": "application/octet-stream"})
	if got, _ := os.ReadFile(p); code != 200 || string(got) != "new" {
		t.Fatalf("signed upload = %d %s, file %q", code, body, got)
	}
	if code, _, body := filesReq(t, http.MethodPost, base+"/process.Process/List", strings.NewReader("{}"), map[string]string{"Content-Type": "application/json"}); code != 401 {
		t.Errorf("rpc without the token = %d %s, want 401", code, body)
	}
}

// TestUploadNoSpace: a write that fills the disk is 507 and leaves neither
// a partial file nor a temporary one; the old file stays as it was.
func TestUploadNoSpace(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	_, base := serve(t, Config{})
	p := filepath.Join(dir, "big")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, h, body := filesReq(t, http.MethodPost, base+"/files?path="+url.QueryEscape(p), bytes.NewReader(make([]byte, 1<<20)),
		map[string]string{"Content-Type": "application/octet-stream"})
	if code != http.StatusInsufficientStorage || h.Get(contract.ReasonHeader) != contract.ReasonNoSpace {
		t.Fatalf("upload of 1 MiB into 256 KiB = %d %q %s, want 507 no_space", code, h.Get(contract.ReasonHeader), body)
	}
	entries, _ := os.ReadDir(dir)
	got, _ := os.ReadFile(p)
	if len(entries) != 1 || string(got) != "old" {
		t.Fatalf("after a failed upload: entries %v, file %q; want only the old file", entries, got)
	}
}
