package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/emberhq/ember/client"
	"github.com/emberhq/ember/internal/testutil"
	"github.com/emberhq/ember/test/harness"
	"github.com/emberhq/ember/wire"
)

// Slots of the template tests (5400-5559; test/e2b's template test has
// 5560-5599): a daemon each, buildSlots of them.
const (
	slotTemplates = 5400
	slotRegistry  = 5440
	slotStartCmd  = 5480
	slotApt       = 5520
	buildSlots    = 40
)

// buildDaemon starts a daemon that builds templates into a registry of
// the test's own.
func buildDaemon(t *testing.T, o harness.Options) *harness.Daemon {
	t.Helper()
	o.Templates = harness.PrivateTemplates(t)
	return harness.ForTest(t, o, buildSlots)
}

// contextTar is a build context holding files (name → content; a name
// ending in .sh is executable).
func contextTar(t *testing.T, files map[string]string) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, body := range files {
		mode := int64(0o644)
		if strings.HasSuffix(n, ".sh") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// buildLog is a build's events.
type buildLog struct{ events []client.BuildEvent }

func (l *buildLog) on(ev client.BuildEvent) { l.events = append(l.events, ev) }

// cached counts the steps a build reused and ran.
func (l *buildLog) cached() (reused, ran int) {
	for _, ev := range l.events {
		if ev.Type == wire.BuildStep {
			if ev.Cached {
				reused++
			} else {
				ran++
			}
		}
	}
	return reused, ran
}

func (l *buildLog) output() string {
	var b strings.Builder
	for _, ev := range l.events {
		if ev.Type == wire.BuildOutput {
			b.Write(ev.Data)
		}
	}
	return b.String()
}

func build(t *testing.T, c *client.Client, req client.BuildTemplateRequest, files map[string]string) (client.Template, *buildLog, time.Duration, error) {
	t.Helper()
	l := &buildLog{}
	start := time.Now()
	tpl, err := c.BuildTemplate(context.Background(), req, contextTar(t, files), l.on)
	return tpl, l, time.Since(start), err
}

// exec runs a shell command in a sandbox and returns its stdout.
func shOut(t *testing.T, c *client.Client, id, script string) string {
	t.Helper()
	res, err := c.Exec(context.Background(), id, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s: %+v %v", script, res, err)
	}
	return string(res.Stdout)
}

// cacheEntries lists the step cache's entries (complete or not).
func cacheEntries(t *testing.T, d *harness.Daemon) []string {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(d.DataDir, "build-cache"))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// noneLeft checks a build left no sandbox, no work directory and no half
// written cache entry.
func noneLeft(t *testing.T, d *harness.Daemon) {
	t.Helper()
	if sbs, err := d.Client.ListSandboxes(context.Background()); err != nil || len(sbs) != 0 {
		t.Errorf("sandboxes after the build: %+v, %v", sbs, err)
	}
	if work, _ := os.ReadDir(filepath.Join(d.DataDir, "builds")); len(work) != 0 {
		t.Errorf("build work left: %v", work)
	}
	for _, e := range cacheEntries(t, d) {
		if strings.HasPrefix(e, ".") {
			t.Errorf("half-written cache entry left: %s", e)
		}
	}
}

// TestTemplateFromDockerfile builds a template FROM debian:bookworm (the
// built-in Debian: no registry is reachable here) with ENV, COPY and RUN,
// runs its script in a sandbox, rebuilds it with only the last step
// changed (every other step reused, in a fraction of the time), and finds
// a failing RUN and bad input leave nothing.
func TestTemplateFromDockerfile(t *testing.T) {
	d := buildDaemon(t, harness.Options{SlotFirst: slotTemplates})
	c := d.Client
	ctx := context.Background()
	dockerfile := func(last string) string {
		return "FROM debian:bookworm\nENV GREETING=hello\nCOPY app/ /app/\nRUN /app/run.sh > /app/built.txt\nEXPOSE 80\nRUN " + last + "\n"
	}
	files := map[string]string{"app/run.sh": "#!/bin/sh\necho \"$GREETING from $(cat /etc/debian_version) as $(id -un)\"\n"}

	files["Dockerfile"] = dockerfile("echo v1 > /etc/last-step")
	tpl, first, cold, err := build(t, c, client.BuildTemplateRequest{Name: "app"}, files)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, first.output())
	}
	t.Logf("first build in %s: %d MiB disk, %d bytes allocated", cold, tpl.DiskMiB, tpl.RootfsBytes)
	// FROM, ENV, COPY, RUN, RUN: EXPOSE is no step.
	if reused, ran := first.cached(); ran != 5 || reused != 0 {
		t.Errorf("first build reused %d and ran %d steps, want 0 and 5", reused, ran)
	}
	var warned bool
	for _, ev := range first.events {
		warned = warned || ev.Type == wire.BuildWarning && strings.Contains(ev.Message, "line 5: EXPOSE")
	}
	if !warned {
		t.Errorf("no warning for EXPOSE")
	}

	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if got := shOut(t, c, sb.ID, "/app/run.sh; cat /app/built.txt /etc/last-step"); !strings.HasPrefix(got, "hello from 12.") ||
		!strings.Contains(got, "as user\n") || !strings.Contains(got, "as root\nv1\n") {
		t.Errorf("sandbox from the template: %q", got)
	}

	// Only the last step changed: everything before it is reused.
	files["Dockerfile"] = dockerfile("echo v2 > /etc/last-step")
	if _, err := c.BuildTemplate(ctx, client.BuildTemplateRequest{Name: "app"}, contextTar(t, files), nil); !client.IsCode(err, "template_in_use") {
		t.Errorf("rebuild of a template a sandbox uses: %v, want template_in_use", err)
	}
	_, second, warm, err := build(t, c, client.BuildTemplateRequest{Name: "app2"}, files)
	if err != nil {
		t.Fatalf("rebuild: %v\n%s", err, second.output())
	}
	t.Logf("rebuild with the last step changed in %s (%.2f of the first)", warm, warm.Seconds()/cold.Seconds())
	if reused, ran := second.cached(); reused != 4 || ran != 1 {
		t.Errorf("rebuild reused %d and ran %d steps, want 4 and 1", reused, ran)
	}
	if warm >= cold {
		t.Errorf("the rebuild (%s) took no less than the first build (%s)", warm, cold)
	}
	tpls, err := c.ListTemplates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range tpls {
		if tp.Name == "app2" && tp.SharedWith["app"] != 4 {
			t.Errorf("app2 shares %v, want 4 steps with app", tp.SharedWith)
		}
	}

	t.Run("template in use", func(t *testing.T) {
		if err := c.DeleteTemplate(ctx, "app"); !client.IsCode(err, "template_in_use") {
			t.Fatalf("delete a template a sandbox uses: %v", err)
		}
		if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteTemplate(ctx, "app"); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteTemplate(ctx, "app"); !client.IsCode(err, "template_not_found") {
			t.Fatalf("delete it again: %v", err)
		}
	})

	t.Run("failing RUN", func(t *testing.T) {
		before := cacheEntries(t, d)
		bad := map[string]string{"Dockerfile": "FROM debian:bookworm\nENV GREETING=hello\nRUN echo partial > /partial && echo about to fail && exit 3\n"}
		_, l, _, err := build(t, c, client.BuildTemplateRequest{Name: "broken"}, bad)
		var be *client.BuildError
		if !errors.As(err, &be) {
			t.Fatalf("build = %v, want a *BuildError", err)
		}
		ev := be.Event
		if ev.Code != "step_failed" || ev.Step != 3 || ev.Total != 3 || ev.Line != 3 || ev.ExitCode == nil || *ev.ExitCode != 3 ||
			len(ev.Output) == 0 || ev.Output[len(ev.Output)-1] != "about to fail" {
			t.Errorf("failure event %+v", ev)
		}
		if !strings.Contains(l.output(), "about to fail") {
			t.Errorf("the step's output was not streamed: %q", l.output())
		}
		if _, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "broken"}); !client.IsCode(err, "template_not_found") {
			t.Errorf("a failed build published a template: %v", err)
		}
		if after := cacheEntries(t, d); len(after) != len(before) {
			t.Errorf("a failed build cached %d entries (before %v, after %v)", len(after)-len(before), before, after)
		}
		noneLeft(t, d)
	})

	t.Run("bad input", func(t *testing.T) {
		armLayout := filepath.Join(t.TempDir(), "arm")
		writeImageLayout(t, armLayout, "arm64")
		for _, tc := range []struct {
			name, dockerfile, code, names string
		}{
			{"does not parse", "FROM debian:bookworm\nRUN\n", "dockerfile_invalid", "line 2"},
			{"unknown instruction", "FROM debian:bookworm\nFROBNICATE x\n", "unknown_instruction", "line 2"},
			{"missing copy source", "FROM debian:bookworm\nCOPY nothing-here /x\n", "copy_source_not_found", "nothing-here"},
			{"unreachable registry", "FROM 127.0.0.1:1/nobody/image:1\n", "registry_unreachable", "127.0.0.1:1/nobody/image:1"},
			{"another architecture", "FROM " + armLayout + "\n", "image_platform", armLayout},
			{"not an image", "FROM /etc/hostname\n", "invalid_image", "/etc/hostname"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, _, _, err := build(t, c, client.BuildTemplateRequest{Name: "bad"}, map[string]string{"Dockerfile": tc.dockerfile})
				var ae *client.APIError
				if !errors.As(err, &ae) || ae.Code != tc.code || ae.Status/100 != 4 || !strings.Contains(ae.Message, tc.names) {
					t.Fatalf("build = %v, want a 4xx %s naming %q", err, tc.code, tc.names)
				}
			})
		}
		noneLeft(t, d)
	})
}

