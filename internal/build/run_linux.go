//go:build linux

package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/template"
	"github.com/emberhq/ember/wire"
)

// tailLines is how much of a failed step's output its error keeps.
const tailLines = 20

// run is one Plan.Run in progress.
type run struct {
	p     *Plan
	emit  func(Event)
	start time.Time
	total int
	cache stepCache
	work  string
	// box is the build sandbox, booted at the first step that needs it.
	box *box
}

// Run builds the template: each step whose key is cached is reused, the
// first that is not and all after it run (RUN, COPY and WORKDIR in one
// build sandbox booted from the image so far, each result cached), and the
// result is published atomically as the template. emit hears every event
// as it happens. A failing step ends the build with a *StepError; nothing
// is published, the build sandbox is destroyed and no entry of the failed
// step is left.
func (p *Plan) Run(ctx context.Context, emit func(Event)) (_ template.Template, err error) {
	if emit == nil {
		emit = func(Event) {}
	}
	r := &run{p: p, start: time.Now(), total: len(p.spec.Steps) + 1, cache: stepCache{p.b.StepDir}}
	r.emit = func(e Event) {
		e.ElapsedMS = ms(time.Since(r.start))
		emit(e)
	}
	unlock, err := fsutil.TryLock(filepath.Join(p.b.Registry.Dir, "."+p.spec.Name+".lock"))
	if errors.Is(err, fsutil.ErrLocked) {
		return template.Template{}, fmt.Errorf("build template %q: %w", p.spec.Name, ErrBusy)
	} else if err != nil {
		if mkErr := os.MkdirAll(p.b.Registry.Dir, 0o755); mkErr != nil {
			return template.Template{}, err
		}
		if unlock, err = fsutil.TryLock(filepath.Join(p.b.Registry.Dir, "."+p.spec.Name+".lock")); err != nil {
			return template.Template{}, fmt.Errorf("build template %q: %w", p.spec.Name, ErrBusy)
		}
	}
	defer unlock()
	if r.work, err = os.MkdirTemp(p.b.WorkDir, "build-"+p.spec.Name+"-"); err != nil {
		return template.Template{}, fmt.Errorf("create build work dir: %w", err)
	}
	defer os.RemoveAll(r.work)
	// The build sandbox goes whatever happens, cancellation included.
	defer func() {
		if r.box != nil {
			if derr := p.b.Sandboxes.Destroy(context.WithoutCancel(ctx), r.box.id); derr != nil {
				err = errors.Join(err, fmt.Errorf("destroy build sandbox %s: %w", r.box.id, derr))
			}
		}
	}()
	for _, w := range append(append([]string(nil), p.warnings...), p.spec.Warnings...) {
		r.emit(Event{Type: wire.BuildWarning, Message: w})
	}
	t, err := r.steps(ctx)
	if err != nil {
		p.b.log().Warn("template build failed", "template", p.spec.Name, "err", err, "duration_ms", ms(time.Since(r.start)))
		return template.Template{}, err
	}
	p.b.log().Info("template built", "template", t.Name, "key", t.Key[:12], "rootfs_allocated", t.RootfsBytes,
		"duration_ms", ms(time.Since(r.start)))
	r.emit(Event{Type: wire.BuildDone, Template: wireTemplate(t), DurationMS: ms(time.Since(r.start))})
	return t, nil
}

