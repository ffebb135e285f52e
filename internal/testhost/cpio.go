package testhost

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// archive is an initramfs under construction: paths inside it (no leading
// slash) mapped to entries, written as a newc cpio archive.
type archive map[string]entry

// entry is one file, directory or symlink in an archive.
type entry struct {
	mode   uint32 // type and permission bits as cpio wants them
	data   []byte // content, or a symlink's target
	source string // a host file whose content to use instead of data
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
)

// dirs adds p's parent directories.
func (a archive) dirs(p string) {
	for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
		if _, ok := a[d]; !ok {
			a[d] = entry{mode: modeDir | 0o755}
		}
	}
}

// file adds a file with the given content.
func (a archive) file(p string, perm uint32, data []byte) {
	p = strings.TrimPrefix(p, "/")
	a.dirs(p)
	a[p] = entry{mode: modeFile | perm, data: data}
}

// copyOf adds a file whose content is the host file src.
func (a archive) copyOf(p string, perm uint32, src string) {
	p = strings.TrimPrefix(p, "/")
	a.dirs(p)
	a[p] = entry{mode: modeFile | perm, source: src}
}

// symlink adds a symbolic link.
func (a archive) symlink(p, target string) {
	p = strings.TrimPrefix(p, "/")
	a.dirs(p)
	a[p] = entry{mode: modeLink | 0o777, data: []byte(target)}
}

// write writes the archive in newc format, parents before children, using
// read for host files.
func (a archive) write(w io.Writer, read func(string) ([]byte, error)) error {
	names := make([]string, 0, len(a))
	for n := range a {
		names = append(names, n)
	}
	sort.Strings(names) // a parent sorts before its children
	ino := uint32(1)
	for _, n := range names {
		e := a[n]
		data := e.data
		if e.source != "" {
			var err error
			if data, err = read(e.source); err != nil {
				return fmt.Errorf("initramfs %s: %w", n, err)
			}
		}
		if err := header(w, ino, e.mode, n, len(data)); err != nil {
			return err
		}
		if err := pad(w, data); err != nil {
			return err
		}
		ino++
	}
	return header(w, 0, 0, "TRAILER!!!", 0)
}

// header writes a newc header and the padded name.
func header(w io.Writer, ino, mode uint32, name string, size int) error {
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	_, err := fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	if err != nil {
		return err
	}
	// The header is 110 bytes; name and data are each padded to 4.
	return padFrom(w, append([]byte(name), 0), 110)
}

// pad writes b padded with zeros to a multiple of 4 bytes.
func pad(w io.Writer, b []byte) error { return padFrom(w, b, 0) }

// padFrom writes b padded so that written+len(b) ends on 4 bytes.
func padFrom(w io.Writer, b []byte, written int) error {
	if _, err := w.Write(b); err != nil {
		return err
	}
	if n := (4 - (written+len(b))%4) % 4; n > 0 {
		_, err := w.Write(make([]byte, n))
		return err
	}
	return nil
}
