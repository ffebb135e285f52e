//go:build linux

package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// Event is one line of a build's progress (wire.BuildEvent): a step
// starting, its output as it is produced, its end, a warning, the
// published template.
type Event = wire.BuildEvent

// Sandboxes is what a build needs of the sandbox manager: a sandbox booted
// from the image so far, commands run in it, its disk exported after each
// step, and its end, whatever happens.
type Sandboxes interface {
	Create(ctx context.Context, req sandbox.CreateRequest) (store.Sandbox, error)
	Exec(ctx context.Context, id string, req sandbox.ExecRequest, stdout, stderr io.Writer) (sandbox.ExecResult, error)
	SendStdin(ctx context.Context, id string, pid uint32, data []byte) error
	CloseStdin(ctx context.Context, id string, pid uint32) error
	ReadFile(ctx context.Context, id, user, path string) (io.ReadCloser, int64, error)
	ExportDisk(ctx context.Context, id, dst string) error
	Destroy(ctx context.Context, id string) error
	List() []store.Sandbox
	// ReplaceTemplate runs replace once no sandbox, create or snapshot
	// needs the template name (sandbox.ErrTemplateInUse otherwise); nil
	// replace only checks.
	ReplaceTemplate(ctx context.Context, name string, replace func() error) error
}

// Defaults of a build's machine and disk.
const (
	DefaultDiskMiB     = 4096
	DefaultVCPUs       = 2
	DefaultMemoryMiB   = 1024
	DefaultStepTimeout = time.Hour
	// DefaultCacheMax bounds the step cache's allocated bytes.
	DefaultCacheMax int64 = 32 << 30
)

// buildMeta marks a build's sandboxes (the template being built), so a
// restarted daemon finds and ends those a crash left.
const buildMeta = "ember.build"

// Builder runs template builds inside the daemon.
type Builder struct {
	Registry  template.Registry
	Sandboxes Sandboxes
	// Kernel and KernelKey are the guest kernel build sandboxes boot and
	// templates get (the default template's), unless the base is a
	// template, whose own kernel is kept.
	Kernel, KernelKey string
	// Agent is the guest agent binary put into every image.
	Agent []byte
	// CacheDir holds the built-in Debian base (as the kernel cache does:
	// /var/cache/ember); StepDir the step cache; WorkDir builds in
	// progress (unpacked bases, contexts).
	CacheDir, StepDir, WorkDir string
	// CacheMax bounds the step cache; 0 takes DefaultCacheMax.
	CacheMax int64
	// StepTimeout bounds one RUN; 0 takes DefaultStepTimeout.
	StepTimeout time.Duration
	Log         *slog.Logger
}

// Request is one build: a definition, its context and the machine.
type Request struct {
	Spec Spec
	// Context is the build context, a directory on this host ("": none).
	Context string
	// DiskMiB is the template's disk; VCPUs and MemoryMiB the build
	// sandbox's. Zero takes the defaults.
	DiskMiB, VCPUs, MemoryMiB int
	// NoCache rebuilds every step (results are still cached).
	NoCache bool
	// OnPrepared, when set, is called once the request is checked and
	// before any step runs: from then on failures are a step's (the REST
	// API commits to its streamed answer there).
	OnPrepared func()
}

// Build is Prepare, then Run: the one call a build front end (the REST
// API's Dockerfile builds, E2B's template SDK) makes. Bad input comes back
// before any event as an *InputError; a step that fails as a *StepError.
func (b *Builder) Build(ctx context.Context, req Request, emit func(Event)) (template.Template, error) {
	p, err := b.Prepare(ctx, req)
	if err != nil {
		return template.Template{}, err
	}
	defer p.Close()
	if req.OnPrepared != nil {
		req.OnPrepared()
	}
	return p.Run(ctx, emit)
}

// Plan is a checked build, ready to run: its base resolved, its COPY
// sources found and every step's cache key known.
type Plan struct {
	b     *Builder
	req   Request
	spec  Spec
	guest guestFiles
	ctx   fs.FS
	// base: img or tpl, or neither for the built-in Debian.
	img *image
	tpl *template.Template
	// kernel and kernelKey are what the template boots.
	kernel, kernelKey string
	// keys[0] names the base image, keys[i] the image after step i.
	keys   []string
	copies map[int]copyPlan
	// warnings found while preparing (the built-in Debian standing in for
	// a registry's), reported first.
	warnings []string
	closers  []func()
}

