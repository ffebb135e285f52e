//go:build linux

package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/emberhq/ember/internal/vmm"
)

// CopyCommand is the ember subcommand that copies a snapshot's guest RAM
// into a restored machine's RAM file from inside the machine's cgroup
// (RunCopy): tmpfs pages are charged to the cgroup of whoever first writes
// them, and written by the daemon they would count against the daemon,
// not against the sandbox whose memory they are.
const CopyCommand = "copy-memory"

// RunCopy is the copy process's main: it waits for a byte on standard
// input (its parent placing it in the cgroup first), then copies args[0]
// into the new file args[1], sparsely.
func RunCopy(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("%s: want SRC DST", CopyCommand)
	}
	var go1 [1]byte
	if _, err := io.ReadFull(os.Stdin, go1[:]); err != nil {
		return fmt.Errorf("%s: wait to be placed: %w", CopyCommand, err)
	}
	return copyMemory(ctx, args[1], args[0])
}

// fillFrom returns how a restore fills the RAM file of spec's machine from
// the snapshot's memory file src: in a copy process placed in the
// machine's cgroup when the driver has a helper binary and the spec a
// cgroup, else here.
func (d *Driver) fillFrom(ctx context.Context, spec vmm.Spec, src string) func(dst string) error {
	if len(d.helper) == 0 || spec.Place == nil {
		return func(dst string) error { return copyMemory(ctx, dst, src) }
	}
	return func(dst string) error {
		cmd := exec.CommandContext(ctx, d.helper[0], append(append([]string(nil), d.helper[1:]...), CopyCommand, src, dst)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		w, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start memory copy: %w", err)
		}
		if err := spec.Place(cmd.Process.Pid); err != nil {
			w.Close()
			cmd.Process.Kill()
			cmd.Wait()
			return errors.Join(err, os.Remove(dst))
		}
		_, werr := w.Write([]byte{1})
		w.Close()
		if err := errors.Join(werr, cmd.Wait()); err != nil {
			return fmt.Errorf("copy memory in the sandbox's cgroup: %w: %s", err, strings.TrimSpace(out.String()))
		}
		return nil
	}
}
