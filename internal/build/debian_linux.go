//go:build linux

package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/fsutil"
	"github.com/emberhq/ember/internal/runner"
	"github.com/emberhq/ember/internal/template"
)

const (
	// debianRecipe changes whenever the mmdebstrap invocation below
	// changes, so cached bases are remade.
	debianRecipe = "1"
	debianSuite  = "bookworm"
	// debianVariant is what Docker's debian image holds: the required
	// packages and apt.
	debianVariant = "minbase"
)

// hostSources are the apt sources of this host: the built-in base is made
// from the mirror the host itself installs from.
func hostSources() ([]string, error) {
	var files []string
	if st, err := os.Stat("/etc/apt/sources.list"); err == nil && st.Size() > 0 {
		files = append(files, "/etc/apt/sources.list")
	}
	for _, pat := range []string{"/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources"} {
		m, _ := filepath.Glob(pat)
		files = append(files, m...)
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("find the host's apt sources: none in /etc/apt")
	}
	return files, nil
}

// debianKey names a built-in base by what makes it: the recipe, the
// mmdebstrap version and the host's sources.
func debianKey(ctx context.Context, sources []string) (string, error) {
	v, err := runner.Run(ctx, "dpkg-query", "-W", "-f", "${Version}", "mmdebstrap")
	if err != nil {
		return "", fmt.Errorf("read mmdebstrap version (apt-get install mmdebstrap): %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "ember debian\nrecipe %s\nsuite %s\nvariant %s\nmmdebstrap %s\n", debianRecipe, debianSuite, debianVariant, strings.TrimSpace(string(v)))
	for _, s := range sources {
		b, err := os.ReadFile(s)
		if err != nil {
			return "", fmt.Errorf("read apt sources %q: %w", s, err)
		}
		fmt.Fprintf(h, "source %s\n%s\n", s, b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// debianBase returns ember's built-in Debian bookworm as a root filesystem
// tarball, and its key: made once with mmdebstrap from the host's mirror,
// then cached in <cache>/debian/<key>/rootfs.tar like the kernel. A build
// killed half-way leaves nothing that looks finished.
func (b *Builder) debianBase(ctx context.Context, say func(string)) (tarPath, key string, err error) {
	sources, err := hostSources()
	if err != nil {
		return "", "", err
	}
	if key, err = debianKey(ctx, sources); err != nil {
		return "", "", err
	}
	root := filepath.Join(b.cacheDir(), "debian")
	out := filepath.Join(root, key, "rootfs.tar")
	if _, err := os.Stat(out); err == nil {
		return out, key, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", "", fmt.Errorf("create debian cache %q: %w", root, err)
	}
	unlock, err := fsutil.Lock(ctx, filepath.Join(root, key+".lock"))
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, key, nil // made by another build while we waited
	}
	prefix := ".build-" + key[:16] + "-"
	stale, _ := filepath.Glob(filepath.Join(root, prefix+"*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
	work, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return "", "", fmt.Errorf("create debian work dir: %w", err)
	}
	defer os.RemoveAll(work)
	say(fmt.Sprintf("making the built-in Debian %s with mmdebstrap from the host's mirror (once; takes a minute)", debianSuite))
	start := time.Now()
	args := []string{"--variant=" + debianVariant, "--format=tar", "--quiet", debianSuite, filepath.Join(work, "rootfs.tar")}
	args = append(args, sources...)
	if _, err := runner.Run(ctx, "mmdebstrap", args...); err != nil {
		return "", "", fmt.Errorf("make debian base with mmdebstrap: %w", err)
	}
	if err := template.Sync(filepath.Join(work, "rootfs.tar")); err != nil {
		return "", "", err
	}
	if err := os.Rename(work, filepath.Join(root, key)); err != nil {
		return "", "", fmt.Errorf("publish debian base: %w", err)
	}
	if err := template.Sync(root); err != nil {
		return "", "", err
	}
	b.log().Info("built-in debian base made", "key", key[:12], "duration", time.Since(start).Round(time.Millisecond))
	return out, key, nil
}
