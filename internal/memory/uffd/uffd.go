//go:build linux

// Package uffd is ember's userfaultfd page server: it serves the guest
// memory of a Firecracker microVM restored from a snapshot with
// mem_backend Uffd. Firecracker connects to the server's Unix socket, sends
// one handshake message (a JSON array of guest region mappings, the
// userfaultfd as SCM_RIGHTS), and from then on every first touch of a guest
// page is a fault the server resolves: UFFDIO_COPY from the memory file, or
// UFFDIO_ZEROPAGE for pages known to be zero, which are never read at
// fault time. Balloon removals (UFFD_EVENT_REMOVE) turn the range back into
// zero-filled memory. Each fault is served with readahead around it,
// because a fault round trip costs tens of microseconds.
//
// It is the one package in ember that uses ioctls and unsafe.
package uffd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultReadahead is how much memory one fault brings in when Config
// leaves it zero: the aligned block around the faulting page. test/benchuffd
// measures the choice.
const DefaultReadahead = 256 << 10

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("page server closed")

// Config configures a Server.
type Config struct {
	// Socket is the Unix socket path Firecracker connects to
	// (mem_backend.backend_path).
	Socket string
	// MemFile is the snapshot's memory file.
	MemFile string
	// Readahead is how many bytes one fault serves: the aligned block
	// holding the faulting page, never less than one page. Zero means
	// DefaultReadahead.
	Readahead int
	// Workers is how many faults are served at once; zero means one per
	// CPU.
	Workers int
	// Listener, when set, is the socket to accept the VMM on, already
	// listening at Socket (a page server process handed it by the daemon,
	// so the socket is there before the VMM is told of it).
	Listener *net.UnixListener
}

// Stats counts what a server did.
type Stats struct {
	// Faults is the number of page-fault messages read.
	Faults uint64
	// CopiedBytes were copied from the memory file; ZeroedBytes were
	// mapped to the zero page (or zero-filled on hugetlbfs).
	CopiedBytes, ZeroedBytes uint64
	// Removes counts UFFD_EVENT_REMOVE messages (balloon inflation).
	Removes uint64
	// FirstFault is the time from the handshake to the first fault served.
	FirstFault time.Duration
}

// Server serves one VMM's page faults from a memory file.
type Server struct {
	log       *slog.Logger
	cfg       Config
	file      *memFile
	listener  *net.UnixListener
	readahead uint64

	// stopR/stopW is a pipe whose write end wakes the fault loop: Close,
	// or the VMM's end of the socket closing.
	stopR, stopW int
	closeOnce    sync.Once
	closed       atomic.Bool
	// serving is done when Serve has returned and its workers ended; Close
	// unmaps the file only after that.
	serving sync.WaitGroup

	faults, copied, zeroed, removes atomic.Uint64
	handshakeAt                     time.Time
	firstFault                      atomic.Int64
}

// New opens and maps the memory file, marks its holes as zero, starts the
// background scan for zero pages among its data, and listens on the socket.
func New(cfg Config, log *slog.Logger) (_ *Server, err error) {
	if cfg.Readahead <= 0 {
		cfg.Readahead = DefaultReadahead
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.NumCPU()
	}
	f, err := openMemFile(cfg.MemFile)
	if err != nil {
		return nil, err
	}
	go f.scan()
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	l := cfg.Listener
	if l == nil {
		if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale page server socket %s: %w", cfg.Socket, err)
		}
		if l, err = net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Socket, Net: "unix"}); err != nil {
			return nil, fmt.Errorf("listen on page server socket: %w", err)
		}
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("create page server stop pipe: %w", err)
	}
	return &Server{
		log: log, cfg: cfg, file: f, listener: l, readahead: uint64(cfg.Readahead),
		stopR: p[0], stopW: p[1],
	}, nil
}

// Socket returns the path the server listens on.
func (s *Server) Socket() string { return s.cfg.Socket }

