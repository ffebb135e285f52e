//go:build linux

package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// streamWriter builds migration streams the way QEMU 7.2 lays them out.
type streamWriter struct{ bytes.Buffer }

func (w *streamWriter) be32(v uint32) { binary.Write(w, binary.BigEndian, v) }
func (w *streamWriter) be64(v uint64) { binary.Write(w, binary.BigEndian, v) }
func (w *streamWriter) str(s string)  { w.WriteByte(byte(len(s))); w.WriteString(s) }

func (w *streamWriter) header(caps ...string) {
	w.be32(streamMagic)
	w.be32(streamVersion)
	w.WriteByte(secConfig)
	w.be32(7)
	w.WriteString("microvm")
	if len(caps) > 0 {
		w.WriteByte(secSub)
		w.str("configuration/capabilities")
		w.be32(1)
		w.be32(uint32(len(caps)))
		for _, c := range caps {
			w.str(c)
		}
	}
}

// section writes a section header: start (with its id string) or part/end.
func (w *streamWriter) section(typ byte, id uint32, name string) {
	w.WriteByte(typ)
	w.be32(id)
	if typ == secStart {
		w.str(name)
		w.be32(0)
		w.be32(4)
	}
}

func (w *streamWriter) footer(id uint32) { w.WriteByte(secFooter); w.be32(id) }

// ramStart writes the RAM section's start, section id id: the size record
// listing the blocks (name, bytes; with an address each under
// x-ignore-shared), end of section and footer.
func (w *streamWriter) ramStart(id uint32, ignoreShared bool, blocks ...any) {
	w.section(secStart, id, "ram")
	var total uint64
	for i := 1; i < len(blocks); i += 2 {
		total += blocks[i].(uint64)
	}
	w.be64(total | ramMemSize)
	for i := 0; i < len(blocks); i += 2 {
		w.str(blocks[i].(string))
		w.be64(blocks[i+1].(uint64))
		if ignoreShared {
			w.be64(0x1000000)
		}
	}
	w.eos()
	w.footer(id)
}
func (w *streamWriter) eos() { w.be64(ramEOS) }

// page writes a page record; block "" continues the previous block.
func (w *streamWriter) page(block string, off uint64, data []byte) {
	flags := uint64(ramPage)
	if len(data) == 1 {
		flags = ramZero
	}
	if block == "" {
		flags |= ramContinue
	}
	w.be64(off | flags)
	if block != "" {
		w.str(block)
	}
	w.Write(data)
}

func filled(b byte) []byte { return bytes.Repeat([]byte{b}, pageSize) }

