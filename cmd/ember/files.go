package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/client"
)

// sandboxPath splits "ID:/path" (a path in a sandbox) from a local path.
func sandboxPath(arg string) (id, p string, ok bool) {
	id, p, ok = strings.Cut(arg, ":")
	if !ok || id == "" || strings.ContainsAny(id, "/\\.") {
		return "", "", false
	}
	return id, p, true
}

func cpCmd() *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "cp SRC DEST",
		Short: "Copy files and directories between a sandbox and here (ID:/path on one side)",
		Long: "Copy a file or a directory tree between a sandbox and the local machine, as docker cp does:\n" +
			"one side is ID:/path. A directory copied onto an existing directory goes inside it under its\n" +
			"own name; onto a missing path it becomes that path. A local side of - is a tar stream on\n" +
			"stdin or stdout. Directories travel as tar streams; files through the file API.",
		Example: "  ember cp ./app <id>:/home/user/app\n  ember cp <id>:/home/user/out.log .\n  tar -C src -cf - . | ember cp - <id>:/home/user/src",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			c = c.AsUser(user)
			srcID, src, srcRemote := sandboxPath(args[0])
			dstID, dst, dstRemote := sandboxPath(args[1])
			ctx := cmd.Context()
			switch {
			case srcRemote && dstRemote:
				return errors.New("cp: one side must be local (copy through here in two steps)")
			case !srcRemote && !dstRemote:
				return errors.New("cp: one side must be ID:/path in a sandbox")
			case dstRemote:
				return copyIn(ctx, c, args[0], dstID, dst)
			default:
				return copyOut(ctx, c, srcID, src, args[1])
			}
		},
	}
	cmd.Flags().StringVarP(&user, "user", "u", "", "guest user the files are read or written as (default user, the unprivileged account)")
	return cmd
}

// copyIn copies a local file or tree (or a tar stream on stdin) into a
// sandbox.
func copyIn(ctx context.Context, c *client.Client, local, id, dst string) error {
	if local == "-" {
		return untarInGuest(ctx, c, id, dst, os.Stdin)
	}
	fi, err := os.Stat(local)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	target, err := c.StatFile(ctx, id, dst)
	exists := err == nil
	if err != nil && !client.IsCode(err, "file_not_found") {
		return err
	}
	if !fi.IsDir() {
		if exists && target.Type == "dir" {
			dst = path.Join(dst, filepath.Base(local))
		}
		f, err := os.Open(local)
		if err != nil {
			return fmt.Errorf("cp: %w", err)
		}
		defer f.Close()
		_, err = c.WriteFile(ctx, id, dst, f)
		return err
	}
	// A directory onto a directory goes inside it under its own name.
	prefix := ""
	if exists {
		if target.Type != "dir" {
			return fmt.Errorf("cp: %s:%s is not a directory", id, dst)
		}
		prefix = filepath.Base(local)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, local, prefix)) }()
	err = untarInGuest(ctx, c, id, dst, pr)
	pr.CloseWithError(err)
	return err
}

// untarInGuest unpacks a tar stream into dir in the sandbox (made if
// missing) with the guest's tar, fed as it is read.
func untarInGuest(ctx context.Context, c *client.Client, id, dir string, r io.Reader) error {
	var stderr strings.Builder
	res, err := c.ExecPipe(ctx, id, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", `mkdir -p "$1" && exec tar -x -f - -C "$1"`, "sh", dir}, TimeoutS: 86400}, r, io.Discard, &stderr)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("cp: unpack into %s:%s: tar exited with %d: %s", id, dir, res.ExitCode, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// copyOut copies a file or tree out of a sandbox (or, to -, writes it as a
// tar stream on stdout).
func copyOut(ctx context.Context, c *client.Client, id, src, local string) error {
	e, err := c.StatFile(ctx, id, src)
	if err != nil {
		return err
	}
	if local == "-" {
		return tarFromGuest(ctx, c, id, src, os.Stdout, true)
	}
	fi, lerr := os.Stat(local)
	exists := lerr == nil
	if e.Type != "dir" {
		if exists && fi.IsDir() {
			local = filepath.Join(local, path.Base(src))
		}
		return download(ctx, c, id, src, local)
	}
	if exists {
		if !fi.IsDir() {
			return fmt.Errorf("cp: %s is not a directory", local)
		}
		local = filepath.Join(local, path.Base(src))
	}
	if err := os.MkdirAll(local, 0o755); err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := readTar(pr, local)
		pr.CloseWithError(err)
		errc <- err
	}()
	err = tarFromGuest(ctx, c, id, src, pw, false)
	pw.CloseWithError(err)
	if terr := <-errc; err == nil {
		err = terr
	}
	return err
}

// download streams one file out of a sandbox into a local file, replacing
// it only once all of it arrived.
func download(ctx context.Context, c *client.Client, id, src, local string) error {
	body, err := c.ReadFile(ctx, id, src)
	if err != nil {
		return err
	}
	defer body.Close()
	tmp, err := os.CreateTemp(filepath.Dir(local), "."+filepath.Base(local)+".ember-*")
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	_, err = io.Copy(tmp, body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), local)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("cp: write %s: %w", local, err)
	}
	return nil
}

