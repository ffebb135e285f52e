package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	pb "github.com/emberhq/ember/internal/agent/proto/process"
)

// readChunk is the most output one data event carries.
const readChunk = 32 << 10

// errClosed says the table no longer starts processes (the server is
// shutting down).
var errClosed = errors.New("agent is shutting down")

// errNoStdin says a process's stdin was never opened or is closed.
var errNoStdin = errors.New("stdin is not open")

// errNoPTY says input or a resize was meant for a terminal the process does
// not have (or the reverse).
var errNoPTY = errors.New("process has no pty")

// spec is a validated request to start a process.
type spec struct {
	config *pb.ProcessConfig // as the client sent it, for List
	tag    *string
	name   string // as given; the child's argv[0]
	path   string // resolved against the child's PATH
	args   []string
	env    []string
	dir    string
	stdin  bool
	// pty, when set, runs the process on a new pseudo-terminal of this
	// size (its session's controlling terminal) instead of pipes.
	pty  *pty.Winsize
	cred *syscall.Credential
}

// table is the set of processes the agent started that have not ended.
type table struct {
	log *slog.Logger

	mu     sync.RWMutex
	procs  map[uint32]*proc
	closed bool
}

func newTable(log *slog.Logger) *table {
	return &table{log: log, procs: map[uint32]*proc{}}
}

// start runs a process with sub already subscribed, so not a byte of its
// output is missed. The process runs until it ends or is signalled; it does
// not depend on any request staying open.
func (t *table) start(sp spec, sub *subscriber) (_ *proc, err error) {
	// Descriptors are released in reverse on failure; the child's ends are
	// always closed in the parent once the child holds them.
	var undo []io.Closer
	defer func() {
		if err != nil {
			for _, c := range slices.Backward(undo) {
				c.Close()
			}
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		if r, w, err = os.Pipe(); err != nil {
			return nil, nil, fmt.Errorf("create pipe: %w", err)
		}
		undo = append(undo, r, w)
		return r, w, nil
	}

	cmd := exec.Command(sp.path)
	cmd.Args = append([]string{sp.name}, sp.args...)
	cmd.Env = sp.env
	cmd.Dir = sp.dir
	var childEnds []*os.File
	var outputs []output
	var inW, ptmx *os.File
	if sp.pty != nil {
		// A session of its own with the terminal as its controlling
		// one: job control works, and the session leader's pid names
		// its process group for signals.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Credential: sp.cred}
		tty, err := openPTY(sp.pty, &undo)
		if err != nil {
			return nil, err
		}
		ptmx = tty.ptmx
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty.tty, tty.tty, tty.tty
		childEnds = append(childEnds, tty.tty)
		outputs = append(outputs, output{f: ptmx, kind: outPTY})
	} else {
		cmd.SysProcAttr = groupAttr()
		cmd.SysProcAttr.Credential = sp.cred
		outR, outW, err := pipe()
		if err != nil {
			return nil, err
		}
		errR, errW, err := pipe()
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		childEnds = append(childEnds, outW, errW)
		outputs = append(outputs, output{f: outR, kind: outStdout}, output{f: errR, kind: outStderr})
		if sp.stdin {
			var inR *os.File
			if inR, inW, err = pipe(); err != nil {
				return nil, err
			}
			cmd.Stdin = inR
			childEnds = append(childEnds, inR)
		}
	}

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, errClosed
	}
	// Registering under the lock that killAll takes means a process is
	// either refused or killed by a concurrent Close, never missed.
	err = cmd.Start()
	for _, f := range childEnds {
		f.Close()
	}
	if err != nil {
		t.mu.Unlock()
		return nil, fmt.Errorf("start %q: %w", sp.name, err)
	}
	p := &proc{
		pid:    uint32(cmd.Process.Pid),
		config: sp.config,
		tag:    sp.tag,
		stdin:  inW,
		ptmx:   ptmx,
		subs:   map[*subscriber]struct{}{sub: {}},
		done:   make(chan struct{}),
	}
	t.procs[p.pid] = p
	t.mu.Unlock()

	if t.log.Enabled(context.Background(), slog.LevelDebug) {
		tag := ""
		if sp.tag != nil {
			tag = *sp.tag
		}
		t.log.Debug("process started", "pid", p.pid, "cmd", sp.name, "dir", sp.dir, "tag", tag, "pty", sp.pty != nil)
	}
	p.readers.Add(len(outputs))
	for _, o := range outputs {
		go p.read(o)
	}
	go t.wait(p, cmd)
	return p, nil
}

