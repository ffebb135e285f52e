package template

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the note, in the "Xen"
// namespace, holding the 32-bit PVH entry point QEMU microvm and Firecracker
// jump to when they boot an uncompressed vmlinux.
const xenElfnotePhys32Entry = 18

// ErrInvalidKernel is returned for a kernel image ember cannot boot: not an
// uncompressed x86-64 ELF vmlinux with a PVH entry point.
var ErrInvalidKernel = errors.New("invalid kernel")

// errNoPVH is returned for a kernel without a PVH entry point (CONFIG_PVH off).
var errNoPVH = errors.New("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): kernel built without CONFIG_PVH")

// CheckKernel returns nil when path is a kernel ember can boot: an x86-64
// ELF image with a PVH entry note. Otherwise the error wraps
// ErrInvalidKernel and says what is wrong.
func CheckKernel(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("kernel %q: %w: %w", path, ErrInvalidKernel, err)
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		what := "not an ELF file"
		hdr := make([]byte, 0x206)
		if _, err := f.ReadAt(hdr, 0); err == nil && bytes.Equal(hdr[0x202:], []byte("HdrS")) {
			what = "a compressed bzImage, not the uncompressed vmlinux (take vmlinux from the kernel build tree, or unpack it with the kernel's scripts/extract-vmlinux)"
		}
		return fmt.Errorf("kernel %q: %w: %s", path, ErrInvalidKernel, what)
	}
	defer ef.Close()
	if ef.Machine != elf.EM_X86_64 {
		return fmt.Errorf("kernel %q: %w: it is for %s, not x86-64", path, ErrInvalidKernel, ef.Machine)
	}
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Errorf("kernel %q: %w: read notes: %w", path, ErrInvalidKernel, err)
		}
		if hasNote(data, ef.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return nil
		}
	}
	return fmt.Errorf("kernel %q: %w: %w", path, ErrInvalidKernel, errNoPVH)
}

// hasNote walks a PT_NOTE segment (namesz, descsz, type, then name and desc,
// each padded to 4 bytes) looking for a note of the given owner and type.
func hasNote(data []byte, order binary.ByteOrder, owner string, typ uint32) bool {
	align := func(n uint32) uint32 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, t := order.Uint32(data), order.Uint32(data[4:]), order.Uint32(data[8:])
		data = data[12:]
		n, d := align(namesz), align(descsz)
		if uint64(n)+uint64(d) > uint64(len(data)) {
			return false
		}
		name := string(data[:namesz])
		if len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1]
		}
		if name == owner && t == typ {
			return true
		}
		data = data[n+d:]
	}
	return false
}
