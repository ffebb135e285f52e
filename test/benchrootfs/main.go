// Command benchrootfs measures the rootfs backends this host can run:
// Prepare time over a 256 MiB and a 4 GiB base image (a backend whose
// Prepare is O(1) in the image size shows a ratio near 1), the speed-up of
// Prepare over a full copy of a 2 GiB image (the copy backend, measured in
// the same run) and the usage of a fresh disk.
//
// Base images are realistic: mostly data (60% of every 128 MiB block
// group written), not holes, so a copy costs what it costs. reflink runs on an xfs image
// (reflink=1) the bench makes, loop-mounts and removes; devmapper runs only
// where the kernel has device-mapper (the test-host tier), else it is
// reported as skipped with the reason.
//
//	go run ./test/benchrootfs [-n 5] [-dir /var/tmp]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/emberhq/ember/internal/rootfs"
	rootfscopy "github.com/emberhq/ember/internal/rootfs/copy"
	"github.com/emberhq/ember/internal/rootfs/devmapper"
	"github.com/emberhq/ember/internal/rootfs/loop"
	"github.com/emberhq/ember/internal/rootfs/qcow2"
	"github.com/emberhq/ember/internal/rootfs/reflink"
	"github.com/emberhq/ember/internal/runner"
)

// Base image sizes.
const (
	small = 256 << 20
	large = 4 << 30
	mid   = 2 << 30
)

// A base image is laid out like an ext4 image made with mkfs.ext4 -d and
// its free space punched out: in each 128 MiB block group, data first
// (60% here), then a hole. Extent counts matter to reflink (a clone costs
// per extent), data bytes to copy.
const (
	stripe    = 128 << 20
	dataBytes = stripe * 3 / 5
)

func main() {
	n := flag.Int("n", 5, "timed Prepare calls per backend and image (the median is reported)")
	dir := flag.String("dir", os.TempDir(), "directory for the base images and disks (not a reflinking filesystem, or the copy baseline is not a copy)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(context.Background(), *dir, *n, log); err != nil {
		log.Error("benchrootfs", "err", err)
		os.Exit(1)
	}
}

// bases are the three base images, in one directory.
type bases struct{ small, large, mid string }

func makeBases(dir string, log *slog.Logger) (bases, error) {
	begin := time.Now()
	b := bases{filepath.Join(dir, "base-256m.raw"), filepath.Join(dir, "base-4g.raw"), filepath.Join(dir, "base-2g.raw")}
	for p, size := range map[string]int64{b.small: small, b.large: large, b.mid: mid} {
		if err := writeBase(p, size); err != nil {
			return b, err
		}
	}
	log.Info("base images written", "dir", dir, "duration", time.Since(begin))
	return b, nil
}