// writeImageLayout writes an OCI layout holding one small image for arch:
// ember's host busybox as /bin/busybox and /bin/sh.
func writeImageLayout(t *testing.T, dir, arch string) v1.Image {
	t.Helper()
	img := tinyImage(t, arch)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})); err != nil {
		t.Fatal(err)
	}
	return img
}

// tinyImage is an image the test makes: the host's static busybox and a
// shell link, for arch.
func tinyImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("no static busybox: %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))},
		{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox"},
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "bin/busybox":
			tw.Write(bb)
		case "etc/motd":
			tw.Write([]byte("tiny\n"))
		}
	}
	tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Env = []string{"PATH=/bin", "FROM_IMAGE=yes"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestTemplateFromRegistry pushes an image the test builds to Debian's
// docker-registry on loopback and builds a template FROM it.
func TestTemplateFromRegistry(t *testing.T) {
	addr := testutil.Registry(t)
	ref, err := name.ParseReference(addr + "/ember-test/tiny:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, tinyImage(t, "amd64")); err != nil {
		t.Fatal(err)
	}
	d := buildDaemon(t, harness.Options{SlotFirst: slotRegistry})
	c := d.Client
	ctx := context.Background()
	df := "FROM " + ref.String() + "\nRUN echo built on $(cat /etc/motd) with FROM_IMAGE=$FROM_IMAGE > /hello\n"
	tpl, l, took, err := build(t, c, client.BuildTemplateRequest{Name: "tiny"}, map[string]string{"Dockerfile": df})
	if err != nil {
		t.Fatalf("build: %v\n%s", err, l.output())
	}
	t.Logf("built %s from %s in %s", tpl.Name, ref, took)
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	if got := shOut(t, c, sb.ID, "cat /hello; echo $FROM_IMAGE; id -un"); got != "built on tiny with FROM_IMAGE=yes\nyes\nuser\n" {
		t.Errorf("sandbox from the registry's image: %q", got)
	}
	// Ember's guest layer gave it bash (E2B's SDKs need it).
	if got := shOut(t, c, sb.ID, "bash -c 'echo $BASH_VERSION' | cut -c1"); got != "5\n" {
		t.Errorf("bash in the guest: %q", got)
	}
}

// TestTemplateStartCommand builds a template whose start command is a
// small HTTP server, with a ready command, and finds it answering through
// the port proxy right after create: the first create (which captures the
// template snapshot after ready) and the next (which restores it).
func TestTemplateStartCommand(t *testing.T) {
	d := buildDaemon(t, harness.Options{SlotFirst: slotStartCmd})
	c := d.Client
	ctx := context.Background()
	df := "FROM ember/debian\nRUN mkdir -p /srv && echo served-by-the-start-command > /srv/index.html\nWORKDIR /srv\n" +
		`CMD ["/usr/lib/ember/busybox", "httpd", "-f", "-p", "8080"]` + "\n"
	_, l, _, err := build(t, c, client.BuildTemplateRequest{Name: "web",
		ReadyCmd: "/usr/lib/ember/busybox wget -q -O /dev/null http://127.0.0.1:8080/"}, map[string]string{"Dockerfile": df})
	if err != nil {
		t.Fatalf("build: %v\n%s", err, l.output())
	}
	for i := range 2 {
		sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{Template: "web"})
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("curl", "-s", "-m", "10", "-H", "E2b-Sandbox-Id: "+sb.ID, "-H", "E2b-Sandbox-Port: 8080",
			d.URL+"/index.html").CombinedOutput()
		if err != nil || string(out) != "served-by-the-start-command\n" {
			t.Errorf("create %d (timings %v): GET through the port proxy right after create: %q, %v", i+1, sb.TimingsMS, out, err)
		}
	}
}