// Stats returns the server's counters so far.
func (s *Server) Stats() Stats {
	return Stats{
		Faults: s.faults.Load(), CopiedBytes: s.copied.Load(), ZeroedBytes: s.zeroed.Load(),
		Removes: s.removes.Load(), FirstFault: time.Duration(s.firstFault.Load()),
	}
}

// Serve accepts one VMM, reads its handshake and serves its faults until
// the VMM goes away (its end of the socket closes: nil), Close is called
// (ErrClosed) or ctx ends (its error). Serve is called once.
func (s *Server) Serve(ctx context.Context) error {
	s.serving.Add(1)
	defer s.serving.Done()
	stopCtx := context.AfterFunc(ctx, s.wake)
	defer stopCtx()

	conn, err := s.listener.AcceptUnix()
	if err != nil {
		if s.stopped() {
			return s.stopErr(ctx)
		}
		return fmt.Errorf("accept vmm on %s: %w", s.cfg.Socket, err)
	}
	defer conn.Close()
	s.listener.Close() // one VMM per server
	regions, fd, err := receiveHandshake(conn)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	s.handshakeAt = time.Now()
	s.log.Debug("page server handshake", "regions", len(regions))

	// Firecracker keeps its end open for its lifetime: EOF means it is gone.
	go func() {
		var b [64]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				s.wake()
				return
			}
		}
	}()

	rs := make([]*region, len(regions))
	for i, r := range regions {
		rs[i] = newRegion(r)
	}
	err = s.loop(fd, rs)
	if err == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil && s.closed.Load() {
		return ErrClosed
	}
	return err
}

func (s *Server) stopErr(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return ErrClosed
}

// wake makes the fault loop return.
func (s *Server) wake() { unix.Write(s.stopW, []byte{0}) }

func (s *Server) stopped() bool {
	var p [1]unix.PollFd
	p[0] = unix.PollFd{Fd: int32(s.stopR), Events: unix.POLLIN}
	n, _ := unix.Poll(p[:], 0)
	return n > 0
}

// Close stops serving, waits for Serve to return and releases the socket
// and the memory file. It is idempotent.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.wake()
		s.listener.Close()
		s.serving.Wait()
		err = errors.Join(s.file.close(), unix.Close(s.stopR), unix.Close(s.stopW))
		if rmErr := os.Remove(s.cfg.Socket); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			err = errors.Join(err, rmErr)
		}
	})
	return err
}

// loop reads fault messages and hands page faults to the workers until
// woken through the stop pipe. Removals are applied here, in the order the
// kernel reports them, before any later fault is handed out.
func (s *Server) loop(fd int, rs []*region) error {
	// Each serving goroutine reads the file into a buffer of its own that
	// holds a whole readahead block or one page, whichever is larger.
	bufSize := s.readahead
	for _, r := range rs {
		bufSize = max(bufSize, r.ps)
	}

	faults := make(chan uint64, 4096)
	errc := make(chan error, s.cfg.Workers)
	var wg sync.WaitGroup
	for range s.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bufSize)
			for addr := range faults {
				if err := s.serveFault(fd, rs, addr, buf, true); err != nil {
					errc <- err
					s.wake()
					// Keep draining so the reader never blocks on a full queue.
					for range faults {
					}
					return
				}
			}
		}()
	}
	defer func() {
		close(faults)
		wg.Wait()
	}()

	buf := make([]byte, msgSize*128)
	own := make([]byte, bufSize)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(s.stopR), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(pfd, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("poll userfaultfd: %w", err)
		}
		if pfd[1].Revents != 0 {
			select {
			case err := <-errc:
				return err
			default:
				return nil
			}
		}
		if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			return nil
		}
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read userfaultfd: %w", err)
		}
		// The last fault of a batch is served here rather than handed to a
		// worker: a lone fault (a vCPU blocks on one at a time) then costs
		// no goroutine hand-off.
		var inline uint64
		for off := 0; off+msgSize <= n; off += msgSize {
			m := decode(buf[off : off+msgSize])
			switch m.event {
			case eventPagefault:
				s.faults.Add(1)
				if inline != 0 {
					faults <- inline
				}
				inline = m.addr
			case eventRemove:
				// Faults read before the removal are served first.
				if inline != 0 {
					faults <- inline
					inline = 0
				}
				s.removes.Add(1)
				for _, r := range rs {
					r.remove(m.addr, m.end)
				}
			default:
				s.log.Warn("page server ignores userfaultfd event", "event", m.event)
			}
		}
		if inline != 0 {
			// The reader must not wait out a pending event (a removal): only
			// it can read the event that ends the wait. A worker retries.
			if err := s.serveFault(fd, rs, inline, own, false); err != nil {
				if !errors.Is(err, errAgain) {
					return err
				}
				faults <- inline
			}
		}
	}
}

