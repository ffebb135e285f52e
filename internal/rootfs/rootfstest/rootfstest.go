//go:build linux

// Package rootfstest is the conformance suite every rootfs.Backend passes.
// It builds its own small sparse base image with known bytes at known
// offsets (no mounts, no root) and checks what a sandbox relies on: a new
// disk reads as the base, writes stay in their disk, disks grow on request,
// usage counts allocated blocks, and failures and removal leave nothing.
//
// Disks are read and written by format: raw ones directly, qcow2 ones with
// qemu-io and qemu-img.
package rootfstest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/rootfs"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/testutil"
)

// BaseSize is the suite's base image size.
const BaseSize = 64 << 20

// region is a stretch of the base image with known content.
type region struct{ off, len int64 }

// regions hold data in the base image; everything else is a hole.
var regions = []region{
	{0, 4096},
	{1 << 20, 64 << 10},
	{17<<20 + 4096, 8192},
	{BaseSize - 64<<10, 64 << 10},
}

// hole is a stretch the base image leaves unwritten.
var hole = region{40 << 20, 64 << 10}

// content is the base image's bytes for r: a sequence that shows a
// misplaced or truncated copy.
func content(r region) []byte {
	b := make([]byte, r.len)
	for i := range b {
		b[i] = byte((r.off + int64(i)) % 251)
	}
	return b
}

// New is how the suite gets the backend under test.
type New func(t testing.TB) rootfs.Backend

