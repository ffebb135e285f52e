package build

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// guestPlatform is the only platform ember's guests run.
var guestPlatform = v1.Platform{OS: "linux", Architecture: "amd64"}

// image is a base image opened for a build: its layers, its config (the
// environment, working directory and user the build starts from) and a
// digest that names its content.
type image struct {
	img    v1.Image
	digest string
	config v1.Config
	// cleanup removes what opening it unpacked (an OCI archive's layout).
	cleanup func()
}

// openImage opens what ref names: an OCI layout directory or an image
// tarball (an OCI archive or `docker save`'s docker-archive) when ref is a
// path on this host, otherwise an image reference pulled from its
// registry. work is a directory for an OCI archive's unpacked layout.
// Every failure is an *InputError: ErrInvalidImage, ErrRegistry or
// ErrPlatform with the reference.
func openImage(ctx context.Context, ref, work string) (*image, error) {
	var (
		img     v1.Image
		err     error
		cleanup = func() {}
	)
	switch {
	case ref == "scratch":
		img = empty.Image
	case filepath.IsAbs(ref):
		img, cleanup, err = openLocal(ref, work)
	default:
		img, err = pull(ctx, ref)
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	out, err := describe(ref, img)
	if err != nil {
		cleanup()
		return nil, err
	}
	out.cleanup = cleanup
	return out, nil
}

// describe reads an image's config and digest, refusing another platform.
func describe(ref string, img v1.Image) (*image, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, inputError(ErrInvalidImage, 0, ref, "read manifest: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, inputError(ErrInvalidImage, 0, ref, "read config: %v", err)
	}
	if ref != "scratch" && (cf.OS != guestPlatform.OS || cf.Architecture != guestPlatform.Architecture) {
		return nil, inputError(ErrPlatform, 0, ref, "image is %s/%s: guests are %s/%s", cf.OS, cf.Architecture, guestPlatform.OS, guestPlatform.Architecture)
	}
	return &image{img: img, digest: d.String(), config: cf.Config}, nil
}

// openLocal opens an image on this host.
func openLocal(p, work string) (v1.Image, func(), error) {
	nop := func() {}
	st, err := os.Stat(p)
	if err != nil {
		return nil, nop, inputError(ErrInvalidImage, 0, p, "%v", errors.Unwrap(err))
	}
	if st.IsDir() {
		img, err := fromLayout(p)
		return img, nop, err
	}
	names, err := tarNames(p)
	if err != nil {
		return nil, nop, inputError(ErrInvalidImage, 0, p, "not an image tarball: %v", err)
	}
	switch {
	case names["manifest.json"]:
		img, err := tarball.ImageFromPath(p, nil)
		if err != nil {
			return nil, nop, inputError(ErrInvalidImage, 0, p, "docker archive: %v", err)
		}
		return img, nop, nil
	case names["oci-layout"] && names["index.json"]:
		dir, err := os.MkdirTemp(work, "oci-")
		if err != nil {
			return nil, nop, fmt.Errorf("unpack oci archive %q: %w", p, err)
		}
		cleanup := func() { os.RemoveAll(dir) }
		if err := extractPlain(p, dir); err != nil {
			return nil, cleanup, inputError(ErrInvalidImage, 0, p, "oci archive: %v", err)
		}
		img, err := fromLayout(dir)
		if err != nil {
			var ie *InputError
			if errors.As(err, &ie) {
				ie.Ref = p
			}
		}
		return img, cleanup, err
	}
	return nil, nop, inputError(ErrInvalidImage, 0, p, "a tarball with neither manifest.json (docker-archive) nor oci-layout and index.json (OCI)")
}

// fromLayout opens the linux/amd64 image of an OCI layout directory.
func fromLayout(dir string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, inputError(ErrInvalidImage, 0, dir, "not an OCI image layout: %v", err)
	}
	img, err := pickPlatform(idx, dir)
	if err != nil {
		return nil, err
	}
	return img, nil
}

// pickPlatform finds the guests' platform in an index, descending into
// nested indexes (a layout's index.json often points at an image index).
func pickPlatform(idx v1.ImageIndex, ref string) (v1.Image, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, inputError(ErrInvalidImage, 0, ref, "read index: %v", err)
	}
	var seen []string
	for _, d := range m.Manifests {
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, inputError(ErrInvalidImage, 0, ref, "read index %s: %v", d.Digest, err)
			}
			img, err := pickPlatform(child, ref)
			if errors.Is(err, ErrPlatform) {
				continue
			}
			return img, err
		case d.MediaType.IsImage():
			if d.Platform != nil && !d.Platform.Satisfies(guestPlatform) {
				seen = append(seen, d.Platform.String())
				continue
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, inputError(ErrInvalidImage, 0, ref, "read image %s: %v", d.Digest, err)
			}
			return img, nil
		}
	}
	if len(seen) > 0 {
		return nil, inputError(ErrPlatform, 0, ref, "no linux/amd64 image, only %s", strings.Join(seen, ", "))
	}
	return nil, inputError(ErrInvalidImage, 0, ref, "the layout holds no image")
}

// pull opens an image from its registry (credentials from the docker
// config, as docker and crane find them). Only the manifest and config are
// fetched here; layers stream when unpacked.
func pull(ctx context.Context, ref string) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, inputError(ErrInvalidImage, 0, ref, "not an image reference: %v", err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(guestPlatform),
		remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return nil, registryError(ref, r.Context().RegistryStr(), err)
	}
	return img, nil
}

// registryError classifies a failed pull: a registry that cannot be
// reached or has no such image, or an index without the guests' platform.
func registryError(ref, registry string, err error) error {
	var terr *transport.Error
	var nerr net.Error
	var uerr *url.Error
	switch {
	case strings.Contains(err.Error(), "no child with platform"):
		return inputError(ErrPlatform, 0, ref, "no linux/amd64 image in the index")
	case errors.As(err, &terr):
		return inputError(ErrRegistry, 0, ref, "registry %s answered %d: %s", registry, terr.StatusCode, firstLine(terr.Error()))
	case errors.As(err, &nerr), errors.As(err, &uerr):
		return inputError(ErrRegistry, 0, ref, "registry %s cannot be reached: %s", registry, firstLine(err.Error()))
	}
	return inputError(ErrRegistry, 0, ref, "pull from %s: %s", registry, firstLine(err.Error()))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// tarNames lists the top-level regular files of a tarball (compressed
// archives are not images).
func tarNames(p string) (map[string]bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return nil, err
		}
		names[strings.TrimPrefix(filepath.Clean("/"+h.Name), "/")] = true
	}
}

// extractPlain unpacks a tarball of plain files and directories (an OCI
// archive) into dir, refusing anything that would land outside it.
func extractPlain(p, dir string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		n := cleanEntry(h.Name)
		if n == "" {
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = root.MkdirAll(n, 0o755)
		case tar.TypeReg:
			if err = root.MkdirAll(filepath.Dir(n), 0o755); err != nil {
				return err
			}
			var out *os.File
			if out, err = root.Create(n); err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return err
		}
	}
}
