//go:build linux

package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/emberhq/ember/internal/testutil"
)

// testImage is an image of the test's own: two layers (the second whites
// out a file of the first) for arch, with an environment.
func testImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	img := empty.Image
	for _, l := range []*bytes.Buffer{
		layer(t, tarEntry{name: "etc/", typ: tar.TypeDir, mode: 0o755}, tarEntry{name: "etc/motd", body: "hello"}, tarEntry{name: "etc/old", body: "old"}),
		layer(t, tarEntry{name: "etc/.wh.old"}, tarEntry{name: "usr/bin/app", body: "#!/bin/sh\necho app\n", mode: 0o755}),
	} {
		b := l.Bytes()
		tl, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, tl); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "APP=1"}
	cf.Config.WorkingDir = "/srv"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func writeLayout(t *testing.T, dir string, img v1.Image) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: cf.Architecture})); err != nil {
		t.Fatal(err)
	}
}

// tarDir writes dir's files as a tarball (an OCI archive of a layout).
func tarDir(t *testing.T, dir, dst string) {
	t.Helper()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func checkUnpacked(t *testing.T, ctx context.Context, im *image) {
	t.Helper()
	dir := t.TempDir()
	if err := im.unpack(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(b) != "hello" {
		t.Errorf("etc/motd = %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/old")); err == nil {
		t.Errorf("etc/old survived its whiteout")
	}
	if st, err := os.Stat(filepath.Join(dir, "usr/bin/app")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("usr/bin/app: %v, %v", st, err)
	}
	if im.config.WorkingDir != "/srv" || len(im.config.Env) != 2 {
		t.Errorf("config = %+v", im.config)
	}
}

func TestOpenLocalImages(t *testing.T) {
	ctx := context.Background()
	work := t.TempDir()
	img := testImage(t, "amd64")
	want, _ := img.Digest()

	layoutDir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, layoutDir, img)
	ociArchive := filepath.Join(t.TempDir(), "image.oci.tar")
	tarDir(t, layoutDir, ociArchive)
	dockerArchive := filepath.Join(t.TempDir(), "image.docker.tar")
	if err := tarball.WriteToFile(dockerArchive, name.MustParseReference("ember-test/app:1"), img); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, ref string }{
		{"oci layout", layoutDir}, {"oci archive", ociArchive}, {"docker archive", dockerArchive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im, err := openImage(ctx, tc.ref, work)
			if err != nil {
				t.Fatal(err)
			}
			defer im.cleanup()
			if tc.name != "docker archive" && im.digest != want.String() {
				t.Errorf("digest %s, want %s", im.digest, want)
			}
			checkUnpacked(t, ctx, im)
		})
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Errorf("opening images left %d entries in the work dir", len(left))
	}
}

func TestOpenImageErrors(t *testing.T) {
	ctx := context.Background()
	armLayout := filepath.Join(t.TempDir(), "arm")
	writeLayout(t, armLayout, testImage(t, "arm64"))
	notImage := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notImage, []byte("not a tarball"), 0o644)
	plainTar := filepath.Join(t.TempDir(), "plain.tar")
	tarDir(t, t.TempDir(), plainTar)
	for _, tc := range []struct {
		name, ref string
		want      error
	}{
		{"other architecture", armLayout, ErrPlatform},
		{"not an image file", notImage, ErrInvalidImage},
		{"plain tarball", plainTar, ErrInvalidImage},
		{"empty directory", t.TempDir(), ErrInvalidImage},
		{"missing path", "/nonexistent/image", ErrInvalidImage},
		{"bad reference", "UPPER/Case::x", ErrInvalidImage},
		{"unreachable registry", "127.0.0.1:1/nobody/image:1", ErrRegistry},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := openImage(ctx, tc.ref, t.TempDir())
			if !errors.Is(err, tc.want) {
				t.Fatalf("openImage(%q) = %v, want %v", tc.ref, err, tc.want)
			}
			var ie *InputError
			if !errors.As(err, &ie) || ie.Ref == "" || !strings.Contains(err.Error(), ie.Ref) {
				t.Fatalf("error %q does not name the reference", err)
			}
		})
	}
}

// TestPullFromRegistry pushes an image the test built to a real registry
// on loopback and opens and unpacks it from there, and finds the missing
// tag and the other platform refused.
func TestPullFromRegistry(t *testing.T) {
	ctx := context.Background()
	addr := testutil.Registry(t)
	for _, tc := range []struct{ tag, arch string }{{"app:1", "amd64"}, {"arm:1", "arm64"}} {
		ref, err := name.ParseReference(addr + "/ember-test/" + tc.tag)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, testImage(t, tc.arch), remote.WithContext(ctx)); err != nil {
			t.Fatal(err)
		}
	}
	im, err := openImage(ctx, addr+"/ember-test/app:1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	checkUnpacked(t, ctx, im)
	for ref, want := range map[string]error{
		addr + "/ember-test/app:missing": ErrRegistry,
		addr + "/ember-test/arm:1":       ErrPlatform,
	} {
		if _, err := openImage(ctx, ref, t.TempDir()); !errors.Is(err, want) {
			t.Errorf("openImage(%s) = %v, want %v", ref, err, want)
		}
	}
}