func (r *run) steps(ctx context.Context) (template.Template, error) {
	p := r.p
	// The longest cached prefix.
	hits := 0
	var last entry
	if !p.req.NoCache {
		for i, k := range p.keys {
			if i > 0 && p.spec.Steps[i-1].Force {
				break
			}
			e, ok := r.cache.get(k)
			if !ok {
				break
			}
			last, hits = e, hits+1
		}
	}
	for i := 0; i < len(p.keys); i++ {
		n := i + 1
		text := p.stepText(i)
		line := p.spec.Base.Line
		if i > 0 {
			line = p.spec.Steps[i-1].Line
		}
		if i < hits {
			r.emit(Event{Type: wire.BuildStep, Step: n, Total: r.total, Instruction: text, Line: line, Cached: true})
			r.emit(Event{Type: wire.BuildStepDone, Step: n, Total: r.total, Cached: true})
			continue
		}
		r.emit(Event{Type: wire.BuildStep, Step: n, Total: r.total, Instruction: text, Line: line})
		t0 := time.Now()
		var (
			e   entry
			err error
		)
		if i == 0 {
			e, err = r.base(ctx)
		} else {
			e, err = r.step(ctx, i-1, last)
		}
		if err != nil {
			return template.Template{}, r.stepError(n, text, line, err)
		}
		last = e
		r.emit(Event{Type: wire.BuildStepDone, Step: n, Total: r.total, DurationMS: ms(time.Since(t0))})
	}
	return r.publish(ctx, last)
}

// stepError makes err a *StepError of step n (when it is not one already,
// or bad input found late, which stays an *InputError).
func (r *run) stepError(n int, text string, line int, err error) error {
	var se *StepError
	if errors.As(err, &se) {
		se.Step, se.Total, se.Text, se.Line = n, r.total, text, line
		return se
	}
	var ie *InputError
	if errors.As(err, &ie) {
		return err
	}
	return &StepError{Step: n, Total: r.total, Text: text, Line: line, ExitCode: -1, Err: err}
}

// stepText is how step i (0: the base) shows in progress.
func (p *Plan) stepText(i int) string {
	if i == 0 {
		return "FROM " + p.spec.Base.String()
	}
	return p.spec.Steps[i-1].String()
}

// base makes the first image: the base's root filesystem with the guest
// layer, as an ext4 image (or a template's image as it is).
func (r *run) base(ctx context.Context) (entry, error) {
	p := r.p
	e := entry{Key: p.keys[0], Step: p.stepText(0), State: p.initialState(), Kernel: p.kernel}
	if p.tpl != nil {
		return r.cache.put(e, func(dst string) error { return linkFile(p.tpl.Rootfs, dst) })
	}
	staging := filepath.Join(r.work, "rootfs")
	if err := os.Mkdir(staging, 0o755); err != nil {
		return entry{}, err
	}
	defer os.RemoveAll(staging)
	switch {
	case p.img != nil:
		r.log("unpacking " + p.spec.Base.String())
		if err := p.img.unpack(ctx, staging); err != nil {
			return entry{}, err
		}
	default:
		tarPath, _, err := p.b.debianBase(ctx, r.log)
		if err != nil {
			return entry{}, err
		}
		r.log("unpacking ember's built-in Debian bookworm")
		f, err := os.Open(tarPath)
		if err != nil {
			return entry{}, err
		}
		u, err := newUnpacker(staging)
		if err == nil {
			err = u.apply(ctxReader{ctx, f})
			u.Close()
		}
		f.Close()
		if err != nil {
			return entry{}, fmt.Errorf("unpack the built-in debian: %w", err)
		}
	}
	if err := applyGuest(staging, p.guest); err != nil {
		return entry{}, err
	}
	r.log(fmt.Sprintf("making the root image (ext4, %d MiB, sparse)", p.req.DiskMiB))
	return r.cache.put(e, func(dst string) error {
		return template.MakeImage(ctx, staging, dst, int64(p.req.DiskMiB)<<20)
	})
}

