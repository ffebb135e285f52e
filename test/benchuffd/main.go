//go:build linux

// Command benchuffd measures the userfaultfd page server (internal/memory/uffd)
// against the baseline it has to beat: the same memory file read with
// read(2) into freshly mapped memory, in the same run, so both sides pay
// first-touch faults. The faulting side runs in a child process, as
// Firecracker does, and touches guest memory from user mode. It prints
// `BENCH <name> <value> <unit>` lines.
//
// Run it as root: go run ./test/benchuffd
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/memory/uffd"
)

const (
	mib      = 1 << 20
	pageSize = 4096
)

func main() {
	child := flag.String("child", "", "internal: run as the faulting process (read-seq, read-random, uffd-seq, uffd-random)")
	path := flag.String("file", "", "internal: memory file (read-*) or page server socket (uffd-*)")
	size := flag.Int("size", 1024*mib, "memory file size in bytes")
	ps := flag.Int("page-size", pageSize, "internal: region page size for uffd-*")
	limit := flag.Int("touch", 0, "internal: touch only this many bytes' worth of pages (0: all)")
	flag.Parse()
	if *child != "" {
		if err := runChild(*child, *path, *size, *ps, *limit); err != nil {
			fmt.Fprintln(os.Stderr, "benchuffd child:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*size); err != nil {
		fmt.Fprintln(os.Stderr, "benchuffd:", err)
		os.Exit(1)
	}
}

// result is what a child measured: touching bytes took took.
type result struct {
	took, ttfb time.Duration
	bytes      int
}

// mibps is the rate at which memory was filled.
func (r result) mibps() float64 { return float64(r.bytes) / mib / r.took.Seconds() }

func run(size int) error {
	dir, err := os.MkdirTemp("", "benchuffd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	mem := filepath.Join(dir, "mem")
	begin := time.Now()
	if err := writeMemFile(mem, size); err != nil {
		return err
	}
	fmt.Printf("# %d MiB memory file written in %s (random data, every 16th MiB zero, a 32 MiB hole)\n", size/mib, time.Since(begin).Round(time.Millisecond))
	report := func(name string, r result) {
		fmt.Printf("BENCH %s_pages_per_s %.0f pages/s\n", name, r.mibps()*mib/pageSize)
		fmt.Printf("BENCH %s_mib_per_s %.1f MiB/s\n", name, r.mibps())
	}

	base := map[string]result{}
	for _, order := range []string{"seq", "random"} {
		r, err := child("read-"+order, mem, size, pageSize, 0)
		if err != nil {
			return err
		}
		base[order] = r
		report("read_"+order, r)
	}

	// The readahead policy, measured: bytes served per fault.
	best := map[string]float64{}
	// One page per fault costs a round trip per 4 KiB: that case touches
	// 64 MiB only, to keep the run short.
	for _, ra := range []int{4 << 10, 64 << 10, uffd.DefaultReadahead, 1 << 20} {
		limit := 0
		if ra == 4<<10 {
			limit = 64 * mib
		}
		for _, order := range []string{"seq", "random"} {
			r, st, err := serve(dir, mem, size, pageSize, ra, order, limit)
			if err != nil {
				return err
			}
			name := fmt.Sprintf("uffd_%s_ra%dk", order, ra>>10)
			report(name, r)
			fmt.Printf("BENCH %s_faults %d faults\n", name, st.Faults)
			ratio := r.mibps() / base[order].mibps()
			fmt.Printf("BENCH %s_vs_read %.2f ratio\n", name, ratio)
			if ra == uffd.DefaultReadahead {
				best[order] = ratio
				fmt.Printf("BENCH uffd_ttfb_%s %.1f us\n", order, float64(r.ttfb.Nanoseconds())/1e3)
			}
		}
	}
	fmt.Printf("BENCH uffd_seq_vs_read %.2f ratio\n", best["seq"])
	fmt.Printf("BENCH uffd_random_vs_read %.2f ratio\n", best["random"])

	// 2 MiB pages (page_size 2 MiB on anonymous memory: no hugetlb pages are
	// reserved on this host; the server copies whole 2 MiB units either way).
	for _, order := range []string{"seq", "random"} {
		r, st, err := serve(dir, mem, size, 2*mib, 0, order, 0)
		if err != nil {
			return err
		}
		report("uffd_2m_"+order, r)
		fmt.Printf("BENCH uffd_2m_%s_faults %d faults\n", order, st.Faults)
		fmt.Printf("BENCH uffd_2m_%s_vs_read %.2f ratio\n", order, r.mibps()/base[order].mibps())
		fmt.Printf("BENCH uffd_2m_ttfb_%s %.1f us\n", order, float64(r.ttfb.Nanoseconds())/1e3)
	}
	return nil
}

// serve runs a page server over mem and a child that faults all of it in.
func serve(dir, mem string, size, ps, readahead int, order string, limit int) (result, uffd.Stats, error) {
	socket := filepath.Join(dir, "uffd.sock")
	os.Remove(socket + ".file")
	if err := os.Symlink(mem, socket+".file"); err != nil {
		return result{}, uffd.Stats{}, err
	}
	s, err := uffd.New(uffd.Config{Socket: socket, MemFile: mem, Readahead: readahead}, slog.New(slog.DiscardHandler))
	if err != nil {
		return result{}, uffd.Stats{}, err
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	r, err := child("uffd-"+order, socket, size, ps, limit)
	if err != nil {
		return r, s.Stats(), err
	}
	if err := <-done; err != nil {
		return r, s.Stats(), fmt.Errorf("serve: %w", err)
	}
	return r, s.Stats(), nil
}

// child runs this program as the faulting process and parses its result.
func child(mode, path string, size, ps, limit int) (result, error) {
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	cmd := exec.Command(self, "-child", mode, "-file", path, "-size", strconv.Itoa(size), "-page-size", strconv.Itoa(ps), "-touch", strconv.Itoa(limit))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return result{}, fmt.Errorf("child %s: %w", mode, err)
	}
	var took, ttfb int64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "%d %d", &took, &ttfb); err != nil {
		return result{}, fmt.Errorf("child %s said %q: %w", mode, out, err)
	}
	if limit == 0 {
		limit = size
	}
	return result{took: time.Duration(took), ttfb: time.Duration(ttfb), bytes: limit}, nil
}

// writeMemFile writes size bytes of random data with every 16th MiB zero
// and a 32 MiB hole in the middle.
func writeMemFile(path string, size int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, mib)
	hole := size / 2
	for off := 0; off < size; off += mib {
		if off >= hole && off < hole+32*mib {
			continue
		}
		if (off/mib)%16 == 15 {
			clear(buf)
		} else {
			rng.Read(buf)
		}
		if _, err := f.WriteAt(buf, int64(off)); err != nil {
			return err
		}
	}
	return f.Truncate(int64(size))
}

// sink keeps the touching loads from being optimised away.
var sink byte

// spotCheck compares a sample of the touched pages of mem with the memory
// file.
func spotCheck(mem []byte, touched []int, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	want := make([]byte, pageSize)
	for i, p := range touched[:min(256, len(touched))] {
		off := p * pageSize
		if _, err := f.ReadAt(want, int64(off)); err != nil {
			return err
		}
		if !bytes.Equal(mem[off:off+pageSize], want) {
			return fmt.Errorf("sample %d: page at %#x differs from the file", i, off)
		}
	}
	return nil
}

// order returns the 4 KiB page indexes of size bytes, in order or shuffled.
func order(mode string, size int) []int {
	idx := make([]int, size/pageSize)
	for i := range idx {
		idx[i] = i
	}
	if strings.HasSuffix(mode, "random") {
		rand.New(rand.NewPCG(3, 4)).Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	}
	return idx
}

// runChild maps fresh memory and fills it: with read(2) from the file
// (read-*), or by touching every page and letting the page server fill it
// (uffd-*). It prints the time taken and the time to the first byte in
// nanoseconds.
func runChild(mode, path string, size, ps, limit int) error {
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	idx := order(mode, size)
	if limit > 0 {
		idx = idx[:limit/pageSize]
	}
	if strings.HasPrefix(mode, "read-") {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		begin := time.Now()
		for _, p := range idx {
			off := p * pageSize
			if _, err := f.ReadAt(mem[off:off+pageSize], int64(off)); err != nil {
				return err
			}
		}
		fmt.Println(int64(time.Since(begin)), 0)
		return nil
	}
	fd, err := uffd.Register(uffd.Addr(mem), uint64(size), uffd.FeatureEventRemove)
	if err != nil {
		return err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	defer conn.Close()
	regions := []uffd.Region{{BaseHostVirtAddr: uffd.Addr(mem), Size: uint64(size), PageSize: uint64(ps)}}
	begin := time.Now()
	if err := uffd.SendHandshake(conn, regions, fd); err != nil {
		return err
	}
	var sum byte
	var ttfb time.Duration
	for i, p := range idx {
		sum += mem[p*pageSize]
		if i == 0 {
			ttfb = time.Since(begin)
		}
	}
	took := time.Since(begin)
	sink = sum
	if err := spotCheck(mem, idx, path+".file"); err != nil {
		return err
	}
	fmt.Println(int64(took), int64(ttfb))
	return nil
}
