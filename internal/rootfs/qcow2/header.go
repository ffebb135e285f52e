//go:build linux

package qcow2

import (
	"encoding/binary"
	"fmt"
	"os"
)

// The overlay's layout, in 64 KiB clusters: the header (with the backing
// file's name and format), the refcount table, one refcount block, then
// the L1 table, all zero (every cluster still reads from the backing
// file). It is what `qemu-img create -f qcow2 -b base -F raw` writes, made
// without starting a process (20–100 ms on a loaded host).
const (
	clusterBits = 16
	clusterSize = 1 << clusterBits
	// l2Entries is how many clusters one L2 table maps.
	l2Entries = clusterSize / 8
	// headerLength is a version 3 header with the compression type byte,
	// padded to 8.
	headerLength = 112
	// extBackingFormat is the header extension naming the backing format.
	extBackingFormat = 0xe2792aca
	// maxBackingName is qemu's limit on the backing file's name.
	maxBackingName = 1023
)

// writeOverlay writes a new qcow2 image of size bytes (rounded up to 512)
// backed by the raw image base (an absolute path) into f, which must be
// empty.
func writeOverlay(f *os.File, base string, size int64) error {
	if len(base) > maxBackingName {
		return fmt.Errorf("backing file name longer than %d bytes: %s", maxBackingName, base)
	}
	size = (size + 511) &^ 511
	l1Size := (size + clusterSize*l2Entries - 1) / (clusterSize * l2Entries)
	l1Clusters := (l1Size*8 + clusterSize - 1) / clusterSize
	const (
		refTable = 1 * clusterSize
		refBlock = 2 * clusterSize
		l1Table  = 3 * clusterSize
	)
	clusters := 3 + l1Clusters

	h := make([]byte, clusterSize)
	be := binary.BigEndian
	be.PutUint32(h[0:], 0x514649fb) // "QFI\xfb"
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], clusterBits)
	be.PutUint64(h[24:], uint64(size))
	be.PutUint32(h[36:], uint32(l1Size))
	be.PutUint64(h[40:], l1Table)
	be.PutUint64(h[48:], refTable)
	be.PutUint32(h[56:], 1) // refcount table clusters
	be.PutUint32(h[96:], 4) // refcount order: 16-bit refcounts
	be.PutUint32(h[100:], headerLength)
	// Header extensions: the backing format, then the end marker.
	off := headerLength
	be.PutUint32(h[off:], extBackingFormat)
	be.PutUint32(h[off+4:], 3)
	copy(h[off+8:], "raw")
	off += 8 + 8 // "raw" padded to 8
	off += 8     // end marker: type 0, length 0
	be.PutUint64(h[8:], uint64(off))
	be.PutUint32(h[16:], uint32(len(base)))
	copy(h[off:], base)

	rt := make([]byte, 8)
	be.PutUint64(rt, refBlock)
	rb := make([]byte, 2*clusters)
	for i := range clusters {
		be.PutUint16(rb[2*i:], 1)
	}
	for _, w := range []struct {
		b   []byte
		off int64
	}{{h[:off+len(base)], 0}, {rt, refTable}, {rb, refBlock}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return fmt.Errorf("write qcow2 header: %w", err)
		}
	}
	// The L1 table is zeros: a hole reads as one.
	if err := f.Truncate(clusters * clusterSize); err != nil {
		return fmt.Errorf("write qcow2 header: %w", err)
	}
	return nil
}
