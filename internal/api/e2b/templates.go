package e2b

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/emberhq/ember/internal/build"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// Builds is the daemon's template builder as the facade uses it (package
// build's Builder): E2B's template SDK defines a template in steps that
// come down to a build.Spec, and its COPY files to a build context.
type Builds interface {
	// Context unpacks a build context's tar stream into a directory.
	Context(r io.Reader) (dir string, cleanup func(), err error)
	Build(ctx context.Context, req build.Request, emit func(wire.BuildEvent)) (template.Template, error)
}

// E2B's build statuses.
const (
	buildWaiting  = "waiting"
	buildBuilding = "building"
	buildReady    = "ready"
	buildError    = "error"
)

// Limits of what the facade keeps of builds: the most builds remembered
// (the oldest finished ones go first), log entries kept per build, and log
// entries one status call returns (E2B's page).
const (
	maxBuilds      = 64
	maxLogEntries  = 20000
	logPage        = 100
	maxUploadBytes = 4 << 30
)

// builds is what the facade knows of the builds the SDK asked for.
type builds struct {
	// key signs upload URLs: the SDK PUTs a COPY's archive without its
	// API key, to the URL the facade gave it.
	key []byte
	mu  sync.Mutex
	// byID and order (oldest first) guard the builds below.
	byID  map[string]*e2bBuild
	order []string
}

// e2bBuild is one build of E2B's build API.
type e2bBuild struct {
	id, template  string
	vcpus, memMiB int
	mu            sync.Mutex
	// mu guards the fields below.
	status string
	// log holds the entries from dropped on (the oldest are dropped past
	// maxLogEntries, so an offset stays an index into the whole log).
	log     []BuildLogEntry
	dropped int
	reason  *BuildStatusReason
	// partial is output of a step not yet ended by a newline.
	partial map[string]string
	// nInstr is the number of the definition's instructions, which names
	// E2B's steps.
	nInstr int
}

func newBuilds() *builds {
	key := make([]byte, 32)
	rand.Read(key)
	return &builds{key: key, byID: map[string]*e2bBuild{}}
}

// add remembers a build, forgetting the oldest finished one past
// maxBuilds.
func (bs *builds) add(b *e2bBuild) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.byID[b.id] = b
	bs.order = append(bs.order, b.id)
	for i := 0; len(bs.order) > maxBuilds && i < len(bs.order); {
		old := bs.byID[bs.order[i]]
		if st := old.state(); st == buildReady || st == buildError {
			delete(bs.byID, old.id)
			bs.order = append(bs.order[:i], bs.order[i+1:]...)
			continue
		}
		i++
	}
}

func (bs *builds) get(templateID, buildID string) (*e2bBuild, error) {
	bs.mu.Lock()
	b, ok := bs.byID[buildID]
	bs.mu.Unlock()
	if !ok || b.template != templateID {
		return nil, &badRequest{status: http.StatusNotFound, msg: fmt.Sprintf("build %s of template %s: not found", buildID, templateID)}
	}
	return b, nil
}

// sign is the token an upload URL of a COPY's files carries.
func (bs *builds) sign(templateID, hash string) string {
	m := hmac.New(sha256.New, bs.key)
	fmt.Fprintf(m, "%s\n%s", templateID, hash)
	return hex.EncodeToString(m.Sum(nil))
}

func (b *e2bBuild) state() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// registerBuilds mounts E2B's template build API when the daemon builds
// templates; without a builder those paths stay unserved (501).
func (f *Facade) registerBuilds(mux *http.ServeMux, h func(string, http.HandlerFunc)) {
	h("GET /templates/aliases/{alias}", f.alias)
	if f.cfg.Builds == nil {
		return
	}
	h("POST /v3/templates", f.requestBuild)
	h("GET /templates/{templateID}/files/{hash}", f.fileLink)
	// The SDK PUTs the archive with no API key: the URL's token is its
	// authorization.
	mux.HandleFunc("PUT /templates/{templateID}/files/{hash}", f.upload)
	h("POST /v2/templates/{templateID}/builds/{buildID}", f.startBuild)
	h("GET /templates/{templateID}/builds/{buildID}/status", f.buildStatus)
}

// splitTag parses E2B's "name[:tag]"; ember templates have no tags, so a
// tag names the template as it is.
func splitTag(name string) (string, string) {
	n, tag, _ := strings.Cut(name, ":")
	return n, tag
}

