package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/template"
)

// What a template build (package build) needs of the manager: sandboxes
// booted from images that are no template yet, whose disks it exports
// step by step, and templates whose start command runs before their
// snapshot is taken.

// ErrStartCmd: a template's start command could not be started, or its
// ready command never succeeded.
var ErrStartCmd = errors.New("template start command failed")

// Image is a kernel and a root image to boot a build's sandbox from.
type Image struct {
	Kernel, Rootfs string
	// Label stands for a template name in the sandbox's record
	// (".build-NAME"), so lists and logs say what it is.
	Label string
}

// fromImage is the source of a build's sandbox: a cold boot of its image,
// never a template snapshot.
func (m *Manager) fromImage(req *CreateRequest) (source, error) {
	if req.Template != "" || req.Snapshot != "" {
		return source{}, invalid("image", "give an image, a template or a snapshot, not several")
	}
	im := req.Image
	st, err := os.Stat(im.Rootfs)
	if err != nil {
		return source{}, fmt.Errorf("build image %q: %w", im.Rootfs, err)
	}
	baseMiB := int((st.Size() + 1<<20 - 1) >> 20)
	if req.DiskMiB == 0 {
		req.DiskMiB = baseMiB
	}
	src := source{template: im.Label, kernel: im.Kernel, rootfs: im.Rootfs, token: newToken()}
	if req.DiskMiB > baseMiB {
		src.sizeBytes = int64(req.DiskMiB) << 20
	}
	return src, nil
}

// ExportDisk writes a running sandbox's disk, as it is now, as a standalone
// sparse image at dst (which must not exist): a build's step result. The
// vCPUs are stopped for the copy, so the image is one instant of the disk,
// and then run on.
func (m *Manager) ExportDisk(ctx context.Context, id, dst string) (err error) {
	sb, err := m.lookupLocked(id)
	if err != nil {
		return err
	}
	defer sb.mu.Unlock()
	r := sb.Record()
	if r.State != StateRunning || sb.machine == nil {
		return stateError(r, "running")
	}
	if err := sb.machine.Pause(ctx); err != nil {
		return opError("export the disk of", id, "pause the vcpus", ErrVMMSave, err)
	}
	defer func() {
		if rerr := sb.machine.Resume(context.WithoutCancel(ctx)); rerr != nil {
			err = errors.Join(err, opError("export the disk of", id, "resume the vcpus", ErrVMMSave, rerr))
		}
	}()
	if err := m.d.Disks.Flatten(ctx, id, r.Dir, dst); err != nil {
		return opError("export the disk of", id, "flatten it", ErrDisk, err)
	}
	return nil
}

// startSpec is a template's process and how to know it is ready.
type startSpec struct {
	cmd, ready, user, workdir string
	env                       map[string]string
}

// withTemplateConfig gives a create what the template says its sandboxes
// start with: its environment under the request's, and its start command.
func withTemplateConfig(req *CreateRequest, src *source, tpl template.Template) {
	req.Env = underEnv(tpl.Env, req.Env)
	if tpl.StartCmd != "" {
		src.start = &startSpec{cmd: tpl.StartCmd, ready: tpl.ReadyCmd, user: tpl.User, workdir: tpl.Workdir, env: tpl.Env}
	}
}

// readyPoll is how often a template's ready command is run.
const readyPoll = 200 * time.Millisecond

// startProcess starts a template's process in a freshly booted guest,
// detached (its own session, output to /var/log/ember-start.log), and waits
// until its ready command exits 0, at most ReadyTimeout. It runs as the
// template's user (root when it names none) in its working directory.
func (m *Manager) startProcess(ctx context.Context, ag Agent, st startSpec) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
	defer cancel()
	user := st.user
	if user == "" {
		user = "root"
	}
	// The command is $0 of the outer shell: no quoting to get wrong.
	script := `exec setsid /bin/sh -c "$0" </dev/null >>/var/log/ember-start.log 2>&1 &`
	var out strings.Builder
	res, err := ag.Exec(ctx, agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script, st.cmd}, Env: st.env,
		Cwd: st.workdir, User: user}, &out, &out)
	if err != nil {
		return fmt.Errorf("start %q: %w", st.cmd, err)
	}
	if res.Code != 0 {
		return fmt.Errorf("start %q: exit code %d: %s", st.cmd, res.Code, strings.TrimSpace(out.String()))
	}
	if st.ready == "" {
		return nil
	}
	for {
		out.Reset()
		res, err := ag.Exec(ctx, agent.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", st.ready}, Env: st.env,
			Cwd: st.workdir, User: user}, &out, &out)
		if err == nil && res.Code == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			last := strings.TrimSpace(out.String())
			if err == nil {
				err = fmt.Errorf("exit code %d", res.Code)
			}
			return fmt.Errorf("ready command %q did not succeed within %s (last: %v; %s)", st.ready, m.cfg.ReadyTimeout, err, last)
		case <-time.After(readyPoll):
		}
	}
}
