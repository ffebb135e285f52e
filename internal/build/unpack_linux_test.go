//go:build linux

package build

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/testutil"
)

// tarEntry is one entry of a layer a test writes.
type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
}

func layer(t *testing.T, entries ...tarEntry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func TestUnpackLayers(t *testing.T) {
	testutil.RequireRoot(t) // owners and set-id bits need root
	dir := t.TempDir()
	u, err := newUnpacker(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	lower := layer(t,
		tarEntry{name: "./", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "bin/tool", body: "tool v1", mode: 0o755},
		tarEntry{name: "bin/su", body: "su", mode: 0o4755},
		tarEntry{name: "bin/ping", body: "ping", mode: 0o755, xattrs: map[string]string{"user.ember.test": "cap"}},
		tarEntry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "etc/gone", body: "whited out"},
		tarEntry{name: "etc/kept", body: "kept"},
		tarEntry{name: "home/user/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		tarEntry{name: "home/user/notes", body: "mine", mode: 0o600, uid: 1000, gid: 1000},
		tarEntry{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "opq/old", body: "old"},
		tarEntry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		tarEntry{name: "usr/bin/sh", typ: tar.TypeSymlink, link: "/bin/tool"},
		tarEntry{name: "usr/bin/tool2", typ: tar.TypeLink, link: "bin/tool"},
		tarEntry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		tarEntry{name: "dev/null", typ: tar.TypeChar},
	)
	upper := layer(t,
		tarEntry{name: "etc/.wh.gone"},
		tarEntry{name: "opq/.wh..wh..opq"},
		tarEntry{name: "opq/new", body: "new"},
		tarEntry{name: "bin/tool", body: "tool v2", mode: 0o700},
		tarEntry{name: "usr/lib/libx.so", body: "lib"},
		tarEntry{name: "../../escape", body: "climbed"},
	)
	for i, l := range []*bytes.Buffer{lower, upper} {
		if err := u.apply(l); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}

	tests := []struct {
		path     string
		mode     os.FileMode
		uid      int
		body     string
		link     string
		absent   bool
		hardlink string
	}{
		{path: "bin/tool", mode: 0o700, body: "tool v2"},
		{path: "bin/su", mode: os.ModeSetuid | 0o755, body: "su"},
		{path: "etc/gone", absent: true},
		{path: "etc/kept", mode: 0o644, body: "kept"},
		{path: "home/user", mode: os.ModeDir | 0o750, uid: 1000},
		{path: "home/user/notes", mode: 0o600, uid: 1000, body: "mine"},
		{path: "opq/old", absent: true},
		{path: "opq/new", mode: 0o644, body: "new"},
		{path: "tmp", mode: os.ModeDir | os.ModeSticky | 0o777},
		{path: "usr/bin/sh", link: "/bin/tool"},
		{path: "usr/bin/tool2", mode: 0o755, body: "tool v1", hardlink: "lower's bin/tool"},
		{path: "lib", link: "usr/lib"},
		{path: "usr/lib/libx.so", mode: 0o644, body: "lib"},
		{path: "dev/null", absent: true},
		{path: "escape", mode: 0o644, body: "climbed"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			p := filepath.Join(dir, tc.path)
			st, err := os.Lstat(p)
			if tc.absent {
				if err == nil {
					t.Fatalf("%s exists, want it gone", tc.path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.link != "" {
				if got, err := os.Readlink(p); err != nil || got != tc.link {
					t.Fatalf("link -> %q, %v; want %q", got, err, tc.link)
				}
				return
			}
			if st.Mode() != tc.mode {
				t.Errorf("mode %v, want %v", st.Mode(), tc.mode)
			}
			if uid := int(st.Sys().(*syscall.Stat_t).Uid); uid != tc.uid {
				t.Errorf("uid %d, want %d", uid, tc.uid)
			}
			if tc.body != "" {
				if b, err := os.ReadFile(p); err != nil || string(b) != tc.body {
					t.Errorf("body %q, %v; want %q", b, err, tc.body)
				}
			}
			if tc.hardlink != "" && st.Sys().(*syscall.Stat_t).Nlink != 1 {
				// bin/tool was replaced by the upper layer: the link
				// keeps the lower layer's inode, alone now.
				t.Errorf("nlink %d, want 1 after its target was replaced", st.Sys().(*syscall.Stat_t).Nlink)
			}
		})
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "bin/ping"), "user.ember.test", buf); err != nil || string(buf[:n]) != "cap" {
		t.Errorf("xattr = %q, %v; want cap", buf[:max(n, 0)], err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(dir)), "escape")); err == nil {
		t.Errorf("an entry climbed out of the root")
	}
}

func TestUnpackHardLinkShares(t *testing.T) {
	dir := t.TempDir()
	u, err := newUnpacker(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.apply(layer(t, tarEntry{name: "a", body: "x"}, tarEntry{name: "b", typ: tar.TypeLink, link: "./a"})); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(filepath.Join(dir, "a"))
	b, err := os.Stat(filepath.Join(dir, "b"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("b is not a hard link of a (%v)", err)
	}
}

// TestUnpackSymlinkEscape checks that a layer's symlink pointing out of the
// image cannot carry a later entry out with it.
func TestUnpackSymlinkEscape(t *testing.T) {
	outside := t.TempDir()
	dir := t.TempDir()
	u, err := newUnpacker(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.apply(layer(t, tarEntry{name: "evil", typ: tar.TypeSymlink, link: outside})); err != nil {
		t.Fatal(err)
	}
	if err := u.apply(layer(t, tarEntry{name: "evil/planted", body: "x"})); err == nil {
		t.Errorf("writing through an escaping symlink succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); err == nil {
		t.Fatalf("a layer wrote outside the image root")
	}
}