// region is one guest memory region and what the server knows about it.
type region struct {
	Region
	ps    uint64
	pages uint64
	// served marks pages mapped (or claimed by a worker about to map
	// them); removed marks pages the balloon gave back, which are zero.
	served, removed bitmap
	// noZeropage is set once UFFDIO_ZEROPAGE has failed with EINVAL
	// (hugetlbfs): zero pages are then copied from a zero buffer.
	noZeropage atomic.Bool
}

func newRegion(r Region) *region {
	ps := r.pageSize()
	n := r.Size / ps
	return &region{Region: r, ps: ps, pages: n, served: newBitmap(n), removed: newBitmap(n)}
}

func (r *region) contains(addr uint64) bool {
	return addr >= r.BaseHostVirtAddr && addr < r.BaseHostVirtAddr+r.Size
}

// remove records that [start, end) was discarded: its pages fault again
// and are then zero-filled.
func (r *region) remove(start, end uint64) {
	lo := max(start, r.BaseHostVirtAddr)
	hi := min(end, r.BaseHostVirtAddr+r.Size)
	for a := lo; a < hi; a += r.ps {
		p := (a - r.BaseHostVirtAddr) / r.ps
		if a%r.ps != 0 || a+r.ps > hi { // a partly discarded page keeps its contents
			continue
		}
		r.removed.set(p)
		r.served.clear(p)
	}
}

// zero reports whether page p is to be zero-filled.
func (r *region) zero(f *memFile, p uint64) bool {
	return r.removed.get(p) || f.isZero(r.Offset+p*r.ps, r.ps)
}

// serveFault maps the block of pages around addr that are not mapped yet,
// in runs of data and zero pages, one ioctl per run. Without retry it
// gives up with errAgain when the address space is changing, releasing
// its claim on the block so the fault can be served again (pages it did
// map are then skipped as already there).
func (s *Server) serveFault(fd int, rs []*region, addr uint64, buf []byte, retry bool) error {
	var r *region
	for _, c := range rs {
		if c.contains(addr) {
			r = c
			break
		}
	}
	if r == nil {
		return fmt.Errorf("fault at %#x outside every region", addr)
	}
	p := (addr - r.BaseHostVirtAddr) / r.ps
	if !r.served.set(p) {
		// Another worker has claimed the page; its fill wakes this fault.
		return nil
	}
	block := max(1, s.readahead/r.ps)
	lo, hi := p-p%block, min(p-p%block+block, r.pages)
	// Extend the run from the faulting page both ways over unclaimed pages.
	first, last := p, p+1
	for first > lo && r.served.set(first-1) {
		first--
	}
	for last < hi && r.served.set(last) {
		last++
	}
	for i := first; i < last; {
		z := r.zero(s.file, i)
		j := i + 1
		for j < last && r.zero(s.file, j) == z {
			j++
		}
		if err := s.fillRun(fd, r, i, j, z, buf, retry); err != nil {
			if errors.Is(err, errAgain) && !retry {
				for q := first; q < last; q++ {
					r.served.clear(q)
				}
			}
			return err
		}
		i = j
	}
	if s.firstFault.Load() == 0 {
		s.firstFault.CompareAndSwap(0, int64(time.Since(s.handshakeAt)))
	}
	return nil
}

