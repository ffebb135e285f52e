//go:build linux

package uffd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/testutil"
)

const (
	mib = 1 << 20
	kib = 1 << 10
)

// writeMemFile writes a memory file of size bytes (a multiple of 2 MiB):
// random data, a 2 MiB run of written zeros, a 2 MiB hole, and scattered
// zero 4 KiB pages, so every kind of page is served. It returns the path
// and the file's contents.
func writeMemFile(t testing.TB, dir string, size int) (string, []byte) {
	t.Helper()
	want := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(want)
	clear(want[2*mib : 4*mib]) // written zeros: data on disk, found by the scan
	clear(want[4*mib : 6*mib]) // a hole
	for p := 6 * mib; p < size; p += 37 * filePage {
		clear(want[p : p+filePage])
	}
	path := filepath.Join(dir, "mem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(want[:4*mib], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(want[6*mib:], 6*mib); err != nil {
		t.Fatal(err)
	}
	return path, want
}

// vmm plays Firecracker: guest memory mapped anonymous (or hugetlb),
// registered with a userfaultfd, handed to the page server.
type vmm struct {
	mem     []byte
	conn    *net.UnixConn
	regions []Region
	// fileOff maps an offset in mem to the memory file.
	fileOff func(off int) int
}

// newVMM maps size bytes of guest memory as two regions, the second half
// of the file first, so region offsets matter; legacy sends page_size_kib
// as Firecracker before 1.6 did. Without hugetlb pages the test skips.
func newVMM(t testing.TB, socket string, size int, pageSize uint64, huge, legacy bool) *vmm {
	t.Helper()
	v, err := dialVMM(socket, size, pageSize, huge, legacy)
	if errors.Is(err, errNoMemory) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.close)
	return v
}

var errNoMemory = errors.New("cannot map guest memory")

func dialVMM(socket string, size int, pageSize uint64, huge, legacy bool) (_ *vmm, err error) {
	flags := unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE
	if huge {
		if free := freeHugePages(); free < size/(2*mib) {
			return nil, fmt.Errorf("%w: %d free 2 MiB hugetlb pages, need %d (raise /proc/sys/vm/nr_hugepages)", errNoMemory, free, size/(2*mib))
		}
		flags |= unix.MAP_HUGETLB
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return nil, fmt.Errorf("%w: %d bytes (hugetlb %v; see /proc/sys/vm/nr_hugepages): %v", errNoMemory, size, huge, err)
	}
	v := &vmm{mem: mem, fileOff: func(off int) int { return (off + size/2) % size }}
	defer func() {
		if err != nil {
			v.close()
		}
	}()
	if !huge {
		// Transparent huge pages would hide 4 KiB faults.
		unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	}
	fd, err := Register(Addr(mem), uint64(size), FeatureEventRemove)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd) // the server holds its own copy once sent
	half := uint64(size / 2)
	for i, off := range []uint64{half, 0} {
		r := Region{BaseHostVirtAddr: Addr(mem) + uint64(i)*half, Size: half, Offset: off}
		if legacy {
			r.PageSizeKiB = pageSize / 1024
		} else {
			r.PageSize = pageSize
		}
		v.regions = append(v.regions, r)
	}
	if v.conn, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"}); err != nil {
		return nil, err
	}
	return v, SendHandshake(v.conn, v.regions, fd)
}

// freeHugePages returns HugePages_Free from /proc/meminfo.
func freeHugePages() int {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "HugePages_Free:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(rest))
			return n
		}
	}
	return 0
}

func (v *vmm) close() {
	if v.conn != nil {
		v.conn.Close()
	}
	unix.Munmap(v.mem)
}

