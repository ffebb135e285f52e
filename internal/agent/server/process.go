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

	pb "github.com/emberhq/ember/internal/agent/proto/process"
)

// readChunk is the most output one data event carries.
const readChunk = 32 << 10

// errClosed says the table no longer starts processes (the server is
// shutting down).
var errClosed = errors.New("agent is shutting down")

// errNoStdin says a process's stdin was never opened or is closed.
var errNoStdin = errors.New("stdin is not open")

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
	// Pipe ends are released in reverse on failure; the child's ends are
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
	cmd.SysProcAttr = groupAttr()
	outR, outW, err := pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	childEnds := []*os.File{outW, errW}
	var inW *os.File
	if sp.stdin {
		var inR *os.File
		if inR, inW, err = pipe(); err != nil {
			return nil, err
		}
		cmd.Stdin = inR
		childEnds = append(childEnds, inR)
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
		subs:   map[*subscriber]struct{}{sub: {}},
	}
	t.procs[p.pid] = p
	t.mu.Unlock()

	if t.log.Enabled(context.Background(), slog.LevelDebug) {
		tag := ""
		if sp.tag != nil {
			tag = *sp.tag
		}
		t.log.Debug("process started", "pid", p.pid, "cmd", sp.name, "dir", sp.dir, "tag", tag)
	}
	p.readers.Add(2)
	go p.read(outR, false)
	go p.read(errR, true)
	go t.wait(p, cmd)
	return p, nil
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
	p.closeStdin()

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

	// stdinMu serializes writes and guards stdin; nil when never opened or
	// closed.
	stdinMu sync.Mutex
	stdin   *os.File

	// mu guards subs; nil once the process has ended.
	mu   sync.Mutex
	subs map[*subscriber]struct{}
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

// read forwards one output pipe as data events until every writer is gone.
// A slow subscriber slows the read, and so the process, instead of growing
// a buffer.
func (p *proc) read(f *os.File, stderr bool) {
	defer p.readers.Done()
	defer f.Close()
	buf := make([]byte, readChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			data := &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: bytes.Clone(buf[:n])}}
			if stderr {
				data.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: bytes.Clone(buf[:n])}
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

// writeStdin writes all of data to the process's stdin, giving up at ctx's
// deadline.
func (p *proc) writeStdin(ctx context.Context, data []byte) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return errNoStdin
	}
	deadline, _ := ctx.Deadline() // zero: no deadline
	if err := p.stdin.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set stdin deadline of pid %d: %w", p.pid, err)
	}
	if _, err := p.stdin.Write(data); err != nil {
		return fmt.Errorf("write stdin of pid %d: %w", p.pid, err)
	}
	return nil
}

// closeStdin closes the process's stdin so it reads EOF; closing twice is
// not an error.
func (p *proc) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
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
