//go:build linux

package uffd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// filePage is the granularity at which the memory file's zero pages are
// known.
const filePage = 4096

var zero4K [filePage]byte

// bitmap is a fixed-size set of bits safe for concurrent use.
type bitmap []uint64

func newBitmap(n uint64) bitmap { return make(bitmap, (n+63)/64) }

func (b bitmap) get(i uint64) bool { return atomic.LoadUint64(&b[i/64])&(1<<(i%64)) != 0 }

// set sets bit i and reports whether it was clear: a claim.
func (b bitmap) set(i uint64) bool {
	bit := uint64(1) << (i % 64)
	return atomic.OrUint64(&b[i/64], bit)&bit == 0
}

func (b bitmap) clear(i uint64) { atomic.AndUint64(&b[i/64], ^(uint64(1) << (i % 64))) }

// memFile is the snapshot memory file. Pages are read with pread(2) into
// the serving goroutine's buffer and copied from there: faulting in a
// mapping of the file would cost a page fault per few pages on the server's
// side too. zero marks the 4 KiB pages known to be all zero: holes at once,
// data after the background scan has looked at it. A page not (yet) known
// to be zero is copied, which is correct either way.
type memFile struct {
	f    *os.File
	size uint64
	zero bitmap
	// scanned is closed when the zero scan has covered the whole file.
	scanned chan struct{}
	stop    atomic.Bool
}

// openMemFile opens path and records its holes; the caller starts scan.
func openMemFile(path string) (_ *memFile, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open memory file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat memory file: %w", err)
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("memory file %s is empty", path)
	}
	m := &memFile{f: f, size: uint64(st.Size()), scanned: make(chan struct{})}
	m.zero = newBitmap((m.size + filePage - 1) / filePage)
	if err := m.markHoles(int(f.Fd())); err != nil {
		return nil, err
	}
	return m, nil
}

// read fills buf with the file from off; bytes past its end are zero.
func (m *memFile) read(buf []byte, off uint64) error {
	n, err := m.f.ReadAt(buf, int64(off))
	if n < len(buf) {
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read memory file at %#x: %w", off, err)
		}
		clear(buf[n:])
	}
	return nil
}

// markHoles marks every page inside a hole of the file as zero, without
// reading it, using SEEK_DATA/SEEK_HOLE.
func (m *memFile) markHoles(fd int) error {
	var off int64
	for uint64(off) < m.size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // a hole runs to the end
			data = int64(m.size)
		} else if err != nil {
			return fmt.Errorf("seek data in memory file: %w", err)
		}
		for p := (uint64(off) + filePage - 1) / filePage; (p+1)*filePage <= uint64(data); p++ {
			m.zero.set(p)
		}
		if uint64(data) >= m.size {
			return nil
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in memory file: %w", err)
		}
		off = hole
	}
	return nil
}

// scan marks the all-zero pages among the data; it runs once, in the
// background, and stops early on close. It reads with pread(2) rather than
// through the mapping so that it sits in system calls, where the runtime
// can schedule the fault workers around it, and yields between chunks.
func (m *memFile) scan() {
	defer close(m.scanned)
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for off := uint64(0); off < m.size && !m.stop.Load(); off += chunk {
		first, n := off/filePage, min(chunk, m.size-off)
		if m.zero.get(first) && m.isZero(off, n) {
			continue // a hole
		}
		k, err := m.f.ReadAt(buf[:n], int64(off))
		if k == 0 && err != nil {
			return
		}
		for p := uint64(0); p*filePage < uint64(k); p++ {
			page := buf[p*filePage : min((p+1)*filePage, uint64(k))]
			if bytes.Equal(page, zero4K[:len(page)]) {
				m.zero.set(first + p)
			}
		}
		runtime.Gosched()
	}
}

// isZero reports whether [off, off+n) of the file is known to be zero;
// bytes past the end of the file are.
func (m *memFile) isZero(off, n uint64) bool {
	for p := off / filePage; p*filePage < off+n; p++ {
		if p*filePage >= m.size {
			return true
		}
		if !m.zero.get(p) {
			return false
		}
	}
	return true
}

func (m *memFile) close() error {
	m.stop.Store(true)
	<-m.scanned
	return m.f.Close()
}