// templateName is what a built template may be called.
var templateName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// Prepare checks a build request and resolves everything it needs before
// any work: the name, the steps, the base (a registry's manifest is
// fetched, a local image opened, the built-in Debian's key computed), the
// COPY sources. Failures are *InputErrors.
func (b *Builder) Prepare(ctx context.Context, req Request) (_ *Plan, err error) {
	spec := req.Spec
	if !templateName.MatchString(spec.Name) {
		return nil, inputError(ErrInvalidSpec, 0, spec.Name, "a template name is 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if err := b.Sandboxes.ReplaceTemplate(ctx, spec.Name, nil); err != nil {
		return nil, fmt.Errorf("build template %q: %w", spec.Name, err)
	}
	if req.DiskMiB == 0 {
		req.DiskMiB = DefaultDiskMiB
	}
	if req.DiskMiB < 256 || req.DiskMiB > 256<<10 {
		return nil, inputError(ErrInvalidSpec, 0, "", "disk_mib must be between 256 and %d, got %d", 256<<10, req.DiskMiB)
	}
	if req.VCPUs == 0 {
		req.VCPUs = DefaultVCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = DefaultMemoryMiB
	}
	for _, st := range spec.Steps {
		if err := checkStep(st); err != nil {
			return nil, err
		}
	}
	guest, err := readGuestFiles(b.Agent)
	if err != nil {
		return nil, err
	}
	p := &Plan{b: b, req: req, spec: spec, guest: guest, copies: map[int]copyPlan{}, kernel: b.Kernel, kernelKey: b.KernelKey}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err := os.MkdirAll(b.WorkDir, 0o700); err != nil {
		return nil, fmt.Errorf("create build work dir: %w", err)
	}
	identity, err := p.resolveBase(ctx)
	if err != nil {
		return nil, err
	}
	cfs, closeCtx, err := contextFS(req.Context)
	if err != nil {
		return nil, err
	}
	p.ctx = cfs
	p.closers = append(p.closers, closeCtx)
	key := baseKey(identity, guest.key()+" kernel "+p.kernelKey, req.DiskMiB)
	if p.tpl != nil {
		key = baseKey(identity, "template kernel "+p.kernelKey, 0)
	}
	p.keys = []string{key}
	for i, st := range spec.Steps {
		digest := ""
		if st.Kind == Copy {
			cp, err := planCopy(cfs, st)
			if err != nil {
				return nil, err
			}
			if digest, err = cp.digest(cfs, st.Mode); err != nil {
				return nil, inputError(ErrCopySource, st.Line, strings.Join(st.Sources, " "), "%v", err)
			}
			p.copies[i] = cp
		}
		key = stepKey(key, st, digest)
		p.keys = append(p.keys, key)
	}
	return p, nil
}

// checkStep refuses a step that cannot run.
func checkStep(st Step) error {
	bad := func(format string, args ...any) error {
		return inputError(ErrInvalidSpec, st.Line, st.String(), format, args...)
	}
	switch st.Kind {
	case Run, Start, Ready:
		if strings.TrimSpace(st.Command) == "" {
			return bad("an empty command")
		}
		if strings.ContainsAny(st.User, " \t\n:") {
			return bad("user %q: a user name", st.User)
		}
	case Copy:
		if len(st.Sources) == 0 || st.Path == "" {
			return bad("COPY needs sources and a destination")
		}
	case Workdir:
		if !strings.HasPrefix(st.Path, "/") {
			return bad("the working directory must be absolute")
		}
	case User:
		if st.Path == "" || strings.ContainsAny(st.Path, " \t\n") {
			return bad("a user name (user or user:group) is needed")
		}
	case Env:
		for _, kv := range st.Env {
			if kv.Key == "" || strings.ContainsAny(kv.Key, "=\x00") {
				return bad("invalid variable name %q", kv.Key)
			}
		}
	default:
		return bad("unknown step kind %q", st.Kind)
	}
	return nil
}

// debianAliases are the references the built-in Debian stands in for when
// no registry has them.
var debianAliases = map[string]bool{
	"debian:bookworm": true, "debian:12": true, "library/debian:bookworm": true, "library/debian:12": true,
	"docker.io/library/debian:bookworm": true, "docker.io/library/debian:12": true,
	"index.docker.io/library/debian:bookworm": true,
}

// resolveBase finds what the build starts from and returns a string that
// names its content.
func (p *Plan) resolveBase(ctx context.Context) (string, error) {
	base := p.spec.Base
	if base.Kind == BaseImage && templateName.MatchString(base.Ref) && !strings.ContainsAny(base.Ref, ":/") {
		if _, err := p.b.Registry.Get(base.Ref); err == nil {
			base.Kind = BaseTemplate
		}
	}
	withLine := func(err error) error {
		var ie *InputError
		if errors.As(err, &ie) && ie.Line == 0 {
			ie.Line = base.Line
		}
		return err
	}
	switch base.Kind {
	case BaseTemplate:
		t, err := p.b.Registry.Get(base.Ref)
		if err != nil {
			return "", inputError(ErrBaseTemplate, base.Line, base.Ref, "no such template")
		}
		p.tpl, p.kernel = &t, t.Kernel
		p.kernelKey = t.Inputs["kernel"]
		return "template " + t.Key, nil
	case BaseDebian:
		return p.useDebian(ctx)
	case BaseImage:
		if base.Ref == "" {
			return "", inputError(ErrInvalidSpec, base.Line, "", "no base image")
		}
		pctx := ctx
		if debianAliases[base.Ref] {
			var cancel context.CancelFunc
			pctx, cancel = context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
		}
		img, err := openImage(pctx, base.Ref, p.b.WorkDir)
		if errors.Is(err, ErrRegistry) && debianAliases[base.Ref] {
			p.warnings = append(p.warnings, fmt.Sprintf("%s: no registry has it (%v): using ember's built-in Debian bookworm", base.Ref, err))
			return p.useDebian(ctx)
		}
		if err != nil {
			return "", withLine(err)
		}
		p.img = img
		p.closers = append(p.closers, img.cleanup)
		return "image " + img.digest, nil
	}
	return "", inputError(ErrInvalidSpec, base.Line, base.Ref, "unknown base kind %q", base.Kind)
}

func (p *Plan) useDebian(ctx context.Context) (string, error) {
	sources, err := hostSources()
	if err != nil {
		return "", err
	}
	key, err := debianKey(ctx, sources)
	if err != nil {
		return "", err
	}
	return "debian " + key, nil
}

// Close releases what Prepare opened.
func (p *Plan) Close() {
	for _, c := range p.closers {
		c()
	}
	p.closers = nil
}

// Keys returns each step's cache key, the base's first.
func (p *Plan) Keys() []string { return append([]string(nil), p.keys...) }

// initialState is what the base gives the steps: an image's config (its
// environment, working directory, user) or a template's settings.
func (p *Plan) initialState() state {
	var s state
	switch {
	case p.tpl != nil:
		for k, v := range p.tpl.Env {
			s.Env = append(s.Env, KeyValue{k, v})
		}
		sortKV(s.Env)
		s.Workdir, s.User, s.Start, s.Ready = p.tpl.Workdir, p.tpl.User, p.tpl.StartCmd, p.tpl.ReadyCmd
	case p.img != nil:
		for _, e := range p.img.config.Env {
			k, v, _ := strings.Cut(e, "=")
			s.setEnv(k, v)
		}
		s.Workdir, s.User = p.img.config.WorkingDir, p.img.config.User
	}
	return s
}

func (b *Builder) cacheDir() string {
	if b.CacheDir != "" {
		return b.CacheDir
	}
	return template.DefaultCacheDir
}

func (b *Builder) log() *slog.Logger {
	if b.Log != nil {
		return b.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (b *Builder) stepTimeout() time.Duration {
	if b.StepTimeout > 0 {
		return b.StepTimeout
	}
	return DefaultStepTimeout
}

// evict trims the step cache to CacheMax, keeping every published
// template's layers.
func (b *Builder) evict() {
	max := b.CacheMax
	if max <= 0 {
		max = DefaultCacheMax
	}
	keep := map[string]bool{}
	tpls, _ := b.Registry.List()
	for _, t := range tpls {
		for _, l := range t.Layers {
			keep[l] = true
		}
	}
	if n := (stepCache{b.StepDir}).evict(max, keep, false); n > 0 {
		b.log().Info("step cache trimmed", "removed", n)
	}
}

// Reclaim ends what a daemon that died mid-build left: build sandboxes
// (destroyed) and work directories. Called at start, before any build.
func (b *Builder) Reclaim(ctx context.Context) error {
	var errs []error
	for _, r := range b.Sandboxes.List() {
		if name, ok := r.Metadata[buildMeta]; ok {
			b.log().Info("destroy a build sandbox a previous daemon left", "sandbox", r.ID, "template", name)
			errs = append(errs, b.Sandboxes.Destroy(ctx, r.ID))
		}
	}
	if b.WorkDir != "" {
		entries, _ := os.ReadDir(b.WorkDir)
		for _, e := range entries {
			errs = append(errs, os.RemoveAll(filepath.Join(b.WorkDir, e.Name())))
		}
	}
	(stepCache{b.StepDir}).evict(1<<62, nil, true) // only the leftovers
	return errors.Join(errs...)
}

// maxContext bounds a build context sent to the daemon.
const maxContext = 4 << 30

// ErrContext: a build context that is not a tar stream, or too big.
var ErrContext = errors.New("invalid build context")

// Context unpacks a build context (a tar stream) into a new directory
// under WorkDir; cleanup removes it. Owners are the daemon's; modes and
// links are kept.
func (b *Builder) Context(r io.Reader) (dir string, cleanup func(), err error) {
	if err := os.MkdirAll(b.WorkDir, 0o700); err != nil {
		return "", nil, fmt.Errorf("create build work dir: %w", err)
	}
	dir, err = os.MkdirTemp(b.WorkDir, "context-")
	if err != nil {
		return "", nil, fmt.Errorf("create build context dir: %w", err)
	}
	cleanup = func() { os.RemoveAll(dir) }
	u, err := newUnpacker(dir)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	u.chown = false
	lr := &io.LimitedReader{R: r, N: maxContext + 1}
	err = u.apply(lr)
	u.Close()
	if err == nil && lr.N <= 0 {
		err = fmt.Errorf("larger than %d bytes", int64(maxContext))
	}
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("%w: %v", ErrContext, err)
	}
	return dir, cleanup, nil
}