// Run runs the conformance suite against the backend newBackend returns.
func Run(t *testing.T, newBackend New) {
	base := makeBase(t, t.TempDir(), BaseSize, regions)
	sum := testutil.Digest(t, base)
	t.Cleanup(func() {
		if testutil.Digest(t, base) != sum {
			t.Error("the base image changed")
		}
	})

	t.Run("Prepare", func(t *testing.T) {
		b, dir := newBackend(t), t.TempDir()
		d := prepare(t, b, "sb-prepare", dir, base, 0)
		if size := virtualSize(t, d); size != BaseSize {
			t.Errorf("virtual size %d, want %d", size, BaseSize)
		}
		img := readable(t, d)
		for _, r := range regions {
			expect(t, img, r, content(r))
		}
		expect(t, img, hole, make([]byte, hole.len))
	})

	t.Run("Isolation", func(t *testing.T) {
		b := newBackend(t)
		dirA, dirB := t.TempDir(), t.TempDir()
		a := prepare(t, b, "sb-a", dirA, base, 0)
		other := prepare(t, b, "sb-b", dirB, base, 0)
		for _, r := range []region{regions[1], hole} {
			write(t, a, r.off, r.len, 0xab)
		}
		imgA, imgB, imgBase := readable(t, a), readable(t, other), base
		for _, r := range []region{regions[1], hole} {
			expect(t, imgA, r, bytes.Repeat([]byte{0xab}, int(r.len)))
			want := content(r)
			if r == hole {
				want = make([]byte, r.len)
			}
			expect(t, imgB, r, want)
			expect(t, imgBase, r, want)
		}
		// Untouched data is still the base's.
		expect(t, imgA, regions[2], content(regions[2]))
	})

	t.Run("Grow", func(t *testing.T) {
		b := newBackend(t)
		// Disk ids are unique on a host, as sandbox ids are.
		for i, size := range []int64{BaseSize, BaseSize + 32<<20} {
			dir := t.TempDir()
			d := prepare(t, b, fmt.Sprintf("sb-grow%d", i), dir, base, size)
			if got := virtualSize(t, d); got != size {
				t.Errorf("virtual size %d, want %d", got, size)
			}
			img := readable(t, d)
			last := regions[len(regions)-1]
			expect(t, img, last, content(last))
			if size > BaseSize {
				tail := region{size - 64<<10, 64 << 10}
				expect(t, img, tail, make([]byte, tail.len))
				write(t, d, tail.off, tail.len, 0xcd)
				expect(t, readable(t, d), tail, bytes.Repeat([]byte{0xcd}, int(tail.len)))
			}
		}
	})

	t.Run("FailuresLeaveNothing", func(t *testing.T) {
		b := newBackend(t)
		cancelled, cancel := context.WithCancel(t.Context())
		cancel()
		for _, tc := range []struct {
			name   string
			ctx    context.Context
			base   string
			size   int64
			target error
		}{
			{"smaller than base", t.Context(), base, BaseSize - 1<<20, rootfs.ErrTooSmall},
			{"missing base", t.Context(), base + ".missing", 0, nil},
			{"cancelled", cancelled, base, 0, context.Canceled},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dir := t.TempDir()
				d, err := b.Prepare(tc.ctx, "sb-fail", dir, tc.base, tc.size)
				if err == nil {
					t.Fatalf("prepare gave %+v, want an error", d)
				}
				if tc.target != nil && !errors.Is(err, tc.target) {
					t.Errorf("error %v, want %v", err, tc.target)
				}
				expectEmpty(t, dir)
			})
		}
	})

	t.Run("NoOverwrite", func(t *testing.T) {
		b, dir := newBackend(t), t.TempDir()
		d := prepare(t, b, "sb-twice", dir, base, 0)
		write(t, d, hole.off, hole.len, 0xee)
		if _, err := b.Prepare(t.Context(), "sb-twice", dir, base, 0); err == nil {
			t.Fatal("second prepare into the same directory succeeded")
		}
		expect(t, readable(t, d), hole, bytes.Repeat([]byte{0xee}, int(hole.len)))
	})

	t.Run("Usage", func(t *testing.T) {
		b, dir := newBackend(t), t.TempDir()
		ctx := t.Context()
		d := prepare(t, b, "sb-usage", dir, base, 0)
		fresh, err := b.Usage(ctx, "sb-usage", dir)
		if err != nil {
			t.Fatal(err)
		}
		if fresh <= 0 || fresh > BaseSize/8 {
			t.Errorf("fresh disk uses %d bytes, want 0 < usage <= %d (apparent size %d)", fresh, BaseSize/8, BaseSize)
		}
		write(t, d, hole.off, 1<<20, 0x5a)
		used, err := b.Usage(ctx, "sb-usage", dir)
		if err != nil {
			t.Fatal(err)
		}
		if used-fresh < 1<<20 {
			t.Errorf("usage grew by %d after writing 1 MiB into a hole, want >= 1 MiB", used-fresh)
		}
	})

	t.Run("DetachAttach", func(t *testing.T) {
		b, dir := newBackend(t), t.TempDir()
		ctx := t.Context()
		size := int64(BaseSize + 16<<20)
		d := prepare(t, b, "sb-pause", dir, base, size)
		write(t, d, hole.off, hole.len, 0xa1)
		for i := range 2 {
			if err := b.Detach(ctx, "sb-pause", dir); err != nil {
				t.Fatalf("detach #%d: %v", i+1, err)
			}
		}
		if used, err := b.Usage(ctx, "sb-pause", dir); err != nil || used < hole.len {
			t.Errorf("usage of a detached disk: %d, %v; want >= %d", used, err, hole.len)
		}
		var again rootfs.Disk
		for i := range 2 {
			a, err := b.Attach(ctx, "sb-pause", dir)
			if err != nil {
				t.Fatalf("attach #%d: %v", i+1, err)
			}
			if i > 0 && a != again {
				t.Errorf("attach of an attached disk gave %+v, want %+v", a, again)
			}
			again = a
		}
		if got := virtualSize(t, again); got != size {
			t.Errorf("virtual size after attach %d, want %d", got, size)
		}
		img := readable(t, again)
		expect(t, img, hole, bytes.Repeat([]byte{0xa1}, int(hole.len)))
		for _, r := range regions {
			expect(t, img, r, content(r))
		}
		expect(t, base, hole, make([]byte, hole.len))
		// The re-attached disk takes writes.
		write(t, again, regions[0].off, 512, 0xa2)
		expect(t, readable(t, again), region{0, 512}, bytes.Repeat([]byte{0xa2}, 512))

		missing := t.TempDir()
		if err := b.Detach(ctx, "sb-none", missing); !errors.Is(err, rootfs.ErrNotFound) {
			t.Errorf("detach of a disk never made: %v, want ErrNotFound", err)
		}
		if _, err := b.Attach(ctx, "sb-none", missing); !errors.Is(err, rootfs.ErrNotFound) {
			t.Errorf("attach of a disk never made: %v, want ErrNotFound", err)
		}
	})

	t.Run("Flatten", func(t *testing.T) {
		b, dir, out := newBackend(t), t.TempDir(), t.TempDir()
		ctx := t.Context()
		size := int64(BaseSize + 16<<20)
		d := prepare(t, b, "sb-flat", dir, base, size)
		written := region{hole.off, 256 << 10}
		write(t, d, written.off, written.len, 0x77)
		attached, detached := filepath.Join(out, "attached.raw"), filepath.Join(out, "detached.raw")
		if err := b.Flatten(ctx, "sb-flat", dir, attached); err != nil {
			t.Fatalf("flatten an attached disk: %v", err)
		}
		if err := b.Detach(ctx, "sb-flat", dir); err != nil {
			t.Fatal(err)
		}
		if err := b.Flatten(ctx, "sb-flat", dir, detached); err != nil {
			t.Fatalf("flatten a detached disk: %v", err)
		}
		if err := b.Flatten(ctx, "sb-flat", dir, detached); !errors.Is(err, fs.ErrExist) {
			t.Errorf("flatten onto an existing image: %v, want ErrExist", err)
		}
		if _, err := b.Attach(ctx, "sb-flat", dir); err != nil {
			t.Fatalf("attach after flatten: %v", err)
		}
		if err := b.Remove(ctx, "sb-flat", dir); err != nil {
			t.Fatal(err)
		}
		// The images outlive the disk and are bases in their own right.
		for i, img := range []string{attached, detached} {
			checkFlat(t, img, size, written)
			child := prepare(t, b, fmt.Sprintf("sb-child%d", i), t.TempDir(), img, 0)
			expect(t, readable(t, child), written, bytes.Repeat([]byte{0x77}, int(written.len)))
		}
		if err := b.Flatten(ctx, "sb-none", t.TempDir(), filepath.Join(out, "none.raw")); !errors.Is(err, rootfs.ErrNotFound) {
			t.Errorf("flatten of a disk never made: %v, want ErrNotFound", err)
		}
		expectFiles(t, out, "attached.raw", "detached.raw")
	})

	t.Run("RemoveDetached", func(t *testing.T) {
		b, dir := newBackend(t), t.TempDir()
		ctx := t.Context()
		prepare(t, b, "sb-gone", dir, base, 0)
		if err := b.Detach(ctx, "sb-gone", dir); err != nil {
			t.Fatal(err)
		}
		if err := b.Remove(ctx, "sb-gone", dir); err != nil {
			t.Fatal(err)
		}
		expectEmpty(t, dir)
	})

	t.Run("Remove", func(t *testing.T) {
		b, dir := newBackend(t), t.TempDir()
		ctx := t.Context()
		prepare(t, b, "sb-remove", dir, base, 0)
		for i := range 2 {
			if err := b.Remove(ctx, "sb-remove", dir); err != nil {
				t.Fatalf("remove #%d: %v", i+1, err)
			}
		}
		expectEmpty(t, dir)
		if _, err := b.Usage(ctx, "sb-remove", dir); !errors.Is(err, rootfs.ErrNotFound) {
			t.Errorf("usage of a removed disk: %v, want ErrNotFound", err)
		}
		if err := b.Remove(ctx, "sb-never", t.TempDir()); err != nil {
			t.Errorf("remove of a disk never made: %v", err)
		}
	})
}

