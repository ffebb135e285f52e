//go:build linux

package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// The parts of QEMU's migration stream (savevm.c, ram.c; stream version 3)
// filterStream reads. It understands the header, the configuration
// section and the RAM sections; the device sections that follow are copied
// as they are.
const (
	streamMagic   = 0x5145564d // "QEVM"
	streamVersion = 3

	secStart  = 0x01
	secPart   = 0x02
	secEnd    = 0x03
	secFull   = 0x04 // device state, which ends the RAM sections
	secSub    = 0x05
	secConfig = 0x07
	secFooter = 0x7e

	ramZero     = 0x02
	ramMemSize  = 0x04
	ramPage     = 0x08
	ramEOS      = 0x10
	ramContinue = 0x20
	ramFlags    = 0xfff // a record's flags share its be64 with the page's offset
)

// errStreamLayout is a stream filterStream does not know how to read: a
// QEMU that writes RAM some other way (compressed, multifd, another
// section order). The stream is then kept whole.
var errStreamLayout = errors.New("unknown migration stream layout")

// filterStream copies the migration stream in r to w, leaving out each
// record of RAM block blockID whose page equals the same page of the file
// base (a zero page where base holds zeroes): a machine that maps base
// privately already has those pages. A page is left out only if no earlier
// record of it was kept, so the last record of every page still wins.
func filterStream(ctx context.Context, w io.Writer, r io.Reader, base, blockID string) error {
	f, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("open saved guest memory: %w", err)
	}
	defer f.Close()
	b, err := newBasePages(f)
	if err != nil {
		return err
	}
	sf := &streamFilter{
		ctx: ctx, in: bufio.NewReaderSize(r, 1<<20), out: bufio.NewWriterSize(w, 1<<20),
		base: b, blockID: blockID, sent: make([]bool, b.size/pageSize+1),
	}
	if err := sf.run(); err != nil {
		return err
	}
	return sf.out.Flush()
}

// streamFilter is one run of filterStream.
type streamFilter struct {
	ctx     context.Context
	in      *bufio.Reader
	out     *bufio.Writer
	base    *basePages
	blockID string
	// ignoreShared says the source ran with x-ignore-shared, which adds an
	// address to each block of the RAM size record.
	ignoreShared bool
	// ramSection is the RAM handler's section id, once its start is read.
	ramSection uint32
	haveRAM    bool
	// inBlock is the block the input's last page record named, outBlock
	// the one the output's did: a record continues the block of the one
	// before it, across sections, as QEMU's loader reads it.
	inBlock, outBlock string
	// sent marks the pages of blockID a kept record wrote.
	sent []bool
	// Dropped and Kept count the page records of blockID.
	dropped, kept int
}