// ptyPair is a new pseudo-terminal: the agent's end and the child's.
type ptyPair struct{ ptmx, tty *os.File }

// openPTY opens a pseudo-terminal of the given size, registering both ends
// with undo.
func openPTY(size *pty.Winsize, undo *[]io.Closer) (ptyPair, error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return ptyPair{}, fmt.Errorf("open pty: %w", err)
	}
	*undo = append(*undo, ptmx, tty)
	if err := pty.Setsize(ptmx, size); err != nil {
		return ptyPair{}, fmt.Errorf("set pty size %dx%d: %w", size.Cols, size.Rows, err)
	}
	return ptyPair{ptmx: ptmx, tty: tty}, nil
}

// wait reaps the process, lets its output drain and publishes the end.
// Output ends when every holder of the pipes is gone, so a background child
// that keeps stdout open keeps the process listed (and signallable through
// its group) until it too exits, as a shell would.
func (t *table) wait(p *proc, cmd *exec.Cmd) {
	waitErr := cmd.Wait()
	p.readers.Wait()

	// Unlisted before the end event goes out, so a client that saw the end
	// finds the pid gone.
	t.mu.Lock()
	// A child that left the group but kept the pipes may have outlived the
	// pid's reuse by a newer process; that one stays listed.
	if t.procs[p.pid] == p {
		delete(t.procs, p.pid)
	}
	t.mu.Unlock()
	p.stdinMu.Lock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.stdinMu.Unlock()
	p.closePTY()

	end := &pb.ProcessEvent_EndEvent{}
	if st := cmd.ProcessState; st != nil {
		end.ExitCode = int32(st.ExitCode())
		end.Exited = st.Exited()
		end.Status = st.String()
	}
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		msg := waitErr.Error()
		end.Error = &msg
	}
	t.log.Debug("process ended", "pid", p.pid, "status", end.Status)
	p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}})
	p.finish()
}

// get returns the process the selector names, or nil.
func (t *table) get(sel *pb.ProcessSelector) *proc {
	t.mu.RLock()
	defer t.mu.RUnlock()
	switch s := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return t.procs[s.Pid]
	case *pb.ProcessSelector_Tag:
		for _, p := range t.procs {
			if p.tag != nil && *p.tag == s.Tag {
				return p
			}
		}
	}
	return nil
}

// list returns the running processes ordered by pid.
func (t *table) list() []*proc {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.SortedFunc(maps.Values(t.procs), func(a, b *proc) int { return int(a.pid) - int(b.pid) })
}

// killAt SIGKILLs p's process group at deadline unless it ended first.
func (t *table) killAt(p *proc, deadline time.Time) {
	timer := time.NewTimer(time.Until(deadline))
	go func() {
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			t.log.Debug("process outlived its deadline", "pid", p.pid)
			if err := p.signal(syscall.SIGKILL); err != nil {
				t.log.Warn("kill process at its deadline", "pid", p.pid, "err", err)
			}
		}
	}()
}

// killAll stops accepting new processes and SIGKILLs every running one.
func (t *table) killAll() {
	t.mu.Lock()
	t.closed = true
	procs := slices.Collect(maps.Values(t.procs))
	t.mu.Unlock()
	for _, p := range procs {
		if err := p.signal(syscall.SIGKILL); err != nil {
			t.log.Warn("kill process", "pid", p.pid, "err", err)
		}
	}
}

// proc is one running process.
type proc struct {
	pid     uint32
	config  *pb.ProcessConfig
	tag     *string
	readers sync.WaitGroup

	// stdinMu serializes writes and guards stdin and ptmx; stdin is nil
	// when never opened or closed, ptmx (the terminal's agent end, closed
	// once output has drained) nil when the process has no pty.
	stdinMu sync.Mutex
	stdin   *os.File
	ptmx    *os.File

	// mu guards subs; nil once the process has ended.
	mu   sync.Mutex
	subs map[*subscriber]struct{}
	// done is closed once the process has ended and its output drained.
	done chan struct{}
}

// subscriber receives a process's events in order. ch is closed after the
// end event; quit is closed when the subscriber leaves, so publishing never
// blocks on a client that has gone.
type subscriber struct {
	ch       chan *pb.ProcessEvent
	quit     chan struct{}
	quitOnce sync.Once
}

