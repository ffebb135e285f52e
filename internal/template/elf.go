package template

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY: the note, in the "Xen"
// namespace, holding the 32-bit PVH entry point QEMU microvm and Firecracker
// jump to when they boot an uncompressed vmlinux.
const xenElfnotePhys32Entry = 18

// errNoPVH is returned for a kernel without a PVH entry point (CONFIG_PVH off).
var errNoPVH = errors.New("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): kernel built without CONFIG_PVH")

// checkPVH returns nil when path is an x86-64 ELF kernel with a PVH entry note.
func checkPVH(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("open kernel %q: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("kernel %q is for %s, not x86-64", path, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Errorf("read notes of %q: %w", path, err)
		}
		if hasNote(data, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return nil
		}
	}
	return fmt.Errorf("kernel %q: %w", path, errNoPVH)
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