// touch reads the pages at the given indexes (of size step) from several
// goroutines and compares each with the memory file. The reads go through
// the kernel (pwrite from guest memory to a memfd): a goroutine stuck in a
// user-mode fault would hold its P and deadlock the runtime with the page
// server in the same process, while one in a system call does not.
func (v *vmm) touch(t testing.TB, want []byte, step int, order []int, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fd, err := unix.MemfdCreate("touch", unix.MFD_CLOEXEC)
			if err != nil {
				errc <- err
				return
			}
			defer unix.Close(fd)
			got := make([]byte, step)
			for k := w; k < len(order); k += workers {
				off := order[k] * step
				if err := readGuest(fd, v.mem[off:off+step], got); err != nil {
					errc <- fmt.Errorf("read guest page at %#x: %w", off, err)
					return
				}
				if !bytes.Equal(got, want[v.fileOff(off):v.fileOff(off)+step]) {
					errc <- fmt.Errorf("guest page at %#x differs from the file at %#x", off, v.fileOff(off))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// readGuest copies guest memory into out through the kernel, by way of the
// memfd fd.
func readGuest(fd int, guest, out []byte) error {
	if n, err := unix.Pwrite(fd, guest, 0); err != nil || n != len(guest) {
		return fmt.Errorf("pwrite %d of %d: %v", n, len(guest), err)
	}
	if n, err := unix.Pread(fd, out, 0); err != nil || n != len(out) {
		return fmt.Errorf("pread %d of %d: %v", n, len(out), err)
	}
	return nil
}

func startServer(t testing.TB, cfg Config) (*Server, chan error) {
	t.Helper()
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	return s, done
}

func TestServe(t *testing.T) {
	testutil.RequireRoot(t) // userfaultfd for kernel faults needs CAP_SYS_PTRACE
	const size = 16 * mib
	dir := t.TempDir()
	path, want := writeMemFile(t, dir, size)
	for _, tc := range []struct {
		name      string
		pageSize  uint64
		readahead int
		huge      bool
		legacy    bool
		step      int // how far apart the touches are
	}{
		{name: "4k pages, no readahead", pageSize: 4 * kib, readahead: 4 * kib, step: 4 * kib},
		{name: "4k pages, default readahead", pageSize: 4 * kib, step: 4 * kib},
		{name: "4k pages, page_size_kib handshake", pageSize: 4 * kib, legacy: true, step: 4 * kib},
		{name: "2m page size on small pages", pageSize: 2 * mib, step: 4 * kib},
		{name: "2m hugetlb pages", pageSize: 2 * mib, huge: true, step: 4 * kib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range []string{"sequential", "random"} {
				t.Run(order, func(t *testing.T) {
					socket := filepath.Join(t.TempDir(), "uffd.sock")
					s, done := startServer(t, Config{Socket: socket, MemFile: path, Readahead: tc.readahead, Workers: 2})
					<-s.file.scanned // make the zero accounting below exact
					v := newVMM(t, socket, size, tc.pageSize, tc.huge, tc.legacy)
					idx := make([]int, size/tc.step)
					for i := range idx {
						idx[i] = i
					}
					if order == "random" {
						rand.New(rand.NewPCG(1, 2)).Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
					}
					v.touch(t, want, tc.step, idx, 4)
					st := settled(s, size)
					t.Logf("%+v", st)
					if st.CopiedBytes+st.ZeroedBytes != size {
						t.Errorf("served %d bytes (%d copied, %d zeroed), want the whole %d once", st.CopiedBytes+st.ZeroedBytes, st.CopiedBytes, st.ZeroedBytes, size)
					}
					if st.ZeroedBytes < 4*mib {
						t.Errorf("zero-filled %d bytes, want at least the 4 MiB of zero runs", st.ZeroedBytes)
					}
					if st.FirstFault <= 0 {
						t.Error("no time to first fault recorded")
					}
					v.conn.Close() // the VMM goes away
					select {
					case err := <-done:
						if err != nil {
							t.Fatalf("serve: %v", err)
						}
					case <-time.After(5 * time.Second):
						t.Fatal("serve did not return after the vmm closed its socket")
					}
				})
			}
		})
	}
}

// settled returns the server's stats once they account for want bytes (or
// after a second): a woken faulting thread may run before the worker that
// woke it has counted the fill.
func settled(s *Server, want uint64) Stats {
	deadline := time.Now().Add(time.Second)
	for {
		st := s.Stats()
		if st.CopiedBytes+st.ZeroedBytes >= want || time.Now().After(deadline) {
			return st
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRemove(t *testing.T) {
	testutil.RequireRoot(t)
	const size = 8 * mib
	dir := t.TempDir()
	path, want := writeMemFile(t, dir, size)
	socket := filepath.Join(dir, "uffd.sock")
	s, _ := startServer(t, Config{Socket: socket, MemFile: path})
	v := newVMM(t, socket, size, 4*kib, false, false)
	all := make([]int, size/filePage)
	for i := range all {
		all[i] = i
	}
	v.touch(t, want, filePage, all, 2)

	// The balloon gives back 1 MiB of data pages: Firecracker discards them
	// with MADV_DONTNEED, which the kernel reports as UFFD_EVENT_REMOVE.
	lo, hi := 6*mib, 7*mib
	if err := unix.Madvise(v.mem[lo:hi], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	// madvise returns once the event is read; the count follows.
	for deadline := time.Now().Add(time.Second); s.Stats().Removes == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if got := s.Stats().Removes; got != 1 {
		t.Fatalf("removes %d, want 1", got)
	}
	before := settled(s, size)
	fd, err := unix.MemfdCreate("touch", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got := make([]byte, hi-lo)
	if err := readGuest(fd, v.mem[lo:hi], got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, hi-lo)) {
		t.Error("discarded range does not read back as zeros")
	}
	after := settled(s, size+uint64(hi-lo))
	if after.CopiedBytes != before.CopiedBytes {
		t.Errorf("discarded pages were copied from the file again (%d bytes)", after.CopiedBytes-before.CopiedBytes)
	}
	if after.ZeroedBytes-before.ZeroedBytes != uint64(hi-lo) {
		t.Errorf("zero-filled %d bytes after the removal, want %d", after.ZeroedBytes-before.ZeroedBytes, hi-lo)
	}
	// Memory outside the range kept its contents.
	v.touch(t, want, filePage, all[:lo/filePage], 2)
}

func TestHandshakeErrors(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	path, _ := writeMemFile(t, dir, 8*mib)
	for _, tc := range []struct {
		name string
		send func(c *net.UnixConn) error
	}{
		{"no descriptor", func(c *net.UnixConn) error {
			_, err := c.Write([]byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`))
			return err
		}},
		{"bad json", func(c *net.UnixConn) error {
			_, _, err := c.WriteMsgUnix([]byte(`{"regions":1}`), unix.UnixRights(int(os.Stdin.Fd())), nil)
			return err
		}},
		{"unaligned region", func(c *net.UnixConn) error {
			return SendHandshake(c, []Region{{BaseHostVirtAddr: 4097, Size: 4096, PageSize: 4096}}, int(os.Stdin.Fd()))
		}},
		{"closed early", func(c *net.UnixConn) error { return c.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "uffd.sock")
			_, done := startServer(t, Config{Socket: socket, MemFile: path})
			c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := tc.send(c); err != nil {
				t.Fatal(err)
			}
			if tc.name == "no descriptor" {
				c.CloseWrite()
			}
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("serve accepted the handshake")
				}
				t.Logf("serve: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("serve still running")
			}
		})
	}
}

func TestCloseBeforeConnect(t *testing.T) {
	dir := t.TempDir()
	path, _ := writeMemFile(t, dir, 8*mib)
	s, err := New(Config{Socket: filepath.Join(dir, "uffd.sock"), MemFile: path}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("serve: %v, want ErrClosed", err)
	}
	if _, err := os.Stat(s.Socket()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// childEnv names the socket and memory file for the child process that
// plays the VMM in TestVMMExits.
const childEnv = "EMBER_UFFD_TEST_VMM"

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		os.Exit(runChildVMM(v))
	}
	os.Exit(m.Run())
}

// runChildVMM maps guest memory, hands it to the server at the socket,
// checks every page against the file, and exits without saying goodbye.
func runChildVMM(arg string) int {
	var socket, path string
	var size int
	if _, err := fmt.Sscanf(arg, "%s %s %d", &socket, &path, &size); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	want, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	want = append(want, make([]byte, size-len(want))...)
	v, err := dialVMM(socket, size, 4*kib, false, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for off := 0; off < size; off += filePage {
		if !bytes.Equal(v.mem[off:off+filePage], want[v.fileOff(off):v.fileOff(off)+filePage]) {
			fmt.Fprintf(os.Stderr, "page %#x differs\n", off)
			return 1
		}
	}
	return 0
}

// TestVMMExits runs the VMM in another process: when it exits, the server
// sees its socket close and Serve returns nil.
func TestVMMExits(t *testing.T) {
	testutil.RequireRoot(t)
	const size = 8 * mib
	dir := t.TempDir()
	path, _ := writeMemFile(t, dir, size)
	socket := filepath.Join(dir, "uffd.sock")
	s, done := startServer(t, Config{Socket: socket, MemFile: path})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+socket+" "+path+" "+strconv.Itoa(size))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vmm process: %v: %s", err, out)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after the vmm exited")
	}
	if st := settled(s, size); st.CopiedBytes+st.ZeroedBytes != size {
		t.Errorf("served %d bytes, want %d", st.CopiedBytes+st.ZeroedBytes, size)
	}
}

// TestRemoveWhileServing discards memory over and over while other pages
// are faulted in: fills that race a pending removal are refused with
// EAGAIN until the page server has read the event, and must be retried
// rather than wait on the goroutine that reads it.
func TestRemoveWhileServing(t *testing.T) {
	testutil.RequireRoot(t)
	const size = 16 * mib
	dir := t.TempDir()
	path, want := writeMemFile(t, dir, size)
	socket := filepath.Join(dir, "uffd.sock")
	s, done := startServer(t, Config{Socket: socket, MemFile: path, Readahead: 16 * kib})
	v := newVMM(t, socket, size, 4*kib, false, false)
	// Without the retry hand-off the reader waits on itself: the removals
	// block and the touches stall for good.
	stop := make(chan struct{})
	removed := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				removed <- n
				return
			default:
			}
			unix.Madvise(v.mem[:mib], unix.MADV_DONTNEED)
			n++
		}
	}()
	idx := make([]int, 4*mib/filePage)
	for i := range idx {
		idx[i] = 2*mib/filePage + i
	}
	begin := time.Now()
	v.touch(t, want, filePage, idx, 2)
	close(stop)
	t.Logf("%d removals while %d pages were served in %s; %+v", <-removed, len(idx), time.Since(begin), s.Stats())
	select {
	case err := <-done:
		t.Fatalf("serve ended: %v", err)
	default:
	}
}