// templateName maps an E2B template name (a tag dropped) to the ember
// template it stands for: a mapped name, E2B's default (the daemon's
// default template, or e2bdev/base, the image E2B's base template is
// made of), or an ember template as it is.
func (f *Facade) templateName(name string) string {
	if t, ok := f.cfg.Templates[name]; ok {
		return t
	}
	name, _ = splitTag(name)
	if t, ok := f.cfg.Templates[name]; ok {
		return t
	}
	if name == DefaultTemplate && f.cfg.DefaultTemplate != "" {
		return f.cfg.DefaultTemplate
	}
	return name
}

func (f *Facade) alias(w http.ResponseWriter, r *http.Request) {
	alias := r.PathValue("alias")
	if !f.isTemplate(f.templateName(alias)) && !f.isTemplate(alias) {
		writeError(w, http.StatusNotFound, "template "+alias+": not found")
		return
	}
	writeJSON(w, http.StatusOK, TemplateAliasResponse{TemplateID: alias})
}

// requestBuild is POST /v3/templates: a build is named (its template the
// name without a tag) and waits for its definition.
func (f *Facade) requestBuild(w http.ResponseWriter, r *http.Request) {
	var body TemplateBuildRequestV3
	if err := decode(r, &body); err != nil {
		f.fail(w, r, err)
		return
	}
	full := body.Name
	if full == "" {
		full = body.Alias
	}
	name, tag := splitTag(full)
	if name == "" {
		f.fail(w, r, invalid("name: the template's name is required"))
		return
	}
	if !validTemplate.MatchString(name) {
		f.fail(w, r, invalid("name %q: a template name is 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit", name))
		return
	}
	tags := append([]string(nil), body.Tags...)
	if tag != "" {
		tags = append(tags, tag)
	}
	if len(tags) == 0 {
		tags = []string{"default"}
	}
	b := &e2bBuild{id: uuid.NewString(), template: name, status: buildWaiting, partial: map[string]string{}}
	for _, v := range []struct {
		field string
		src   *int
		dst   *int
	}{{"cpuCount", body.CPUCount, &b.vcpus}, {"memoryMB", body.MemoryMB, &b.memMiB}} {
		if v.src == nil {
			continue
		}
		if *v.src <= 0 {
			f.fail(w, r, invalid("%s: a positive integer, got %d", v.field, *v.src))
			return
		}
		*v.dst = *v.src
	}
	f.builds.add(b)
	writeJSON(w, http.StatusAccepted, TemplateRequestResponseV3{
		TemplateID: name, BuildID: b.id, Names: []string{full}, Aliases: []string{name}, Tags: tags,
	})
}

// validTemplate is what an ember template may be called (package build
// checks the same when the build starts).
var validTemplate = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// validHash is what a COPY's files hash may be: it names a file.
var validHash = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// uploadPath is where a COPY's archive of a files hash is kept. Archives
// stay, so a rebuild with unchanged files uploads nothing.
func (f *Facade) uploadPath(hash string) string {
	return filepath.Join(f.cfg.FilesDir, hash+".tar")
}

// fileLink is GET /templates/{id}/files/{hash}: whether the daemon has the
// files of a COPY, and the URL to PUT their archive to.
func (f *Facade) fileLink(w http.ResponseWriter, r *http.Request) {
	id, hash := r.PathValue("templateID"), r.PathValue("hash")
	if !validHash.MatchString(hash) {
		f.fail(w, r, invalid("files hash %q: want letters, digits, '_' or '-'", hash))
		return
	}
	_, err := os.Stat(f.uploadPath(hash))
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	url := fmt.Sprintf("%s://%s/templates/%s/files/%s?token=%s", scheme, r.Host, id, hash, f.builds.sign(id, hash))
	writeJSON(w, http.StatusOK, TemplateBuildFileUpload{Present: err == nil, URL: url})
}

// upload is the PUT of a COPY's archive (tar, gzipped or not) to the URL
// fileLink gave.
func (f *Facade) upload(w http.ResponseWriter, r *http.Request) {
	id, hash := r.PathValue("templateID"), r.PathValue("hash")
	if !validHash.MatchString(hash) || !hmac.Equal([]byte(r.URL.Query().Get("token")), []byte(f.builds.sign(id, hash))) {
		writeError(w, http.StatusForbidden, "upload of files "+hash+": the URL's token is not the daemon's")
		return
	}
	if err := f.saveUpload(hash, http.MaxBytesReader(w, r.Body, maxUploadBytes)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("files archive exceeds %d bytes", int64(maxUploadBytes)))
			return
		}
		f.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// saveUpload writes an archive under its hash atomically: a reader sees