// step runs step i (of spec.Steps) on the image of parent.
func (r *run) step(ctx context.Context, i int, parent entry) (entry, error) {
	p := r.p
	st := p.spec.Steps[i]
	e := entry{Key: p.keys[i+1], Parent: parent.Key, Step: st.String(), State: parent.State.after(st), Kernel: parent.Kernel}
	if !changesDisk(st.Kind) {
		return r.cache.put(e, func(dst string) error { return linkFile(parent.image, dst) })
	}
	if r.box == nil {
		if err := r.boot(ctx, parent); err != nil {
			return entry{}, err
		}
	}
	var err error
	switch st.Kind {
	case Run:
		err = r.box.run(ctx, st, parent.State, r.output(i+2))
	case Copy:
		err = r.box.copy(ctx, p.ctx, p.copies[i], st, r.work)
	case Workdir:
		err = r.box.mkdir(ctx, st.Path, parent.State)
	}
	if err != nil {
		return entry{}, err
	}
	return r.cache.put(e, func(dst string) error { return r.box.export(ctx, dst) })
}

// boot starts the build sandbox from the image of parent.
func (r *run) boot(ctx context.Context, parent entry) error {
	p := r.p
	r.log("booting the build sandbox")
	kernel := parent.Kernel
	if kernel == "" {
		kernel = p.kernel
	}
	rec, err := p.b.Sandboxes.Create(ctx, sandbox.CreateRequest{
		Image:     &sandbox.Image{Kernel: kernel, Rootfs: parent.image, Label: ".build-" + p.spec.Name},
		VCPUs:     p.req.VCPUs,
		MemoryMiB: p.req.MemoryMiB,
		TimeoutS:  int((24 * time.Hour) / time.Second),
		Metadata:  map[string]string{buildMeta: p.spec.Name},
		Network:   &slot.Policy{Internet: true},
	})
	if err != nil {
		return fmt.Errorf("boot the build sandbox: %w", err)
	}
	r.box = &box{sb: p.b.Sandboxes, id: rec.ID, timeout: p.b.stepTimeout()}
	return r.box.prepare(ctx, p.guest)
}

// publish installs the last entry's image as the template.
func (r *run) publish(ctx context.Context, last entry) (template.Template, error) {
	p := r.p
	env := last.State.envMap()
	t := template.Template{
		Name: p.spec.Name, Key: last.Key, Env: env, Workdir: last.State.Workdir, User: last.State.User,
		StartCmd: last.State.Start, ReadyCmd: last.State.Ready, Source: p.spec.Base.String(), Layers: p.keys,
		Inputs: map[string]string{"kernel": p.kernelKey, "source": p.spec.Base.String(), "steps": fmt.Sprint(len(p.spec.Steps))},
	}
	kernel := last.Kernel
	if kernel == "" {
		kernel = p.kernel
	}
	if r.box != nil {
		// The sandbox holds the image no more: destroyed before the
		// template appears, so a create never races it.
		if err := p.b.Sandboxes.Destroy(context.WithoutCancel(ctx), r.box.id); err != nil {
			return template.Template{}, fmt.Errorf("destroy build sandbox %s: %w", r.box.id, err)
		}
		r.box = nil
	}
	var out template.Template
	err := p.b.Sandboxes.ReplaceTemplate(ctx, p.spec.Name, func() (err error) {
		out, err = p.b.Registry.Install(ctx, t, kernel, last.image)
		return err
	})
	if err != nil {
		return template.Template{}, fmt.Errorf("publish template %q: %w", p.spec.Name, err)
	}
	p.b.evict()
	return out, nil
}

// output is the writer of step n's output: events as it arrives, and
// the last lines kept for a failure's report.
func (r *run) output(n int) func(stream string) io.Writer {
	return func(stream string) io.Writer {
		return writerFunc(func(b []byte) (int, error) {
			r.emit(Event{Type: wire.BuildOutput, Step: n, Total: r.total, Stream: stream, Data: append([]byte(nil), b...)})
			return len(b), nil
		})
	}
}

func (r *run) log(msg string) {
	r.emit(Event{Type: wire.BuildLog, Message: msg})
}

// box is the running build sandbox.
type box struct {
	sb      Sandboxes
	id      string
	timeout time.Duration
}

