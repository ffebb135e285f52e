//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/vmm/vmmproc"
)

// A restored machine's guest RAM maps the snapshot's memory file privately
// (share=off) instead of a copy of it: every machine restored from one
// snapshot shares the file's clean pages in the host's page cache, and only
// the pages a guest writes are its own (anonymous, copy-on-write). The file
// is never written: MAP_PRIVATE keeps the guest's writes away from it.
//
// Saving such a machine cannot leave RAM out of the migration stream (QEMU's
// x-ignore-shared skips shared RAM only), so QEMU writes all of it, and the
// driver then drops from the stream every page that still equals the
// file's (see filter.go): what remains is the device state and the pages
// the guest changed. The snapshot keeps a hard link to the file it was
// mapped over (same inode, same page cache), and a restore of it maps that
// file privately again and loads the stream over it.

// ramLinkFile is the name, in a machine's directory, of the link to the
// saved memory its RAM maps privately. A machine confined to its directory
// opens it there; the link keeps the file (and its sharing) for as long as
// the machine runs, whatever happens to the snapshot it came from (a
// paused sandbox's saved state is deleted once it resumes).
const ramLinkFile = "guest-ram"

func ramLinkPath(dir string) string { return filepath.Join(dir, ramLinkFile) }

// privateRAM links base, a saved machine's memory file, into dir and
// returns the guest RAM that maps it privately. Where a link is impossible
// (another file system) the machine maps base itself, which must then
// outlive it.
func privateRAM(dir, base string) (guestRAM, error) {
	if _, err := os.Stat(base); err != nil {
		return guestRAM{}, fmt.Errorf("saved guest memory: %w", err)
	}
	link := ramLinkPath(dir)
	if err := os.Link(base, link); err != nil {
		return guestRAM{Path: base, Private: true}, nil
	}
	return guestRAM{Path: link, Private: true}, nil
}

// keepBase puts the memory file a private machine's RAM maps into a
// snapshot as dst: a hard link (the same inode, so restores of the snapshot
// share its pages with this machine's), or a sparse copy across file
// systems.
func keepBase(ctx context.Context, dst, base string) error {
	if err := os.Link(base, dst); err == nil {
		return nil
	}
	return copyMemory(ctx, dst, base)
}

// handRAM hands QEMU a sealed copy of the saved memory file a restored
// machine's RAM maps privately (sealed.go): QEMU opens it again through
// /proc/self/fd (confined to a user of its own, it could not reach the
// file by its path) and can map it, but neither it nor anyone else can
// write it. The release goes with the machine.
func (d *Driver) handRAM(ctx context.Context, files *vmmproc.Handed, path string) (int, func(), error) {
	f, release, err := d.sealed.acquire(ctx, path)
	if err != nil {
		return -1, nil, fmt.Errorf("seal saved guest memory for qemu: %w", err)
	}
	return files.Add(f), release, nil
}

// attachedRAM is ramFromArgs for the running QEMU pid of the machine in
// dir: RAM handed over as a descriptor is the file that descriptor holds
// open when that is a file (the saved memory itself, where no link could be
// made), the link in dir otherwise (a sealed copy is a memfd, which has no
// path: the link is the same memory).
func attachedRAM(pid int, dir string, args []string) guestRAM {
	ram := ramFromArgs(args)
	if fd, ok := strings.CutPrefix(ram.Path, "/proc/self/fd/"); ok {
		ram.Path = ramLinkPath(dir)
		if p, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd)); err == nil && filepath.IsAbs(p) && !strings.HasPrefix(p, "/memfd:") {
			ram.Path = p
		}
	}
	return ram
}

// ramFromArgs reads where guest RAM lives from a QEMU command line this
// driver built (see ramObject), for a machine it attaches to.
func ramFromArgs(args []string) guestRAM {
	for i, a := range args {
		if a != "-object" || i+1 >= len(args) || !strings.HasPrefix(args[i+1], "memory-backend-file,") {
			continue
		}
		if id, _ := optValue(args[i+1], "id"); id != memoryBackend {
			continue
		}
		path, _ := optValue(args[i+1], "mem-path")
		share, _ := optValue(args[i+1], "share")
		return guestRAM{Path: path, Private: share == "off"}
	}
	return guestRAM{}
}

// saveStream is where QEMU writes the whole stream of a private machine
// before it is filtered into vmstateFile.
const saveStream = vmstateFile + ".full"

// filterSaved replaces the full stream QEMU wrote at full with one into
// state that leaves out every page of guest RAM equal to base's, and
// removes full. A stream the filter cannot read (another QEMU's layout)
// is kept whole, which restores the same, only bigger; the reason is
// returned as kept.
func filterSaved(ctx context.Context, state, full, base string) (kept error, err error) {
	in, err := os.Open(full)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	out, err := os.OpenFile(state, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	ferr := filterStream(ctx, out, in, base, memoryBackend)
	if cerr := out.Close(); ferr == nil && cerr != nil {
		return nil, cerr
	}
	if errors.Is(ferr, errStreamLayout) {
		if err := os.Rename(full, state); err != nil {
			return nil, err
		}
		return ferr, nil
	}
	if ferr != nil {
		os.Remove(state)
		return nil, ferr
	}
	if err := os.Remove(full); err != nil {
		return nil, err
	}
	return nil, nil
}
