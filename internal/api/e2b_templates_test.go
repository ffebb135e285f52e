package api

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/build"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// fakeBuilds records the builds the E2B facade starts. A template named
// "bad-base" fails before any step (bad input); "fails" fails its first
// instruction.
type fakeBuilds struct {
	t    *testing.T
	mu   sync.Mutex
	reqs []build.Request
	// files are the context's files of each build, by name.
	files []map[string]string
}

func (f *fakeBuilds) Context(r io.Reader) (string, func(), error) {
	dir, err := os.MkdirTemp(f.t.TempDir(), "ctx-")
	if err != nil {
		return "", nil, err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", nil, err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, _ := io.ReadAll(tr)
		os.MkdirAll(filepath.Join(dir, filepath.Dir(h.Name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, h.Name), b, 0o644); err != nil {
			return "", nil, err
		}
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

func (f *fakeBuilds) Build(ctx context.Context, req build.Request, emit func(wire.BuildEvent)) (template.Template, error) {
	files := map[string]string{}
	filepath.WalkDir(req.Context, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(req.Context, p)
			files[rel] = string(b)
		}
		return nil
	})
	f.mu.Lock()
	f.reqs, f.files = append(f.reqs, req), append(f.files, files)
	f.mu.Unlock()
	if req.Spec.Name == "bad-base" {
		return template.Template{}, &build.InputError{Kind: build.ErrInvalidImage, Ref: req.Spec.Base.Ref, Reason: "not an image"}
	}
	req.OnPrepared()
	total := len(req.Spec.Steps) + 1
	emit(wire.BuildEvent{Type: wire.BuildStep, Step: 1, Total: total, Instruction: "FROM base", Cached: true})
	emit(wire.BuildEvent{Type: wire.BuildStep, Step: 2, Total: total, Instruction: "RUN x"})
	emit(wire.BuildEvent{Type: wire.BuildOutput, Step: 2, Total: total, Stream: "stdout", Data: []byte("hel")})
	emit(wire.BuildEvent{Type: wire.BuildOutput, Step: 2, Total: total, Stream: "stdout", Data: []byte("lo\nworld\n")})
	if req.Spec.Name == "fails" {
		return template.Template{}, &build.StepError{Step: 2, Total: total, Text: "RUN x", ExitCode: 3, Output: []string{"hello", "world"}}
	}
	emit(wire.BuildEvent{Type: wire.BuildStepDone, Step: 2, Total: total, DurationMS: 5})
	emit(wire.BuildEvent{Type: wire.BuildDone, Template: &wire.Template{Name: req.Spec.Name, RootfsBytes: 3 << 20}})
	return template.Template{Name: req.Spec.Name}, nil
}

func (f *fakeBuilds) DeleteTemplate(ctx context.Context, name string) error { return nil }

// gzTar is a gzipped tar of files, as the SDK uploads a COPY's.
func gzTar(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for n, body := range files {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// TestE2BTemplateBuild drives E2B's build API as the SDK's Template.build
// calls it: a build requested, a COPY's files uploaded once, the
// definition translated into a build's steps, the status polled with its
// log; and each bad input answered with E2B's numeric code.
func TestE2BTemplateBuild(t *testing.T) {
	fb := &fakeBuilds{t: t}
	filesDir := t.TempDir()
	srv, _ := newServerWith(t, &fakeSandboxes{}, func(c *Config) {
		c.Builds = fb
		c.E2B.FilesDir = filesDir
		c.E2B.DefaultTemplate = "base"
	})
	call := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		status, _, b := e2bCall(t, srv.URL, method, path, body, key)
		var m map[string]any
		json.Unmarshal(b, &m)
		return status, m
	}
	request := func(name string) string {
		t.Helper()
		status, m := call("POST", "/v3/templates", fmt.Sprintf(`{"name":%q,"cpuCount":1,"memoryMB":512}`, name))
		if status != http.StatusAccepted {
			t.Fatalf("request build %s: %d %v", name, status, m)
		}
		return m["buildID"].(string)
	}
	// status polls a build until it ends, returning its log's messages.
	status := func(tpl, id string) (map[string]any, []string) {
		t.Helper()
		var msgs []string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			code, m := call("GET", fmt.Sprintf("/templates/%s/builds/%s/status?logsOffset=%d", tpl, id, len(msgs)), "")
			if code != http.StatusOK {
				t.Fatalf("status: %d %v", code, m)
			}
			for _, e := range m["logEntries"].([]any) {
				msgs = append(msgs, e.(map[string]any)["message"].(string))
			}
			if s := m["status"]; s == "ready" || s == "error" {
				return m, msgs
			}
		}
		t.Fatal("build never ended")
		return nil, nil
	}

	status0, m := call("POST", "/v3/templates", `{"name":"py:v1","tags":["stable"]}`)
	if status0 != http.StatusAccepted || m["templateID"] != "py" || fmt.Sprint(m["tags"]) != "[stable v1]" || fmt.Sprint(m["names"]) != "[py:v1]" {
		t.Fatalf("request build: %d %v", status0, m)
	}
	buildID := m["buildID"].(string)

	// The COPY's files: absent, uploaded (never without the URL's token),
	// then present.
	hash := strings.Repeat("ab", 32)
	_, link := call("GET", "/templates/py/files/"+hash, "")
	url, _ := link["url"].(string)
	if link["present"] != false || !strings.HasPrefix(url, srv.URL+"/templates/py/files/"+hash+"?token=") {
		t.Fatalf("upload link %v", link)
	}
	archive := gzTar(t, map[string]string{"app/hello.txt": "hi there"})
	if code, _, _ := send(t, "PUT", srv.URL+"/templates/py/files/"+hash+"?token=forged", "", nil, string(archive)); code != http.StatusForbidden {
		t.Errorf("upload with a forged token: %d, want 403", code)
	}
	if code, _, b := send(t, "PUT", url, "", nil, string(archive)); code != http.StatusOK {
		t.Fatalf("upload: %d %s", code, b)
	}
	if _, link := call("GET", "/templates/py/files/"+hash, ""); link["present"] != true {
		t.Fatalf("after the upload: %v", link)
	}

	def := fmt.Sprintf(`{"fromTemplate":"base","startCmd":"serve","readyCmd":"check","force":false,"steps":[
		{"type":"RUN","args":["apt-get update","root"],"force":false},
		{"type":"COPY","args":["app","/opt/app","user","0755"],"filesHash":%q,"force":false,"resolveSymlinks":true,"gzip":true},
		{"type":"ENV","args":["A","1","B","two"],"force":false},
		{"type":"WORKDIR","args":["/opt/app"],"force":true},
		{"type":"USER","args":["user"],"force":true}]}`, hash)
	if code, m := call("POST", "/v2/templates/py/builds/"+buildID, def); code != http.StatusAccepted {
		t.Fatalf("start build: %d %v", code, m)
	}
	end, msgs := status("py", buildID)
	if end["status"] != "ready" {
		t.Fatalf("build ended %v", end)
	}
	for _, want := range []string{"[1/8] FROM base (cached)", "[2/8] RUN x", "hello", "world", "template py built: 3 MiB allocated, in 0.0s"} {
		if !strings.Contains(strings.Join(msgs, "\n"), want) {
			t.Errorf("log %q lacks %q", msgs, want)
		}
	}
	spec := fb.reqs[0].Spec
	want := build.Spec{Name: "py", Base: build.Base{Kind: build.BaseTemplate, Ref: "base"}, Steps: []build.Step{
		{Kind: build.Run, Command: "apt-get update", User: "root", Text: "RUN apt-get update"},
		{Kind: build.Copy, Sources: []string{"app"}, Path: "/opt/app", Chown: "user", Mode: 0o755, Text: "COPY app /opt/app"},
		{Kind: build.Env, Env: []build.KeyValue{{Key: "A", Value: "1"}, {Key: "B", Value: "two"}}},
		{Kind: build.Workdir, Path: "/opt/app", Force: true},
		{Kind: build.User, Path: "user", Force: true},
		{Kind: build.Start, Command: "serve"},
		{Kind: build.Ready, Command: "check"},
	}}
	if got, w := fmt.Sprintf("%+v", spec), fmt.Sprintf("%+v", want); got != w {
		t.Errorf("spec\n got %s\nwant %s", got, w)
	}
	if r := fb.reqs[0]; r.VCPUs != 0 || r.MemoryMiB != 0 || fb.files[0]["app/hello.txt"] != "hi there" {
		t.Errorf("request %+v, context %v", r, fb.files[0])
	}
	if code, m := call("POST", "/v2/templates/py/builds/"+buildID, def); code != http.StatusConflict || m["code"] != float64(409) {
		t.Errorf("a second start: %d %v, want 409", code, m)
	}

	// A step that fails: the status says which, E2B's way, with its output.
	failID := request("fails")
	if code, m := call("POST", "/v2/templates/fails/builds/"+failID, `{"fromImage":"e2bdev/base","steps":[{"type":"RUN","args":["x"]}]}`); code != http.StatusAccepted {
		t.Fatalf("start failing build: %d %v", code, m)
	}
	end, _ = status("fails", failID)
	reason, _ := end["reason"].(map[string]any)
	if end["status"] != "error" || reason["step"] != "1" || !strings.Contains(fmt.Sprint(reason["message"]), "exit code 3") ||
		len(reason["logEntries"].([]any)) != 2 {
		t.Errorf("failed build status %v", end)
	}
	if b := fb.reqs[1]; b.Spec.Base != (build.Base{Kind: build.BaseTemplate, Ref: "base"}) || b.VCPUs != 1 || b.MemoryMiB != 512 {
		t.Errorf("e2bdev/base stands for the default template, cpuCount and memoryMB for the machine: %+v", b)
	}

	for _, tc := range []struct {
		name, tpl, body string
		status          int
		msg             string
	}{
		{"unknown step", "t1", `{"fromTemplate":"base","steps":[{"type":"HEALTHCHECK","args":["x"]}]}`, 400, "step 1 (HEALTHCHECK)"},
		{"files never uploaded", "t2", `{"fromTemplate":"base","steps":[{"type":"COPY","args":["a","/a"],"filesHash":"cafe"}]}`, 400, "never uploaded"},
		{"two bases", "t3", `{"fromTemplate":"base","fromImage":"debian:bookworm"}`, 400, "exactly one of"},
		{"no base", "t4", `{}`, 400, "exactly one of"},
		{"credentials", "t5", `{"fromImage":"x/y","fromImageRegistry":{"type":"registry","username":"u","password":"p"}}`, 400, "credentials"},
		{"odd env", "t6", `{"fromTemplate":"base","steps":[{"type":"ENV","args":["A"]}]}`, 400, "pairs"},
		{"bad mode", "t7", `{"fromTemplate":"base","steps":[{"type":"COPY","args":["a","/a","","9x"],"filesHash":"` + hash + `"}]}`, 400, "octal"},
		{"unknown field", "t8", `{"fromTemplate":"base","nope":1}`, 400, "nope"},
		{"not an image", "bad-base", `{"fromImage":"/tmp/nothing"}`, 422, "not an image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := request(tc.tpl)
			code, m := call("POST", "/v2/templates/"+tc.tpl+"/builds/"+id, tc.body)
			if code != tc.status || m["code"] != float64(tc.status) || !strings.Contains(fmt.Sprint(m["message"]), tc.msg) {
				t.Errorf("%d %v, want %d saying %q", code, m, tc.status, tc.msg)
			}
		})
	}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
	}{
		{"no name", "POST", "/v3/templates", `{}`, 400},
		{"bad name", "POST", "/v3/templates", `{"name":"Not/A Name"}`, 400},
		{"bad cpu", "POST", "/v3/templates", `{"name":"x","cpuCount":0}`, 400},
		{"unknown build", "GET", "/templates/py/builds/nope/status", "", 404},
		{"build of another template", "GET", "/templates/other/builds/" + buildID + "/status", "", 404},
		{"bad offset", "GET", "/templates/py/builds/" + buildID + "/status?logsOffset=-1", "", 400},
		{"bad hash", "GET", "/templates/py/files/..%2f..%2fx", "", 400},
		{"alias of a template", "GET", "/templates/aliases/base", "", 200},
		{"alias of nothing", "GET", "/templates/aliases/nope", "", 404},
		{"tags are not served", "POST", "/templates/tags", `{}`, 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, m := call(tc.method, tc.path, tc.body); code != tc.status || (code != 200 && m["code"] != float64(tc.status)) {
				t.Errorf("%d %v, want %d", code, m, tc.status)
			}
		})
	}
	if entries, _ := os.ReadDir(filesDir); len(entries) != 1 {
		t.Errorf("files kept: %v, want the one archive", entries)
	}
}