// prepare makes sure ember's busybox is in the guest: a template base
// (ember's default one, say) may predate the guest layer.
func (b *box) prepare(ctx context.Context, g guestFiles) error {
	if code, _, err := b.exec(ctx, sandbox.ExecRequest{Cmd: GuestBusybox, Args: []string{"true"}, User: "root"}, nil); err == nil && code == 0 {
		return nil
	}
	var out bytes.Buffer
	code, _, err := b.exec(ctx, sandbox.ExecRequest{Cmd: "/bin/sh", User: "root", Stdin: g.busybox,
		Args: []string{"-c", `mkdir -p "$(dirname "$0")" && cat > "$0" && chmod 755 "$0"`, GuestBusybox}}, &out)
	if err != nil || code != 0 {
		return fmt.Errorf("put ember's busybox into the build sandbox: exit %d: %v %s", code, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// exec runs one command as the build's helper, its output into out.
func (b *box) exec(ctx context.Context, req sandbox.ExecRequest, out io.Writer) (int, string, error) {
	if req.Timeout == 0 {
		req.Timeout = b.timeout
	}
	if out == nil {
		out = io.Discard
	}
	res, err := b.sb.Exec(ctx, b.id, req, out, out)
	return res.ExitCode, "", err
}

// run runs a RUN step as its user, in its directory, with its
// environment, streaming output.
func (b *box) run(ctx context.Context, st Step, s state, out func(string) io.Writer) error {
	env := s.envMap()
	if env == nil {
		env = map[string]string{}
	}
	for _, kv := range st.Env {
		if _, set := env[kv.Key]; !set {
			env[kv.Key] = kv.Value // an ARG, unless an ENV of its name is set
		}
	}
	tail := &tailWriter{max: tailLines}
	stdout, stderr := io.MultiWriter(out("stdout"), tail), io.MultiWriter(out("stderr"), tail)
	user := userOf(s)
	if st.User != "" {
		user = st.User
	}
	res, err := b.sb.Exec(ctx, b.id, sandbox.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", st.Command}, Env: env,
		Cwd: s.Workdir, User: user, Timeout: b.timeout}, stdout, stderr)
	if err != nil {
		return &StepError{ExitCode: -1, Output: tail.lines(), Err: err}
	}
	if res.ExitCode != 0 {
		return &StepError{ExitCode: res.ExitCode, Output: tail.lines()}
	}
	return nil
}

// userOf is who a step runs as: USER's user, root when none is set.
func userOf(s state) string {
	if s.User == "" {
		return "root"
	}
	u, _, _ := strings.Cut(s.User, ":")
	return u
}

// mkdir creates a WORKDIR (owned by root, as Docker makes it).
func (b *box) mkdir(ctx context.Context, dir string, _ state) error {
	var out bytes.Buffer
	code, _, err := b.exec(ctx, sandbox.ExecRequest{Cmd: GuestBusybox, Args: []string{"mkdir", "-p", dir}, User: "root"}, &out)
	if err != nil || code != 0 {
		return &StepError{ExitCode: code, Output: splitLines(out.String()), Err: err}
	}
	return nil
}

// copy streams a COPY step's files as a tar into the guest, owned as its
// --chown says (names resolved in the image's own account files).
func (b *box) copy(ctx context.Context, cfs fs.FS, cp copyPlan, st Step, work string) error {
	uid, gid := 0, 0
	if st.Chown != "" {
		passwd, err := b.read(ctx, "/etc/passwd")
		if err != nil {
			return err
		}
		group, _ := b.read(ctx, "/etc/group")
		if uid, gid, err = lookupOwner(st.Chown, passwd, group); err != nil {
			return &StepError{ExitCode: -1, Err: fmt.Errorf("--chown=%s: %w", st.Chown, err)}
		}
	}
	if cp.single {
		// A file copied to a name the image has a directory at goes
		// into that directory.
		dest := path.Join(cp.dir, cp.entries[0].name)
		if code, _, err := b.exec(ctx, sandbox.ExecRequest{Cmd: GuestBusybox, Args: []string{"test", "-d", dest}, User: "root"}, nil); err == nil && code == 0 {
			cp.dir = dest
			cp.entries = []copyEntry{{cp.entries[0].src, path.Base(cp.entries[0].src)}}
		}
	}
	f, err := os.CreateTemp(work, "copy-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := cp.writeTar(f, cfs, st.Mode, uid, gid, false); err != nil {
		return &StepError{ExitCode: -1, Err: err}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	feedErr := make(chan error, 1)
	var out bytes.Buffer
	script := `B=` + GuestBusybox + `; $B mkdir -p "$0" && exec $B tar -x -f - -C "$0"`
	code, _, err := b.exec(ctx, sandbox.ExecRequest{Cmd: GuestBusybox, Args: []string{"sh", "-c", script, cp.dir}, User: "root",
		KeepStdin: true, Started: func(pid uint32) { go func() { feedErr <- b.feed(ctx, pid, f) }() }}, &out)
	if err == nil && code == 0 {
		err = <-feedErr
	}
	if err != nil || code != 0 {
		return &StepError{ExitCode: code, Output: splitLines(out.String()), Err: err}
	}
	return nil
}

// feed sends r to a process's stdin in chunks, then closes it.
func (b *box) feed(ctx context.Context, pid uint32, r io.Reader) error {
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := b.sb.SendStdin(ctx, b.id, pid, buf[:n]); serr != nil {
				return fmt.Errorf("send files to the build sandbox: %w", serr)
			}
		}
		if errors.Is(err, io.EOF) {
			return b.sb.CloseStdin(ctx, b.id, pid)
		}
		if err != nil {
			return err
		}
	}
}

// read returns a file of the guest's.
func (b *box) read(ctx context.Context, p string) ([]byte, error) {
	rc, _, err := b.sb.ReadFile(ctx, b.id, "root", p)
	if err != nil {
		return nil, fmt.Errorf("read %s in the build sandbox: %w", p, err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// export writes the guest's disk into dst with its file system frozen, so
// the image is clean (no journal to replay).
func (b *box) export(ctx context.Context, dst string) error {
	freeze := func(how string) error {
		var out bytes.Buffer
		code, _, err := b.exec(ctx, sandbox.ExecRequest{Cmd: GuestBusybox, Args: []string{"fsfreeze", how, "/"}, User: "root", Timeout: time.Minute}, &out)
		if err != nil || code != 0 {
			return fmt.Errorf("fsfreeze %s /: exit %d: %v %s", how, code, err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	if err := freeze("--freeze"); err != nil {
		return err
	}
	err := b.sb.ExportDisk(ctx, b.id, dst)
	if uerr := freeze("--unfreeze"); err == nil {
		err = uerr
	}
	return err
}

// tailWriter keeps the last lines written to it.
type tailWriter struct {
	mu      sync.Mutex
	max     int
	partial []byte
	done    []string
}

func (t *tailWriter) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial = append(t.partial, b...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		t.done = append(t.done, string(t.partial[:i]))
		t.partial = t.partial[i+1:]
		if len(t.done) > t.max {
			t.done = t.done[len(t.done)-t.max:]
		}
	}
	if len(t.partial) > 4096 {
		t.partial = t.partial[len(t.partial)-4096:]
	}
	return len(b), nil
}

func (t *tailWriter) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.done...)
	if len(t.partial) > 0 {
		out = append(out, string(t.partial))
	}
	if len(out) > t.max {
		out = out[len(out)-t.max:]
	}
	return out
}

func splitLines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// linkFile makes dst a hard link of src (images never change in place),
// or a copy across file systems.
func linkFile(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %q to %q: %w", src, dst, err)
	}
	return out.Close()
}

func sortKV(kvs []KeyValue) {
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
}
