//go:build linux

package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// A sealed copy holds the saved memory (holes kept holes), is shared by
// every machine mapping one file, can be mapped privately and written
// there, refuses every write to itself, and goes with its last user.
func TestSealedRAM(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "memory")
	const page = 4096
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("ember"), page/5+1)[:page]
	// Data at the start and at 1 MiB, a hole between, 2 MiB in all.
	for _, off := range []int64{0, 1 << 20} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(2 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	link := filepath.Join(dir, "guest-ram")
	if err := os.Link(path, link); err != nil {
		t.Fatal(err)
	}

	var s sealedRAM
	ctx := context.Background()
	a, relA, err := s.acquire(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	b, relB, err := s.acquire(ctx, link) // the same inode
	if err != nil {
		t.Fatal(err)
	}
	if s.held() != 1 {
		t.Fatalf("%d sealed copies for one file", s.held())
	}
	want, _ := os.ReadFile(path)
	got := make([]byte, len(want))
	if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("sealed copy differs from the file (%v)", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &st); err != nil || st.Blocks*512 > 64<<10 {
		t.Fatalf("sealed copy allocates %d bytes for 8 KiB of data (%v)", st.Blocks*512, err)
	}

	// What QEMU does: open it again read-write and map it privately.
	q, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(a.Fd())), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("reopen read-write: %v", err)
	}
	defer q.Close()
	m, err := unix.Mmap(int(q.Fd()), 0, 2<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("private mapping: %v", err)
	}
	copy(m, "guest writes")
	unix.Munmap(m)
	for name, try := range map[string]func() error{
		"write":    func() error { _, err := q.WriteAt([]byte("x"), 0); return err },
		"truncate": func() error { return q.Truncate(0) },
		"punch a hole": func() error {
			return unix.Fallocate(int(q.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, page)
		},
		"shared mapping": func() error { _, err := unix.Mmap(int(q.Fd()), 0, page, unix.PROT_WRITE, unix.MAP_SHARED); return err },
	} {
		if err := try(); !errors.Is(err, unix.EPERM) {
			t.Errorf("%s: %v, want EPERM", name, err)
		}
	}
	if _, err := b.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("sealed copy changed (%v)", err)
	}

	a.Close()
	b.Close()
	relA()
	relA() // once only
	if s.held() != 1 {
		t.Fatal("copy closed while a machine still maps it")
	}
	relB()
	if s.held() != 0 {
		t.Fatal("copy kept after its last machine")
	}
}