// Benchmark measures Prepare (and, untimed, Remove) over a base image of
// size bytes of which dataFraction is written data and the rest holes.
func Benchmark(b *testing.B, newBackend New, size int64, dataFraction float64) {
	var rs []region
	const step = 4 << 20
	n := int64(float64(step) * dataFraction)
	for off := int64(0); off < size; off += step {
		rs = append(rs, region{off, n})
	}
	base := makeBase(b, b.TempDir(), size, rs)
	be := newBackend(b)
	dir := b.TempDir()
	ctx := b.Context()
	for b.Loop() {
		if _, err := be.Prepare(ctx, "sb-bench", dir, base, 0); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := be.Remove(ctx, "sb-bench", dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// makeBase writes a sparse image of size bytes holding content at rs.
func makeBase(t testing.TB, dir string, size int64, rs []region) string {
	t.Helper()
	p := filepath.Join(dir, "base.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if _, err := f.WriteAt(content(r), r.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// A base image is read-only to everything but its maker.
	if err := os.Chmod(p, 0o444); err != nil {
		t.Fatal(err)
	}
	return p
}

// prepare makes a disk and removes it at the end of the test.
func prepare(t testing.TB, b rootfs.Backend, id, dir, base string, size int64) rootfs.Disk {
	t.Helper()
	begin := time.Now()
	d, err := b.Prepare(t.Context(), id, dir, base, size)
	if err != nil {
		t.Fatalf("prepare %s: %v", id, err)
	}
	t.Logf("prepare %s (%s, %s): %s", id, b.Name(), d.Format, time.Since(begin))
	t.Cleanup(func() {
		if err := b.Remove(context.Background(), id, dir); err != nil {
			t.Errorf("remove %s: %v", id, err)
		}
	})
	if d.Format == "qcow2" {
		testutil.RequireTool(t, "qemu-io")
	}
	return d
}

// virtualSize is the disk's size as a guest sees it.
func virtualSize(t testing.TB, d rootfs.Disk) int64 {
	t.Helper()
	switch d.Format {
	case "raw":
		f, err := os.Open(d.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		n, err := f.Seek(0, io.SeekEnd) // works for block devices too
		if err != nil {
			t.Fatal(err)
		}
		return n
	case "qcow2":
		out, err := runner.Run(t.Context(), "qemu-img", "info", "--output=json", "-f", "qcow2", d.Path)
		if err != nil {
			t.Fatal(err)
		}
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatal(err)
		}
		return info.VirtualSize
	}
	t.Fatalf("disk format %q unknown to the suite", d.Format)
	return 0
}

// readable returns a raw file with the disk's content as a guest sees it:
// the disk itself when it is raw, a converted copy otherwise.
func readable(t testing.TB, d rootfs.Disk) string {
	t.Helper()
	switch d.Format {
	case "raw":
		return d.Path
	case "qcow2":
		p := filepath.Join(t.TempDir(), "export.raw")
		if _, err := runner.Run(t.Context(), "qemu-img", "convert", "-f", "qcow2", "-O", "raw", d.Path, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Fatalf("disk format %q unknown to the suite", d.Format)
	return ""
}

// write fills n bytes at off with the byte b, as a guest would.
func write(t testing.TB, d rootfs.Disk, off, n int64, b byte) {
	t.Helper()
	switch d.Format {
	case "raw":
		f, err := os.OpenFile(d.Path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, int(n)), off); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	case "qcow2":
		cmd := fmt.Sprintf("write -P %d %d %d", b, off, n)
		out, err := runner.Run(t.Context(), "qemu-io", "-f", "qcow2", "-c", cmd, d.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(out, []byte("wrote "+strconv.FormatInt(n, 10))) {
			t.Fatalf("qemu-io %q: %s", cmd, out)
		}
	default:
		t.Fatalf("disk format %q unknown to the suite", d.Format)
	}
}

// expect checks the bytes of the raw image at path in r.
func expect(t testing.TB, path string, r region, want []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, r.len)
	if _, err := f.ReadAt(got, r.off); err != nil {
		t.Fatalf("read %s at %d: %v", path, r.off, err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Errorf("%s at %d+%d: byte %d is %#x, want %#x", filepath.Base(path), r.off, r.len, i, got[i], want[i])
	}
}

// checkFlat checks a flattened image: a sparse raw file of size bytes
// holding the base's content, 0x77 in written and zeros elsewhere.
func checkFlat(t testing.TB, img string, size int64, written region) {
	t.Helper()
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Size() != size {
		t.Errorf("flattened image %s: mode %v size %d, want a regular file of %d", img, st.Mode(), st.Size(), size)
	}
	for _, r := range regions {
		expect(t, img, r, content(r))
	}
	expect(t, img, written, bytes.Repeat([]byte{0x77}, int(written.len)))
	zeros := region{30 << 20, 1 << 20}
	expect(t, img, zeros, make([]byte, zeros.len))
	if used := allocated(t, img); used > size/4 {
		t.Errorf("flattened image %s allocates %d of %d bytes, want it sparse", img, used, size)
	}
}

// allocated is the bytes path's blocks take.
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// expectEmpty checks that the backend left no file in dir.
func expectEmpty(t testing.TB, dir string) {
	t.Helper()
	expectFiles(t, dir)
}

// expectFiles checks that dir holds exactly the named files.
func expectFiles(t testing.TB, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, want) {
		t.Errorf("directory %s holds %v, want %v", dir, names, want)
	}
}
