//go:build linux

package qemu

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// QEMU 7.2 opens a memory-backend-file read-write whatever it maps, and a
// QEMU that holds a writable descriptor of a template's saved memory could
// write it: a guest that escaped into its QEMU would then reach into every
// sandbox restored from that template afterwards. So a restored machine's
// RAM is never the saved file itself but a sealed copy of it: a memfd
// sealed against writes, growth and shrinking (and against new seals).
// QEMU opens it read-write through /proc/self/fd and maps it privately
// (allowed on a write-sealed memfd since Linux 6.7); every write(),
// fallocate() or shared writable mapping of it fails with EPERM, whoever
// tries. One copy per saved file serves every machine that maps it, so the
// template's clean pages still exist once; it goes when the last of them
// exits.
type sealedRAM struct {
	mu    sync.Mutex
	files map[sealedKey]*sealedFile
}

// sealedKey names a saved memory file by inode: the hard links of one
// snapshot's memory are one file.
type sealedKey struct{ dev, ino uint64 }

type sealedFile struct {
	f    *os.File
	refs int
}

// acquire returns a sealed copy of the memory file at path (a descriptor
// of its own, for the caller to hand over and close) and the release a
// machine mapping it calls when it exits.
func (s *sealedRAM) acquire(ctx context.Context, path string) (*os.File, func(), error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, nil, fmt.Errorf("stat saved guest memory: %w", err)
	}
	key := sealedKey{dev: uint64(st.Dev), ino: st.Ino}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[sealedKey]*sealedFile{}
	}
	sf := s.files[key]
	if sf == nil {
		f, err := sealCopy(ctx, path)
		if err != nil {
			return nil, nil, err
		}
		sf = &sealedFile{f: f}
		s.files[key] = sf
	}
	fd, err := unix.Dup(int(sf.f.Fd()))
	if err != nil {
		s.dropLocked(key, sf)
		return nil, nil, fmt.Errorf("dup sealed guest memory: %w", err)
	}
	unix.CloseOnExec(fd)
	sf.refs++
	var once sync.Once
	release := func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			sf.refs--
			s.dropLocked(key, sf)
		})
	}
	return os.NewFile(uintptr(fd), "sealed:"+path), release, nil
}

// dropLocked closes a copy nobody maps any more.
func (s *sealedRAM) dropLocked(key sealedKey, sf *sealedFile) {
	if sf.refs > 0 {
		return
	}
	sf.f.Close()
	if s.files[key] == sf {
		delete(s.files, key)
	}
}

// held says how many sealed copies are open (for tests).
func (s *sealedRAM) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files)
}

// sealedName names a sealed copy's memfd: /proc/PID/maps shows its
// mappings as "/memfd:ember-guest-ram (deleted)".
const sealedName = "ember-guest-ram"

// sealSeals are the seals of a sealed copy: no write, no resize, no change
// of seals.
const sealSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// sealCopy copies the file at path into a new memfd, leaving its holes and
// zero pages holes (a guest's untouched RAM takes no memory in the copy
// either), and seals it.
func sealCopy(ctx context.Context, path string) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open saved guest memory: %w", err)
	}
	defer src.Close()
	size, err := src.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("size saved guest memory: %w", err)
	}
	fd, err := unix.MemfdCreate(sealedName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("create sealed guest memory: %w", err)
	}
	dst := os.NewFile(uintptr(fd), "memfd:"+sealedName)
	fail := func(err error) (*os.File, error) {
		dst.Close()
		return nil, err
	}
	if err := dst.Truncate(size); err != nil {
		return fail(fmt.Errorf("size sealed guest memory: %w", err))
	}
	if err := copyNonZero(ctx, dst, src, size); err != nil {
		return fail(fmt.Errorf("copy saved guest memory: %w", err))
	}
	if _, err := unix.FcntlInt(dst.Fd(), unix.F_ADD_SEALS, sealSeals); err != nil {
		return fail(fmt.Errorf("seal guest memory: %w", err))
	}
	return dst, nil
}