func (s *streamFilter) run() error {
	var hdr [8]byte
	if err := s.copyN(hdr[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint32(hdr[:4]) != streamMagic || binary.BigEndian.Uint32(hdr[4:]) != streamVersion {
		return fmt.Errorf("stream header %x: %w", hdr, errStreamLayout)
	}
	if t, err := s.in.Peek(1); err == nil && t[0] == secConfig {
		if err := s.config(); err != nil {
			return err
		}
	}
	for {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		t, err := s.in.Peek(1)
		if err != nil {
			return fmt.Errorf("read section type: %w", err)
		}
		switch t[0] {
		case secStart:
			if err := s.start(); err != nil {
				return err
			}
		case secPart, secEnd:
			var h [5]byte
			if err := s.copyN(h[:]); err != nil {
				return err
			}
			if id := binary.BigEndian.Uint32(h[1:]); !s.haveRAM || id != s.ramSection {
				return fmt.Errorf("section %d continues before the ram section: %w", id, errStreamLayout)
			}
			if err := s.ramRecords(); err != nil {
				return err
			}
		default:
			// The RAM sections are over: device state (and the end of the
			// stream) follows, copied as it is.
			if !s.haveRAM {
				return fmt.Errorf("section type %#x before any ram section: %w", t[0], errStreamLayout)
			}
			_, err := io.Copy(s.out, s.in)
			return err
		}
	}
}

// config copies the configuration section: the machine type's name and
// the subsections QEMU 7.2 may add (target page bits, validated
// capabilities, the UUID).
func (s *streamFilter) config() error {
	var t [1]byte
	if err := s.copyN(t[:]); err != nil {
		return err
	}
	if _, err := s.lenBytes(4); err != nil {
		return err
	}
	for {
		p, err := s.in.Peek(1)
		if err != nil || p[0] != secSub {
			return nil // the sections follow
		}
		if err := s.copyN(t[:]); err != nil {
			return err
		}
		name, err := s.lenBytes(1)
		if err != nil {
			return err
		}
		var ver [4]byte
		if err := s.copyN(ver[:]); err != nil {
			return err
		}
		switch string(name) {
		case "configuration/target-page-bits":
			_, err = s.bytes(4)
		case "configuration/uuid":
			_, err = s.bytes(16)
		case "configuration/capabilities":
			var n []byte
			if n, err = s.bytes(4); err != nil {
				return err
			}
			for range binary.BigEndian.Uint32(n) {
				c, err := s.lenBytes(1)
				if err != nil {
					return err
				}
				if string(c) == "x-ignore-shared" {
					s.ignoreShared = true
				}
			}
		default:
			return fmt.Errorf("configuration subsection %q: %w", name, errStreamLayout)
		}
		if err != nil {
			return err
		}
	}
}

// start copies a section start, which must be the RAM handler's, and its
// records.
func (s *streamFilter) start() error {
	var h [5]byte
	if err := s.copyN(h[:]); err != nil {
		return err
	}
	id, err := s.lenBytes(1)
	if err != nil {
		return err
	}
	if _, err := s.bytes(8); err != nil { // instance and version
		return err
	}
	if string(id) != "ram" || s.haveRAM {
		return fmt.Errorf("section %q starts: %w", id, errStreamLayout)
	}
	s.ramSection, s.haveRAM = binary.BigEndian.Uint32(h[1:]), true
	return s.ramRecords()
}

// ramRecords filters one RAM section's records, up to and including its
// end-of-section record and the section footer.
func (s *streamFilter) ramRecords() error {
	for {
		var h [8]byte
		if _, err := io.ReadFull(s.in, h[:]); err != nil {
			return fmt.Errorf("read ram record: %w", err)
		}
		v := binary.BigEndian.Uint64(h[:])
		flags, addr := v&ramFlags, v&^ramFlags
		switch flags &^ ramContinue {
		case ramEOS:
			if _, err := s.out.Write(h[:]); err != nil {
				return err
			}
			return s.footer()
		case ramMemSize:
			if _, err := s.out.Write(h[:]); err != nil {
				return err
			}
			if err := s.memSize(addr); err != nil {
				return err
			}
		case ramZero, ramPage:
			if err := s.page(flags, addr); err != nil {
				return err
			}
		default:
			return fmt.Errorf("ram record flags %#x: %w", flags, errStreamLayout)
		}
	}
}

// memSize copies the list of RAM blocks and their sizes.
func (s *streamFilter) memSize(total uint64) error {
	for total > 0 {
		if _, err := s.lenBytes(1); err != nil {
			return err
		}
		n, err := s.bytes(8)
		if err != nil {
			return err
		}
		size := binary.BigEndian.Uint64(n)
		if size > total {
			return fmt.Errorf("ram block of %d bytes in %d: %w", size, total, errStreamLayout)
		}
		total -= size
		if s.ignoreShared {
			if _, err := s.bytes(8); err != nil {
				return err
			}
		}
	}
	return nil
}

// page reads one page record and writes it unless the base already holds
// its page.
func (s *streamFilter) page(flags, addr uint64) error {
	if flags&ramContinue == 0 {
		var n [1]byte
		if _, err := io.ReadFull(s.in, n[:]); err != nil {
			return err
		}
		id := make([]byte, n[0])
		if _, err := io.ReadFull(s.in, id); err != nil {
			return err
		}
		s.inBlock = string(id)
	} else if s.inBlock == "" {
		return fmt.Errorf("ram record continues no block: %w", errStreamLayout)
	}
	size := 1
	if flags&ramPage != 0 {
		size = pageSize
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(s.in, data); err != nil {
		return fmt.Errorf("read page at %#x: %w", addr, err)
	}
	if s.inBlock == s.blockID && addr+pageSize <= uint64(s.base.size) {
		pg := addr / pageSize
		same, err := s.base.equal(int64(addr), flags&ramPage != 0, data)
		if err != nil {
			return err
		}
		if same && !s.sent[pg] {
			s.dropped++
			return nil
		}
		s.sent[pg] = true
		s.kept++
	}
	var h [8]byte
	cont := s.inBlock == s.outBlock
	if cont {
		flags |= ramContinue
	} else {
		flags &^= ramContinue
	}
	binary.BigEndian.PutUint64(h[:], addr|flags)
	if _, err := s.out.Write(h[:]); err != nil {
		return err
	}
	if !cont {
		s.out.WriteByte(byte(len(s.inBlock)))
		s.out.WriteString(s.inBlock)
		s.outBlock = s.inBlock
	}
	_, err := s.out.Write(data)
	return err
}

// footer copies a section footer where the stream has one.
func (s *streamFilter) footer() error {
	p, err := s.in.Peek(1)
	if err != nil || p[0] != secFooter {
		return nil
	}
	_, err = s.bytes(5)
	return err
}

// copyN reads len(b) bytes into b and writes them out.
func (s *streamFilter) copyN(b []byte) error {
	if _, err := io.ReadFull(s.in, b); err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	_, err := s.out.Write(b)
	return err
}

// bytes copies n bytes and returns them.
func (s *streamFilter) bytes(n int) ([]byte, error) {
	b := make([]byte, n)
	return b, s.copyN(b)
}

// lenBytes copies a length (of width bytes, big-endian) and the bytes it
// counts, and returns those.
func (s *streamFilter) lenBytes(width int) ([]byte, error) {
	l, err := s.bytes(width)
	if err != nil {
		return nil, err
	}
	var n uint64
	for _, c := range l {
		n = n<<8 | uint64(c)
	}
	if n > 1<<16 {
		return nil, fmt.Errorf("string of %d bytes: %w", n, errStreamLayout)
	}
	return s.bytes(int(n))
}

// basePages reads pages of a saved memory file, knowing its holes (zero
// pages that need no read).
type basePages struct {
	f    *os.File
	size int64
	// data lists the file's data extents, in order.
	data [][2]int64
	// win caches the file from winOff: a stream's pages come mostly in
	// ascending order.
	win    []byte
	winOff int64
	winLen int
}

// baseWindow is how much of the base basePages reads at once.
const baseWindow = 256 << 10

func newBasePages(f *os.File) (*basePages, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := &basePages{f: f, size: st.Size(), win: make([]byte, baseWindow), winOff: -1}
	fd := int(f.Fd())
	for off := int64(0); off < b.size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("seek data at %d: %w", off, err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole at %d: %w", d, err)
		}
		b.data = append(b.data, [2]int64{d, h})
		off = h
	}
	return b, nil
}

// hole reports whether the page at off lies in a hole of the file.
func (b *basePages) hole(off int64) bool {
	lo, hi := 0, len(b.data)
	for lo < hi {
		mid := (lo + hi) / 2
		switch e := b.data[mid]; {
		case off+pageSize <= e[0]:
			hi = mid
		case off >= e[1]:
			lo = mid + 1
		default:
			return false
		}
	}
	return true
}

// equal reports whether the base's page at off holds data: a whole page
// (full) or, for a zero page record, zeroes.
func (b *basePages) equal(off int64, full bool, data []byte) (bool, error) {
	if b.hole(off) {
		return !full && data[0] == 0, nil
	}
	pg, err := b.page(off)
	if err != nil {
		return false, err
	}
	if full {
		return bytes.Equal(pg, data), nil
	}
	return data[0] == 0 && isZero(pg), nil
}

// page returns the base's page at off (valid until the next call).
func (b *basePages) page(off int64) ([]byte, error) {
	if b.winOff < 0 || off < b.winOff || off+pageSize > b.winOff+int64(b.winLen) {
		n, err := b.f.ReadAt(b.win, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read saved guest memory at %d: %w", off, err)
		}
		if n < pageSize {
			return nil, fmt.Errorf("read saved guest memory at %d: short file", off)
		}
		b.winOff, b.winLen = off, n
	}
	return b.win[off-b.winOff : off-b.winOff+pageSize], nil
}