// the whole archive or none.
func (f *Facade) saveUpload(hash string, r io.Reader) error {
	if err := os.MkdirAll(f.cfg.FilesDir, 0o700); err != nil {
		return fmt.Errorf("create template files dir: %w", err)
	}
	tmp, err := os.CreateTemp(f.cfg.FilesDir, "."+hash+"-*")
	if err != nil {
		return fmt.Errorf("create template files %s: %w", hash, err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write template files %s: %w", hash, err)
	}
	if err := os.Rename(tmp.Name(), f.uploadPath(hash)); err != nil {
		return fmt.Errorf("store template files %s: %w", hash, err)
	}
	return nil
}

// startBuild is POST /v2/templates/{id}/builds/{b}: the definition is
// translated and checked, and the build starts. Bad input (a step ember
// cannot do, files never uploaded, a base that is no image, a COPY source
// not in the files) is the answer's error; once the build runs, failures
// are the build status's.
func (f *Facade) startBuild(w http.ResponseWriter, r *http.Request) {
	b, err := f.builds.get(r.PathValue("templateID"), r.PathValue("buildID"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	var body TemplateBuildStartV2
	if err := decode(r, &body); err != nil {
		f.fail(w, r, err)
		return
	}
	spec, hashes, err := f.spec(b.template, body)
	if err != nil {
		f.fail(w, r, err)
		return
	}
	b.mu.Lock()
	if b.status != buildWaiting {
		b.mu.Unlock()
		f.fail(w, r, &badRequest{status: http.StatusConflict, msg: "build " + b.id + ": started already"})
		return
	}
	b.status, b.nInstr = buildBuilding, len(body.Steps)
	b.mu.Unlock()
	dir, cleanup, err := f.context(hashes)
	if err != nil {
		b.finish(err.Error(), "", nil)
		f.fail(w, r, err)
		return
	}
	ctx := f.cfg.BuildContext
	if ctx == nil {
		ctx = context.Background()
	}
	req := build.Request{Spec: spec, Context: dir, NoCache: body.Force, VCPUs: b.vcpus, MemoryMiB: b.memMiB}
	prepared := make(chan struct{})
	req.OnPrepared = func() { close(prepared) }
	done := make(chan error, 1)
	// The build outlives the request: a request of its context, for the
	// error's classification, once it is over.
	br := r.WithContext(ctx)
	go func() {
		defer cleanup()
		start := time.Now()
		_, err := f.cfg.Builds.Build(ctx, req, b.emit)
		if err != nil {
			status, msg := f.cfg.Classify(br, err)
			f.cfg.Log.Warn("e2b template build failed", "template", b.template, "build", b.id, "status", status, "err", err)
			b.fail(msg, err)
		} else {
			b.finish("", "", nil)
			f.cfg.Log.Info("e2b template built", "template", b.template, "build", b.id, "duration_ms", time.Since(start).Milliseconds())
		}
		done <- err
	}()
	select {
	case <-prepared:
	case err := <-done:
		if err != nil {
			f.fail(w, r, err)
			return
		}
	}
	w.WriteHeader(http.StatusAccepted)
}

// spec translates E2B's definition into a build's, and returns the files
// hashes of its COPY steps.
func (f *Facade) spec(name string, body TemplateBuildStartV2) (build.Spec, []string, error) {
	spec := build.Spec{Name: name}
	if len(body.FromImageRegistry) > 0 && string(body.FromImageRegistry) != "null" {
		return spec, nil, invalid("fromImageRegistry: registry credentials are not taken: ember pulls public images, or uses images on its host")
	}
	switch {
	case (body.FromImage == "") == (body.FromTemplate == ""):
		return spec, nil, invalid("exactly one of fromImage and fromTemplate must be given")
	case body.FromTemplate != "":
		spec.Base = build.Base{Kind: build.BaseTemplate, Ref: f.templateName(body.FromTemplate)}
	case isE2BBase(body.FromImage) && f.cfg.DefaultTemplate != "":
		spec.Base = build.Base{Kind: build.BaseTemplate, Ref: f.templateName(DefaultTemplate)}
	default:
		spec.Base = build.ParseBase(body.FromImage)
	}
	var hashes []string
	for i, s := range body.Steps {
		st, err := step(s.TemplateStep)
		if err != nil {
			return spec, nil, invalid("step %d (%s): %v", i+1, s.Type, err)
		}
		if st.Kind == build.Copy {
			if !validHash.MatchString(s.FilesHash) {
				return spec, nil, invalid("step %d (COPY %s): filesHash %q: want letters, digits, '_' or '-'", i+1, st.Sources[0], s.FilesHash)
			}
			if _, err := os.Stat(f.uploadPath(s.FilesHash)); err != nil {
				return spec, nil, invalid("step %d (COPY %s): its files (hash %s) were never uploaded", i+1, st.Sources[0], s.FilesHash)
			}
			hashes = append(hashes, s.FilesHash)
		}
		st.Force = s.Force
		spec.Steps = append(spec.Steps, st)
	}
	if body.StartCmd != "" {
		spec.Steps = append(spec.Steps, build.Step{Kind: build.Start, Command: body.StartCmd})
	}
	if body.ReadyCmd != "" {
		spec.Steps = append(spec.Steps, build.Step{Kind: build.Ready, Command: body.ReadyCmd})
	}
	return spec, hashes, nil
}

// isE2BBase says whether an image is E2B's base image, which the SDK's
// Template() starts from unless told otherwise: on ember, the default
// template.
func isE2BBase(ref string) bool {
	n, _ := splitTag(ref)
	return n == "e2bdev/base" || n == "docker.io/e2bdev/base"
}

// step translates one of E2B's steps (the SDK's instruction: its type and
// positional arguments).
func step(s TemplateStep) (build.Step, error) {
	arg := func(i int) string {
		if i < len(s.Args) {
			return s.Args[i]
		}
		return ""
	}
	switch s.Type {
	case "RUN":
		if len(s.Args) < 1 || len(s.Args) > 2 {
			return build.Step{}, fmt.Errorf("want a command and an optional user, got %d arguments", len(s.Args))
		}
		return build.Step{Kind: build.Run, Command: arg(0), User: arg(1), Text: "RUN " + arg(0)}, nil
	case "COPY":
		if len(s.Args) < 2 || len(s.Args) > 4 {
			return build.Step{}, fmt.Errorf("want a source, a destination, a user and a mode, got %d arguments", len(s.Args))
		}
		st := build.Step{Kind: build.Copy, Sources: []string{arg(0)}, Path: arg(1), Chown: arg(2), Text: "COPY " + arg(0) + " " + arg(1)}
		if m := arg(3); m != "" {
			mode, err := strconv.ParseUint(m, 8, 32)
			if err != nil || mode > 0o7777 {
				return build.Step{}, fmt.Errorf("mode %q: want octal permission bits", m)
			}
			st.Mode = uint32(mode)
		}
		return st, nil
	case "ENV":
		if len(s.Args) == 0 || len(s.Args)%2 != 0 {
			return build.Step{}, fmt.Errorf("want name and value pairs, got %d arguments", len(s.Args))
		}
		st := build.Step{Kind: build.Env}
		for i := 0; i < len(s.Args); i += 2 {
			st.Env = append(st.Env, build.KeyValue{Key: s.Args[i], Value: s.Args[i+1]})
		}
		return st, nil
	case "WORKDIR", "USER":
		if len(s.Args) != 1 {
			return build.Step{}, fmt.Errorf("want one argument, got %d", len(s.Args))
		}
		kind := build.Workdir
		if s.Type == "USER" {
			kind = build.User
		}
		return build.Step{Kind: kind, Path: arg(0)}, nil
	}
	return build.Step{}, errors.New("not a step ember builds (RUN, COPY, ENV, WORKDIR, USER)")
}

// context makes the build context of a definition's COPY steps: every
// archive the SDK uploaded for them, each relative to the same context
// directory, unpacked into one directory.
func (f *Facade) context(hashes []string) (string, func(), error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(f.mergeArchives(pw, hashes)) }()
	dir, cleanup, err := f.cfg.Builds.Context(pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return "", nil, invalid("the uploaded files: %v", err)
	}
	return dir, cleanup, nil
}

// mergeArchives writes the archives of hashes, gunzipped where they are
// gzipped, as one tar stream.
func (f *Facade) mergeArchives(w io.Writer, hashes []string) error {
	tw := tar.NewWriter(w)
	seen := map[string]bool{}
	for _, h := range hashes {
		if seen[h] {
			continue
		}
		seen[h] = true
		if err := copyArchive(tw, f.uploadPath(h)); err != nil {
			return fmt.Errorf("files %s: %w", h, err)
		}
	}
	return tw.Close()
}

func copyArchive(tw *tar.Writer, path string) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	br := bufio.NewReader(file)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

// e2bStep is E2B's name of build step n (1 is the base): "base", the
// instruction's number from 1, or "finalize" for the start and ready
// commands after them.
func (b *e2bBuild) e2bStep(n int) string {
	switch {
	case n <= 0:
		return ""
	case n == 1:
		return "base"
	case n-1 <= b.nInstr:
		return strconv.Itoa(n - 1)
	}
	return "finalize"
}

// emit turns a build's progress into log entries.
func (b *e2bBuild) emit(ev wire.BuildEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	step := b.e2bStep(ev.Step)
	add := func(level, msg string) {
		b.log = append(b.log, BuildLogEntry{Timestamp: rfc3339(time.Now()), Level: level, Message: msg, Step: step})
		if over := len(b.log) - maxLogEntries; over > 0 {
			b.log = append([]BuildLogEntry(nil), b.log[over:]...)
			b.dropped += over
		}
	}
	switch ev.Type {
	case wire.BuildStep:
		msg := fmt.Sprintf("[%d/%d] %s", ev.Step, ev.Total, ev.Instruction)
		if ev.Cached {
			msg += " (cached)"
		}
		add("info", msg)
	case wire.BuildOutput:
		text := b.partial[ev.Stream] + string(ev.Data)
		lines := strings.Split(text, "\n")
		b.partial[ev.Stream] = lines[len(lines)-1]
		for _, l := range lines[:len(lines)-1] {
			add("info", l)
		}
	case wire.BuildStepDone:
		for stream, rest := range b.partial {
			if rest != "" {
				add("info", rest)
			}
			delete(b.partial, stream)
		}
		if !ev.Cached {
			add("debug", fmt.Sprintf("[%d/%d] done in %.1fs", ev.Step, ev.Total, ev.DurationMS/1000))
		}
	case wire.BuildLog:
		add("info", ev.Message)
	case wire.BuildWarning:
		add("warn", ev.Message)
	case wire.BuildDone:
		msg := "template built"
		if ev.Template != nil {
			msg = fmt.Sprintf("template %s built: %d MiB allocated, in %.1fs", ev.Template.Name, ev.Template.RootfsBytes>>20, ev.DurationMS/1000)
		}
		add("info", msg)
	}
}

// fail ends a build in error: the message, and for a failed step its
// E2B name and last output lines.
func (b *e2bBuild) fail(msg string, err error) {
	var se *build.StepError
	if !errors.As(err, &se) {
		b.finish(msg, "", nil)
		return
	}
	b.mu.Lock()
	step := b.e2bStep(se.Step)
	b.mu.Unlock()
	now := rfc3339(time.Now())
	var lines []BuildLogEntry
	for _, l := range se.Output {
		lines = append(lines, BuildLogEntry{Timestamp: now, Level: "error", Message: l, Step: step})
	}
	b.finish(msg, step, lines)
}

// finish ends a build: ready when msg is empty, in error otherwise.
func (b *e2bBuild) finish(msg, step string, lines []BuildLogEntry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if msg == "" {
		b.status = buildReady
		return
	}
	b.status = buildError
	b.reason = &BuildStatusReason{Message: msg, Step: step, LogEntries: lines}
}

// buildStatus is GET /templates/{id}/builds/{b}/status: the state and up
// to a page of log entries from logsOffset on.
func (f *Facade) buildStatus(w http.ResponseWriter, r *http.Request) {
	b, err := f.builds.get(r.PathValue("templateID"), r.PathValue("buildID"))
	if err != nil {
		f.fail(w, r, err)
		return
	}
	offset := 0
	if v := r.URL.Query().Get("logsOffset"); v != "" {
		if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
			f.fail(w, r, invalid("logsOffset %q: a non-negative integer", v))
			return
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := max(offset-b.dropped, 0)
	entries := []BuildLogEntry{}
	if i < len(b.log) {
		entries = append(entries, b.log[i:min(i+logPage, len(b.log))]...)
	}
	writeJSON(w, http.StatusOK, TemplateBuildInfo{
		TemplateID: b.template, BuildID: b.id, Status: b.status, LogEntries: entries, Logs: []string{}, Reason: b.reason,
	})
}