// writeBase writes a base image of size bytes: in each stripe, the first
// dataBytes are incompressible data, the rest a hole.
func writeBase(p string, size int64) error {
	buf := make([]byte, dataBytes)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(buf)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	for off := int64(0); off < size; off += stripe {
		buf[0] = byte(off >> 27) // groups differ
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(p, 0o444)
}

// result is one backend's measurements.
type result struct {
	small, large, mid time.Duration
	fresh             int64
}

// measure returns the median time of n Prepare calls on base (each disk
// removed, untimed, before the next) and the usage of a fresh disk.
func measure(ctx context.Context, b rootfs.Backend, work, base string, n int) (time.Duration, int64, error) {
	var ds []time.Duration
	var fresh int64
	for i := range n {
		dir, err := os.MkdirTemp(work, "sb-")
		if err != nil {
			return 0, 0, err
		}
		id := fmt.Sprintf("bench-%s-%d", filepath.Base(dir), i)
		begin := time.Now()
		_, err = b.Prepare(ctx, id, dir, base, 0)
		d := time.Since(begin)
		if err != nil {
			return 0, 0, err
		}
		ds = append(ds, d)
		if fresh, err = b.Usage(ctx, id, dir); err != nil {
			return 0, 0, err
		}
		if err := b.Remove(ctx, id, dir); err != nil {
			return 0, 0, err
		}
		os.Remove(dir)
	}
	slices.Sort(ds)
	return ds[len(ds)/2], fresh, nil
}

func measureAll(ctx context.Context, b rootfs.Backend, work string, bs bases, n int) (result, error) {
	var r result
	var err error
	if r.small, r.fresh, err = measure(ctx, b, work, bs.small, n); err != nil {
		return r, err
	}
	if r.large, _, err = measure(ctx, b, work, bs.large, n); err != nil {
		return r, err
	}
	if r.mid, _, err = measure(ctx, b, work, bs.mid, n); err != nil {
		return r, err
	}
	return r, nil
}

func run(ctx context.Context, dir string, n int, log *slog.Logger) error {
	work, err := os.MkdirTemp(dir, "ember-benchrootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := reflink.Supported(work); err == nil {
		return fmt.Errorf("%s reflinks: the copy baseline would be a clone; pick another -dir", work)
	}
	plain, err := makeBases(work, log)
	if err != nil {
		return err
	}
	discard := slog.New(slog.DiscardHandler)

	// The baseline: a full (sparse) copy, three times at most on the
	// large images, which take seconds each.
	base, err := measureAll(ctx, rootfscopy.New(discard), work, plain, min(n, 3))
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	report("copy", base, base)

	if r, err := measureAll(ctx, qcow2.New(discard), work, plain, n); err != nil {
		log.Warn("qcow2 skipped", "err", err)
	} else {
		report("qcow2", r, base)
	}

	if r, err := benchReflink(ctx, work, n, log); err != nil {
		log.Warn("reflink skipped", "err", err)
	} else {
		report("reflink", r, base)
	}

	if err := devmapper.Available(); err != nil {
		log.Warn("devmapper skipped: runs in the test-host tier only", "reason", err)
	} else {
		b, err := devmapper.New(filepath.Join(work, "devmapper-state"), discard)
		if err != nil {
			return err
		}
		if r, err := measureAll(ctx, b, work, plain, n); err != nil {
			log.Warn("devmapper failed", "err", err)
		} else {
			report("devmapper", r, base)
		}
	}
	return nil
}

// benchReflink measures reflink on a fresh xfs image, loop-mounted for the
// run: its own copies of the base images live there.
func benchReflink(ctx context.Context, work string, n int, log *slog.Logger) (result, error) {
	if os.Geteuid() != 0 {
		return result{}, fmt.Errorf("needs root to mount an xfs image")
	}
	img := filepath.Join(work, "xfs.img")
	f, err := os.Create(img)
	if err != nil {
		return result{}, err
	}
	err = f.Truncate(16 << 30)
	f.Close()
	if err != nil {
		return result{}, err
	}
	if _, err := runner.Run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", img); err != nil {
		return result{}, err
	}
	mnt := filepath.Join(work, "xfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return result{}, err
	}
	unmount, err := loop.Mount(img, "xfs", mnt)
	if err != nil {
		return result{}, err
	}
	defer func() {
		if err := unmount(); err != nil {
			log.Error("unmount the bench's xfs: the loop device stays until it is unmounted", "err", err, "mount", mnt)
		}
	}()
	bs, err := makeBases(mnt, log)
	if err != nil {
		return result{}, err
	}
	r, err := measureAll(ctx, reflink.New(slog.New(slog.DiscardHandler)), mnt, bs, n)
	for _, p := range []string{bs.small, bs.large, bs.mid} {
		os.Remove(p)
	}
	return r, err
}

// report prints one backend's BENCH lines; base is the copy backend's.
func report(name string, r, base result) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }
	fmt.Printf("BENCH prepare_256m_%s %s ms\n", name, ms(r.small))
	fmt.Printf("BENCH prepare_4g_%s %s ms\n", name, ms(r.large))
	fmt.Printf("BENCH prepare_2g_%s %s ms\n", name, ms(r.mid))
	fmt.Printf("BENCH prepare_4g_vs_256m_%s %.2f ratio\n", name, float64(r.large)/float64(r.small))
	if name != "copy" {
		fmt.Printf("BENCH prepare_speedup_vs_copy_%s %.1f ratio\n", name, float64(base.mid)/float64(r.mid))
	}
	fmt.Printf("BENCH fresh_disk_usage_%s %d KiB\n", name, r.fresh>>10)
	if name == "reflink" {
		fmt.Println("# reflink usage counts blocks still shared with the base (st_blocks cannot tell them apart)")
	}
}
