//go:build linux

package build

import (
	"context"
	"fmt"
	"io"
)

// unpack writes the image's root filesystem, layer by layer, into dir.
func (im *image) unpack(ctx context.Context, dir string) error {
	layers, err := im.img.Layers()
	if err != nil {
		return inputError(ErrInvalidImage, 0, im.digest, "list layers: %v", err)
	}
	u, err := newUnpacker(dir)
	if err != nil {
		return err
	}
	defer u.Close()
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("open layer %d of %d: %w", i+1, len(layers), err)
		}
		err = u.apply(ctxReader{ctx, rc})
		rc.Close()
		if err != nil {
			return fmt.Errorf("unpack layer %d of %d: %w", i+1, len(layers), err)
		}
	}
	return nil
}

// ctxReader stops a long read (a layer streaming from a registry) once ctx
// ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