// fillRun maps pages [i, j) of r: zero-filled or copied from the file
// through buf, a buffer at least one page long.
func (s *Server) fillRun(fd int, r *region, i, j uint64, zero bool, buf []byte, retry bool) error {
	dst := r.BaseHostVirtAddr + i*r.ps
	n := (j - i) * r.ps
	if zero && !r.noZeropage.Load() {
		err := s.fillRange(fd, r, dst, nil, n, retry)
		if err == nil {
			s.zeroed.Add(n)
			return nil
		}
		if !isInvalid(err) {
			return err
		}
		r.noZeropage.Store(true)
	}
	if zero {
		// hugetlbfs: no zero page, so copy zeros, never the file.
		z := zeroBuffer(n)
		err := s.fillRange(fd, r, dst, unsafe.Pointer(&z[0]), n, retry)
		runtime.KeepAlive(z)
		if err == nil {
			s.zeroed.Add(n)
		}
		return err
	}
	chunk := uint64(len(buf)) / r.ps * r.ps
	for done := uint64(0); done < n; done += chunk {
		c := min(chunk, n-done)
		if err := s.file.read(buf[:c], r.Offset+i*r.ps+done); err != nil {
			return err
		}
		err := s.fillRange(fd, r, dst+done, unsafe.Pointer(&buf[0]), c, retry)
		runtime.KeepAlive(buf)
		if err != nil {
			return err
		}
		s.copied.Add(c)
	}
	return nil
}

// maxAgain bounds how long a fill retries while the kernel reports the
// address space changing under a pending event.
const maxAgain = 2 * time.Second

// fillRange maps n bytes at dst (zero pages when src is nil), carrying on
// past pages that are already there and retrying partial fills. While the
// address space is changing it waits (with retry) or returns errAgain.
func (s *Server) fillRange(fd int, r *region, dst uint64, src unsafe.Pointer, n uint64, retry bool) error {
	var done uint64
	var since time.Time
	for done < n {
		var from unsafe.Pointer
		if src != nil {
			from = unsafe.Add(src, done)
		}
		k, err := fill(fd, dst+done, from, n-done)
		done += k
		switch {
		case err == nil:
		case errors.Is(err, errExist):
			// Mapped already (by the VMM itself, or a race): wake anyone
			// waiting on it and go on with the next page.
			wake(fd, dst+done, r.ps)
			done += r.ps
		case errors.Is(err, errAgain):
			if k > 0 {
				since = time.Time{}
				continue
			}
			if !retry {
				return fmt.Errorf("fill %#x+%#x: %w", dst+done, n-done, err)
			}
			if since.IsZero() {
				since = time.Now()
			} else if time.Since(since) > maxAgain {
				return fmt.Errorf("fill %#x+%#x: %w for %s", dst+done, n-done, err, maxAgain)
			}
			time.Sleep(20 * time.Microsecond)
		case errors.Is(err, unix.ESRCH):
			// The VMM's address space is gone.
			return nil
		default:
			return fmt.Errorf("fill %#x+%#x: %w", dst+done, n-done, err)
		}
	}
	return nil
}

var (
	zeroMu  sync.Mutex
	zeroBuf []byte
)

// zeroBuffer returns a zero-filled buffer of at least n bytes, shared and
// never written.
func zeroBuffer(n uint64) []byte {
	zeroMu.Lock()
	defer zeroMu.Unlock()
	if uint64(len(zeroBuf)) < n {
		zeroBuf = make([]byte, n)
	}
	return zeroBuf[:n]
}