// tarFromGuest writes a tar stream of dir (its contents, or with named the
// directory itself) made by the guest's tar.
func tarFromGuest(ctx context.Context, c *client.Client, id, dir string, w io.Writer, named bool) error {
	script := `cd "$1" && exec tar -c -f - .`
	if named {
		script = `cd "$(dirname "$1")" && exec tar -c -f - "$(basename "$1")"`
	}
	var stderr strings.Builder
	res, err := c.ExecStream(ctx, id, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", script, "sh", dir}, TimeoutS: 86400}, w, &stderr)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("cp: pack %s:%s: tar exited with %d: %s", id, dir, res.ExitCode, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// writeTar writes the tree at root as a tar stream, names under prefix.
func writeTar(w io.Writer, root, prefix string) error {
	tw := tar.NewWriter(w)
	if err := addTree(tw, root, prefix); err != nil {
		return err
	}
	return tw.Close()
}

// addTree writes the tree at root into tw, names under prefix.
func addTree(tw *tar.Writer, root, prefix string) error {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(filepath.Join(prefix, rel))
		if name == "." {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", "" // the guest's user owns what it unpacks
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", root, err)
	}
	return nil
}

// readTar unpacks a tar stream under dir, refusing names that would land
// outside it.
func readTar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cp: read tar stream: %w", err)
		}
		name := filepath.Clean(filepath.FromSlash(hdr.Name))
		if name == "." {
			continue
		}
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("cp: tar entry %q points outside %s", hdr.Name, dir)
		}
		p := filepath.Join(dir, name)
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, mode|0o700)
		case tar.TypeSymlink:
			os.Remove(p)
			err = os.Symlink(hdr.Linkname, p)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode); err == nil {
				_, err = io.Copy(f, tr)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
		default:
			continue // devices, fifos, hard links: not copied
		}
		if err != nil {
			return fmt.Errorf("cp: unpack %s: %w", p, err)
		}
	}
}

func filesCmd() *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:     "files",
		Short:   "List, inspect, make and remove files in a sandbox",
		Example: "  ember files ls <id> /home/user\n  ember files -u root stat <id> /etc/shadow",
	}
	cmd.PersistentFlags().StringVarP(&user, "user", "u", "", "guest user to act as (default user, the unprivileged account)")
	withClient := func(run func(ctx context.Context, c *client.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			c, err := apiClient()
			if err != nil {
				return err
			}
			return run(cmd.Context(), c.AsUser(user), args)
		}
	}
	var depth int
	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls ID PATH",
		Short:   "List a directory",
		Example: "  ember files ls <id> /home/user\n  ember files ls --depth 2 <id> .",
		Args:    cobra.ExactArgs(2),
		RunE: withClient(func(ctx context.Context, c *client.Client, args []string) error {
			es, err := c.ListFiles(ctx, args[0], args[1], depth)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(es)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			for _, e := range es {
				name := e.Path
				if e.SymlinkTarget != "" {
					name += " -> " + e.SymlinkTarget
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", e.Permissions, e.Owner, e.Group, e.Size, e.ModifiedAt.Format("2006-01-02 15:04"), name)
			}
			return tw.Flush()
		}),
	}
	ls.Flags().IntVar(&depth, "depth", 1, "levels to list (1: the directory's entries)")
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	stat := &cobra.Command{
		Use:     "stat ID PATH",
		Short:   "Describe one file, directory or link as JSON",
		Example: "  ember files stat <id> /etc/hostname",
		Args:    cobra.ExactArgs(2),
		RunE: withClient(func(ctx context.Context, c *client.Client, args []string) error {
			e, err := c.StatFile(ctx, args[0], args[1])
			if err != nil {
				return err
			}
			return printJSON(e)
		}),
	}
	rm := &cobra.Command{
		Use:     "rm ID PATH...",
		Short:   "Remove files or directory trees",
		Example: "  ember files rm <id> /home/user/old.log /home/user/build",
		Args:    cobra.MinimumNArgs(2),
		RunE: withClient(func(ctx context.Context, c *client.Client, args []string) error {
			for _, p := range args[1:] {
				if err := c.RemoveFile(ctx, args[0], p); err != nil {
					return err
				}
			}
			return nil
		}),
	}
	mkdir := &cobra.Command{
		Use:     "mkdir ID PATH...",
		Short:   "Make directories and their missing parents",
		Example: "  ember files mkdir <id> /home/user/work/data",
		Args:    cobra.MinimumNArgs(2),
		RunE: withClient(func(ctx context.Context, c *client.Client, args []string) error {
			for _, p := range args[1:] {
				if _, err := c.MakeDir(ctx, args[0], p); err != nil {
					return err
				}
			}
			return nil
		}),
	}
	cmd.AddCommand(ls, stat, rm, mkdir)
	return cmd
}