// TestFilterStream filters a stream against a base file and checks which
// page records are left out and that everything else is kept as it was.
func TestFilterStream(t *testing.T) {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base")
	// Pages 0 and 1 hold data (0xaa, 0xbb), page 2 is zeroes on disk,
	// page 3 a hole.
	base := append(append(filled(0xaa), filled(0xbb)...), make([]byte, pageSize)...)
	if err := os.WriteFile(basePath, base, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(basePath, 4*pageSize); err != nil {
		t.Fatal(err)
	}
	device := []byte{secFull, 0, 0, 0, 9, 'd', 'e', 'v', 1, 2, 3, 0x08}

	for _, tc := range []struct {
		name   string
		caps   []string
		build  func(w *streamWriter)
		expect func(w *streamWriter)
	}{
		{
			name: "unchanged pages go, changed pages stay",
			build: func(w *streamWriter) {
				w.ramStart(2, false, "mem", uint64(4*pageSize), "rom", uint64(2*pageSize))
				w.section(secPart, 2, "")
				w.page("mem", 0, filled(0xaa))       // as the base: out
				w.page("", 1*pageSize, filled(0xcc)) // changed: kept, names its block
				w.page("", 2*pageSize, []byte{0})    // zero over zeroes: out
				w.page("", 3*pageSize, []byte{0})    // zero over a hole: out
				w.page("rom", 0, filled(0xaa))       // another block: kept
				w.page("mem", 0*pageSize, []byte{0}) // zero over data: kept
				w.eos()
				w.footer(2)
				w.section(secEnd, 2, "")
				w.page("", 1*pageSize, filled(0xbb)) // back to the base's, after a kept record: kept
				w.page("rom", pageSize, filled(1))
				w.eos()
				w.footer(2)
				w.Write(device)
			},
			expect: func(w *streamWriter) {
				w.ramStart(2, false, "mem", uint64(4*pageSize), "rom", uint64(2*pageSize))
				w.section(secPart, 2, "")
				w.page("mem", 1*pageSize, filled(0xcc))
				w.page("rom", 0, filled(0xaa))
				w.page("mem", 0, []byte{0})
				w.eos()
				w.footer(2)
				w.section(secEnd, 2, "")
				w.page("", 1*pageSize, filled(0xbb))
				w.page("rom", pageSize, filled(1))
				w.eos()
				w.footer(2)
				w.Write(device)
			},
		},
		{
			name: "x-ignore-shared adds an address to each block",
			caps: []string{"x-ignore-shared"},
			build: func(w *streamWriter) {
				w.ramStart(3, true, "mem", uint64(4*pageSize))
				w.section(secEnd, 3, "")
				w.page("mem", 0, filled(0xaa))
				w.eos()
				w.footer(3)
				w.Write(device)
			},
			expect: func(w *streamWriter) {
				w.ramStart(3, true, "mem", uint64(4*pageSize))
				w.section(secEnd, 3, "")
				w.eos()
				w.footer(3)
				w.Write(device)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in, want streamWriter
			in.header(tc.caps...)
			want.header(tc.caps...)
			tc.build(&in)
			tc.expect(&want)
			var out bytes.Buffer
			if err := filterStream(t.Context(), &out, bytes.NewReader(in.Bytes()), basePath, "mem"); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want.Bytes()) {
				t.Errorf("filtered stream:\n%x\nwant:\n%x", out.Bytes(), want.Bytes())
			}
		})
	}
}

// TestFilterStreamRefusesUnknownLayouts checks that a stream laid out some
// other way is refused with errStreamLayout, and that filterSaved then
// keeps it whole.
func TestFilterStreamRefusesUnknownLayouts(t *testing.T) {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base")
	if err := os.WriteFile(basePath, filled(0xaa), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		build func(w *streamWriter)
	}{
		{"another handler first", func(w *streamWriter) {
			w.header()
			w.section(secStart, 1, "block")
		}},
		{"compressed pages", func(w *streamWriter) {
			w.header()
			w.section(secStart, 2, "ram")
			w.be64(0x100)
		}},
		{"unknown subsection", func(w *streamWriter) {
			w.header()
			w.WriteByte(secSub)
			w.str("configuration/something-new")
			w.be32(1)
		}},
		{"not a stream", func(w *streamWriter) { w.WriteString("not a migration stream") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in streamWriter
			tc.build(&in)
			in.be64(0) // something to read past the point of refusal
			err := filterStream(t.Context(), &bytes.Buffer{}, bytes.NewReader(in.Bytes()), basePath, "mem")
			if !errors.Is(err, errStreamLayout) {
				t.Fatalf("filter: %v, want errStreamLayout", err)
			}
			snap := t.TempDir()
			full, state := filepath.Join(snap, saveStream), filepath.Join(snap, vmstateFile)
			if err := os.WriteFile(full, in.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			kept, err := filterSaved(t.Context(), state, full, basePath)
			if err != nil || !errors.Is(kept, errStreamLayout) {
				t.Fatalf("filterSaved: kept %v, err %v", kept, err)
			}
			if b, err := os.ReadFile(state); err != nil || !bytes.Equal(b, in.Bytes()) {
				t.Errorf("stream not kept whole: %v", err)
			}
			if _, err := os.Stat(full); !os.IsNotExist(err) {
				t.Errorf("unfiltered stream left behind: %v", err)
			}
		})
	}
}
