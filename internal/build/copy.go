package build

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// copyPlan is what a COPY step copies: each file of the context with the
// name it gets under the destination directory.
type copyPlan struct {
	// dir is the guest directory the entries land in.
	dir string
	// entries are context paths and their names under dir, in order;
	// directories come before what they hold.
	entries []copyEntry
	// single: one file copied to a file name (dest not a directory), which
	// the builder turns into dest/<name> when the image has a directory
	// there.
	single bool
}

type copyEntry struct{ src, name string }

// planCopy resolves a COPY step's sources (globs allowed) in the context.
// A source that matches nothing is an *InputError naming it and the line.
func planCopy(ctx fs.FS, st Step) (copyPlan, error) {
	var matches []string
	for _, src := range st.Sources {
		m, err := fs.Glob(ctx, src)
		if err != nil {
			return copyPlan{}, inputError(ErrCopySource, st.Line, src, "bad pattern: %v", err)
		}
		if len(m) == 0 {
			if _, err := fs.Stat(ctx, src); err == nil {
				m = []string{src} // a name with glob characters in it
			} else {
				return copyPlan{}, inputError(ErrCopySource, st.Line, src, "not in the build context")
			}
		}
		matches = append(matches, m...)
	}
	dest := guestPath(st.Path)
	asDir := strings.HasSuffix(st.Path, "/") || len(matches) > 1
	for _, m := range matches {
		if info, err := fs.Stat(ctx, m); err == nil && info.IsDir() {
			asDir = true
		}
	}
	p := copyPlan{dir: dest}
	if !asDir {
		p.dir, p.single = path.Dir(dest), true
	}
	for _, m := range matches {
		info, err := fs.Lstat(ctx, m)
		if err != nil {
			return copyPlan{}, inputError(ErrCopySource, st.Line, m, "%v", err)
		}
		if !info.IsDir() {
			name := path.Base(m)
			if !asDir {
				name = path.Base(dest)
			}
			p.entries = append(p.entries, copyEntry{m, name})
			continue
		}
		// A directory's contents, not the directory itself, as Docker
		// copies them.
		err = fs.WalkDir(ctx, m, func(q string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if q == m {
				return nil
			}
			p.entries = append(p.entries, copyEntry{q, strings.TrimPrefix(q, m+"/")})
			return nil
		})
		if err != nil {
			return copyPlan{}, inputError(ErrCopySource, st.Line, m, "%v", err)
		}
	}
	return p, nil
}

// writeTar writes the plan's entries as a tar stream, owned by uid:gid,
// with the step's mode when it sets one. For the cache key (forKey) the
// stream leaves out modification times: two contexts with the same files
// give the same key.
func (p copyPlan) writeTar(w io.Writer, ctx fs.FS, mode uint32, uid, gid int, forKey bool) error {
	tw := tar.NewWriter(w)
	for _, e := range p.entries {
		info, err := fs.Lstat(ctx, e.src)
		if err != nil {
			return fmt.Errorf("copy %q: %w", e.src, err)
		}
		h := &tar.Header{Name: e.name, Uid: uid, Gid: gid, Mode: int64(info.Mode().Perm()), Format: tar.FormatPAX}
		if m := info.Mode(); m&fs.ModeSetuid != 0 {
			h.Mode |= 0o4000
		}
		if info.Mode()&fs.ModeSetgid != 0 {
			h.Mode |= 0o2000
		}
		if info.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if mode != 0 {
			h.Mode = int64(mode)
		}
		if !forKey {
			h.ModTime = info.ModTime()
		} else {
			h.ModTime = time.Unix(0, 0)
		}
		switch {
		case info.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := fs.ReadLink(ctx, e.src)
			if err != nil {
				return fmt.Errorf("copy %q: %w", e.src, err)
			}
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, target, 0o777
		case info.Mode().IsRegular():
			h.Typeflag, h.Size = tar.TypeReg, info.Size()
		default:
			continue // sockets, devices: nothing to copy
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		f, err := ctx.Open(e.src)
		if err != nil {
			return fmt.Errorf("copy %q: %w", e.src, err)
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("copy %q: %w", e.src, err)
		}
	}
	return tw.Close()
}

// digest is the hash of what the plan copies: names, modes and contents.
func (p copyPlan) digest(ctx fs.FS, mode uint32) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "dir %s single %v\n", p.dir, p.single)
	if err := p.writeTar(h, ctx, mode, 0, 0, true); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// contextFS is the build context as a file system no symlink can leave.
func contextFS(dir string) (fs.FS, func(), error) {
	if dir == "" {
		return emptyFS{}, func() {}, nil
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("open build context %q: %w", dir, err)
	}
	return r.FS(), func() { r.Close() }, nil
}

// emptyFS is a context with nothing in it.
type emptyFS struct{}

func (emptyFS) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}
