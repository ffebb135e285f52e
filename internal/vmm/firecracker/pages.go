//go:build linux

package firecracker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/memory/uffd"
	"github.com/emberhq/ember/internal/vmm"
	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// Files of a restored machine's page server process, in its directory.
const (
	pagesPIDName = "uffd.pid"
	pagesLogName = "uffd.log"
)

// pagesIdentity is what only the page server of spec's machine carries on
// its command line: the socket its VMM connects to.
func (d *Driver) pagesIdentity(spec vmm.Spec) vmmproc.Identity {
	return vmmproc.Identity{Flag: "--socket", Value: d.existingJail(spec).ownHost(uffdSocketName)}
}

// startPages starts the page server of a machine being restored from the
// memory file mem: a process of its own when the driver has a PageServer
// command, else a goroutine. Either way it listens before Firecracker is
// told of the socket, and goes with the machine.
func (d *Driver) startPages(m *Machine, spec vmm.Spec, mem string) error {
	socket := m.jail.ownHost(uffdSocketName)
	if len(d.cfg.PageServer) == 0 {
		srv, err := uffd.New(uffd.Config{Socket: socket, MemFile: mem, Readahead: d.cfg.UFFDReadahead}, m.log)
		if err != nil {
			return err
		}
		m.servePages(srv)
		return nil
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale page server socket: %w", err)
	}
	var files vmmproc.Handed
	defer files.Close()
	fd, err := files.Listen(socket)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, pagesLogName), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("open page server log: %w", err)
	}
	defer logf.Close()
	ps := d.cfg.PageServer
	cmd := exec.Command(ps[0], append(append([]string(nil), ps[1:]...), uffd.HelperArgs(socket, mem, d.cfg.UFFDReadahead, fd)...)...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = files.Files()
	proc, err := vmmproc.Start(cmd, "", nil)
	if err != nil {
		return fmt.Errorf("start page server: %w", err)
	}
	m.setHelper(proc)
	files.Close()
	if spec.Place != nil {
		if err := spec.Place(proc.PID()); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(spec.Dir, pagesPIDName), []byte(strconv.Itoa(proc.PID())+"\n"), 0o644); err != nil {
		return fmt.Errorf("write page server pid file: %w", err)
	}
	return nil
}

// adoptPages re-adopts the page server process of an attached machine
// restored from a snapshot; a machine without one (cold-booted, or served
// in-process) has nothing to adopt. A page server that is gone leaves the
// VMM's unserved memory without a source: the machine does not answer
// (vmm.ErrUnresponsive), and start-up reclaim ends it.
func (d *Driver) adoptPages(m *Machine, spec vmm.Spec) error {
	b, err := os.ReadFile(filepath.Join(spec.Dir, pagesPIDName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read page server pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("page server pid file %q: %w", b, err)
	}
	proc, err := vmmproc.Adopt(pid, d.pagesIdentity(spec), nil)
	if err != nil {
		return fmt.Errorf("page server of the restored machine gone: %w: %w", err, vmm.ErrUnresponsive)
	}
	m.setHelper(proc)
	return nil
}

// setHelper records the machine's page server process and watches it: a
// page server that dies while its VMM runs leaves the guest hanging on
// its next fault, so the VMM is ended and the machine fails as a whole.
func (m *Machine) setHelper(p *vmmproc.Process) {
	m.helper = p
	go func() {
		select {
		case <-p.Done():
			if !m.proc.Exited() {
				m.log.Error("page server exited while its vmm runs: ending the vmm", "page_server", p.PID())
				m.proc.Kill()
			}
		case <-m.proc.Done():
		}
	}()
}

// helperPID is the page server process's pid, 0 when there is none.
func (m *Machine) helperPID() int {
	if m.helper == nil {
		return 0
	}
	return m.helper.PID()
}

// Helpers returns the pids of the machine's helper processes (its page
// server): a restarted daemon keeps them with the VMM.
func (m *Machine) Helpers() []int {
	if m.helper == nil {
		return nil
	}
	return []int{m.helper.PID()}
}

// stopHelper ends the page server once its VMM has exited (it normally
// ends by itself when the VMM's end of the socket closes).
func (m *Machine) stopHelper() error {
	if m.helper == nil {
		return nil
	}
	if !m.helper.Wait(helperExitWait) {
		if _, err := m.helper.Terminate(m.termWait); err != nil {
			return fmt.Errorf("stop page server: %w", err)
		}
	}
	os.Remove(filepath.Join(m.spec.Dir, pagesPIDName))
	return nil
}

// helperExitWait is how long a page server gets to notice its VMM is
// gone before it is sent SIGTERM.
const helperExitWait = 500 * time.Millisecond