// TestTemplatePython builds FROM debian:bookworm a template that installs
// python3 with apt (from the host's Debian mirror, the one place a build
// sandbox's traffic goes) and copies a script, and runs it. It takes
// minutes under TCG, so it runs in `make test-templates`, not make test.
func TestTemplatePython(t *testing.T) {
	if os.Getenv("EMBER_TEST_APT") != "1" {
		t.Skip("installs packages from the Debian mirror: run with EMBER_TEST_APT=1 (make test-templates)")
	}
	uplink := testutil.RequireEnv(t, "EMBER_TEST_UPLINK", "the host interface toward the Debian mirror (make test-templates sets it)")
	d := buildDaemon(t, harness.Options{SlotFirst: slotApt, Uplink: uplink})
	c := d.Client
	df := "FROM debian:bookworm\nRUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*\n" +
		"COPY hello.py /app/hello.py\nRUN python3 /app/hello.py\n"
	files := map[string]string{"Dockerfile": df, "hello.py": "print('hello from python', 6 * 7)\n"}
	_, l, cold, err := build(t, c, client.BuildTemplateRequest{Name: "py"}, files)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, l.output())
	}
	sb, err := c.CreateSandbox(context.Background(), client.CreateSandboxRequest{Template: "py"})
	if err != nil {
		t.Fatal(err)
	}
	if got := shOut(t, c, sb.ID, "python3 /app/hello.py"); got != "hello from python 42\n" {
		t.Errorf("python3 in the sandbox: %q", got)
	}
	files["hello.py"] = "print('changed')\n"
	if _, _, _, err := build(t, c, client.BuildTemplateRequest{Name: "py"}, files); !client.IsCode(err, "template_in_use") {
		t.Errorf("rebuild of a template a sandbox uses: %v, want template_in_use", err)
	}
	if err := c.DeleteSandbox(context.Background(), sb.ID); err != nil {
		t.Fatal(err)
	}
	_, l2, warm, err := build(t, c, client.BuildTemplateRequest{Name: "py"}, files)
	if err != nil {
		t.Fatalf("rebuild: %v\n%s", err, l2.output())
	}
	if reused, ran := l2.cached(); reused != 2 || ran != 2 {
		t.Errorf("rebuild after changing the script reused %d and ran %d steps, want 2 and 2", reused, ran)
	}
	t.Logf("python3 build %s, rebuild after a COPY change %s (%.2f)", cold, warm, warm.Seconds()/cold.Seconds())
}