func newSubscriber() *subscriber {
	return &subscriber{ch: make(chan *pb.ProcessEvent, 16), quit: make(chan struct{})}
}

// leave stops delivery to the subscriber; safe to call more than once.
func (s *subscriber) leave() { s.quitOnce.Do(func() { close(s.quit) }) }

// output is one descriptor a process's output is read from.
type output struct {
	f    *os.File
	kind int
}

// Kinds of output, as DataEvent tells them apart.
const (
	outStdout = iota
	outStderr
	outPTY
)

// read forwards one output descriptor as data events until every writer is
// gone (a terminal reports that as EIO). A slow subscriber slows the read,
// and so the process, instead of growing a buffer.
func (p *proc) read(o output) {
	defer p.readers.Done()
	if o.kind != outPTY {
		defer o.f.Close() // the terminal is closed by wait, after input stops
	}
	buf := make([]byte, readChunk)
	for {
		n, err := o.f.Read(buf)
		if n > 0 {
			data := &pb.ProcessEvent_DataEvent{}
			chunk := bytes.Clone(buf[:n])
			switch o.kind {
			case outStdout:
				data.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: chunk}
			case outStderr:
				data.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: chunk}
			default:
				data.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: chunk}
			}
			p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: data}})
		}
		if err != nil {
			return
		}
	}
}

func (p *proc) publish(ev *pb.ProcessEvent) {
	p.mu.Lock()
	subs := slices.Collect(maps.Keys(p.subs))
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.quit:
		}
	}
}

// finish closes every subscriber's channel. Only wait calls it, after the
// readers and the end event, so nothing publishes afterwards.
func (p *proc) finish() {
	p.mu.Lock()
	for s := range p.subs {
		close(s.ch)
	}
	p.subs = nil
	p.mu.Unlock()
	close(p.done)
}

// unsubscribe removes s; its channel is then never closed by finish, so the
// caller must stop reading it.
func (p *proc) unsubscribe(s *subscriber) {
	s.leave()
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
}

func (p *proc) signal(sig syscall.Signal) error {
	return signalGroup(int(p.pid), sig)
}

// writeInput writes all of data to the process's stdin, or to its terminal
// when toPTY, giving up at ctx's deadline.
func (p *proc) writeInput(ctx context.Context, data []byte, toPTY bool) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	f := p.stdin
	switch {
	case toPTY && p.ptmx == nil:
		return fmt.Errorf("pid %d: %w", p.pid, errNoPTY)
	case toPTY:
		f = p.ptmx
	case p.ptmx != nil:
		// A terminal's process reads its input from the terminal.
		f = p.ptmx
	case f == nil:
		return errNoStdin
	}
	deadline, _ := ctx.Deadline() // zero: no deadline
	if err := f.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set input deadline of pid %d: %w", p.pid, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write input of pid %d: %w", p.pid, err)
	}
	return nil
}

// resize sets the size of the process's terminal.
func (p *proc) resize(size *pty.Winsize) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.ptmx == nil {
		return fmt.Errorf("pid %d: %w", p.pid, errNoPTY)
	}
	if err := pty.Setsize(p.ptmx, size); err != nil {
		return fmt.Errorf("resize pty of pid %d to %dx%d: %w", p.pid, size.Cols, size.Rows, err)
	}
	return nil
}

// subscribe adds a subscriber to a running process; false once it ended.
func (p *proc) subscribe(s *subscriber) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subs == nil {
		return false
	}
	p.subs[s] = struct{}{}
	return true
}

// closeStdin closes the process's stdin so it reads EOF; closing twice is
// not an error. A terminal's process gets the terminal's end-of-file
// character instead (the terminal stays, for its output).
func (p *proc) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	if p.ptmx != nil {
		_, _ = p.ptmx.Write([]byte{4}) // ^D, VEOF in the default line discipline
	}
}

// closePTY closes the terminal's agent end once output has drained.
func (p *proc) closePTY() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.ptmx != nil {
		p.ptmx.Close()
		p.ptmx = nil
	}
}

// keepAliveEvery returns the keepalive interval a client asked for with
// envd's Keepalive-Ping-Interval header (whole seconds), or 0.
func keepAliveEvery(header string) time.Duration {
	var secs int
	if _, err := fmt.Sscan(header, &secs); err != nil || secs <= 0 {
		return 0
	}
	return time.Duration(secs) * time.Second
}
