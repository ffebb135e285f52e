package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/emberhq/ember/client"
)

// payload is every byte value, invalid UTF-8 and a multi-byte character
// split at odd places, then random bytes: what mangles text-only pipes.
func payload(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, 0, n)
	for i := range 256 {
		b = append(b, byte(i))
	}
	b = append(b, []byte("é€😀\xff\xfe")...)
	rest := make([]byte, n-len(b))
	rand.Read(rest)
	return append(b, rest...)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// guestSha is the SHA-256 of a file as the guest computes it.
func guestSha(t *testing.T, c *client.Client, id, path string) string {
	t.Helper()
	res, err := c.Exec(context.Background(), id, client.ExecRequest{Cmd: "sha256sum", Args: []string{path}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("sha256sum %s: %v %s", path, err, res.Stderr)
	}
	return strings.Fields(string(res.Stdout))[0]
}

// TestFilesAndBytes: binary data crosses exec and the file API both ways
// unchanged, checked by hash inside and outside the guest; E2B's shell and
// user are in the template; a user's files are theirs; bad paths get their
// codes.
func TestFilesAndBytes(t *testing.T) {
	d := start(t, 5000)
	ctx := context.Background()
	c := d.Client
	sb, err := c.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	data := payload(t, 3<<20)

	t.Run("exec stdin to file", func(t *testing.T) {
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "cat > /tmp/in.bin"}, Stdin: data[:1<<20]})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("exec: %v %+v", err, res)
		}
		if got := guestSha(t, c, sb.ID, "/tmp/in.bin"); got != sha(data[:1<<20]) {
			t.Fatalf("guest hash %s, want %s", got, sha(data[:1<<20]))
		}
	})
	t.Run("file API up, exec and file API down", func(t *testing.T) {
		if _, err := c.WriteFile(ctx, sb.ID, "/tmp/up.bin", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if got := guestSha(t, c, sb.ID, "/tmp/up.bin"); got != sha(data) {
			t.Fatalf("guest hash %s, want %s", got, sha(data))
		}
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "cat", Args: []string{"/tmp/up.bin"}})
		if err != nil || sha(res.Stdout) != sha(data) || res.Truncated {
			t.Fatalf("buffered exec gave %d bytes (truncated %v), %v", len(res.Stdout), res.Truncated, err)
		}
		var streamed bytes.Buffer
		if _, err := c.ExecStream(ctx, sb.ID, client.ExecRequest{Cmd: "cat", Args: []string{"/tmp/up.bin"}}, &streamed, io.Discard); err != nil || sha(streamed.Bytes()) != sha(data) {
			t.Fatalf("streamed exec gave %d bytes, %v", streamed.Len(), err)
		}
		body, err := c.ReadFile(ctx, sb.ID, "/tmp/up.bin")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(body)
		body.Close()
		if err != nil || sha(got) != sha(data) {
			t.Fatalf("download gave %d bytes, %v", len(got), err)
		}
	})
	t.Run("bash and the user account", func(t *testing.T) {
		uc := c.AsUser("user")
		res, err := uc.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/bash", Args: []string{"-l", "-c", `echo "$(id -un) $HOME $PWD ${BASH_VERSION%%.*}"`}})
		if err != nil || strings.TrimSpace(string(res.Stdout)) != "user /home/user /home/user 5" {
			t.Fatalf("bash as user: %q %q, %v", res.Stdout, res.Stderr, err)
		}
		if _, err := uc.WriteFile(ctx, sb.ID, "notes/mine.txt", strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
		e, err := c.StatFile(ctx, sb.ID, "/home/user/notes/mine.txt")
		if err != nil || e.Owner != "user" {
			t.Fatalf("relative write as user: %+v, %v; want /home/user/notes/mine.txt owned by user", e, err)
		}
		if _, err := uc.ReadFile(ctx, sb.ID, "/etc/shadow"); !client.IsCode(err, "permission_denied") {
			t.Errorf("user reads /etc/shadow: %v, want permission_denied", err)
		}
		if _, err := c.AsUser("nobody-such").StatFile(ctx, sb.ID, "/"); !client.IsCode(err, "unknown_user") {
			t.Errorf("unknown user: %v", err)
		}
		if _, err := c.AsUser("nobody-such").Exec(ctx, sb.ID, client.ExecRequest{Cmd: "true"}); !client.IsCode(err, "unknown_user") {
			t.Errorf("exec as an unknown user: %v", err)
		}
	})
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			err  error
			code string
		}{
			{"missing", func() error { _, err := c.ReadFile(ctx, sb.ID, "/no/such"); return err }(), "file_not_found"},
			{"directory", func() error { _, err := c.ReadFile(ctx, sb.ID, "/tmp"); return err }(), "is_directory"},
			{"not a directory", func() error { _, err := c.ListFiles(ctx, sb.ID, "/tmp/up.bin", 1); return err }(), "not_directory"},
		} {
			if !client.IsCode(tc.err, tc.code) {
				t.Errorf("%s: %v, want %s", tc.name, tc.err, tc.code)
			}
		}
	})
	t.Run("full disk leaves nothing", func(t *testing.T) {
		// A 4 MiB tmpfs, filled by a 6 MiB upload; mounting needs root.
		c := c.AsUser("root")
		res, err := c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "mkdir -p /mnt/small && mount -t tmpfs -o size=4m tmpfs /mnt/small && echo old > /mnt/small/f"}})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("mount: %v %s", err, res.Stderr)
		}
		_, err = c.WriteFile(ctx, sb.ID, "/mnt/small/f", bytes.NewReader(make([]byte, 6<<20)))
		if !client.IsCode(err, "no_space") {
			t.Fatalf("upload into a full disk: %v, want no_space", err)
		}
		res, err = c.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "ls -A /mnt/small; cat /mnt/small/f"}})
		if err != nil || string(res.Stdout) != "f\nold\n" {
			t.Fatalf("after the failed upload: %q, %v; want only the old file", res.Stdout, err)
		}
	})
}

// TestCopyAndShell: ember cp moves a tree in and out like docker cp, and
// ember shell drives a real terminal: prompt, command, resize, exit code.
func TestCopyAndShell(t *testing.T) {
	d := start(t, 5050)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(d.Bin, args...)
		cmd.Env = d.Env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ember %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	src := filepath.Join(t.TempDir(), "tree")
	files := map[string][]byte{"a.txt": []byte("alpha\n"), "sub/b.bin": payload(t, 300<<10), "sub/deeper/c": {}}
	for name, b := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("a.txt", filepath.Join(src, "link"))

	run("cp", src, sb.ID+":/tmp/copied") // a missing target becomes the tree
	run("cp", src, sb.ID+":/tmp")        // an existing directory takes it by name
	run("cp", filepath.Join(src, "a.txt"), sb.ID+":/tmp/single.txt")
	if got := guestSha(t, d.Client, sb.ID, "/tmp/tree/sub/b.bin"); got != sha(files["sub/b.bin"]) {
		t.Fatalf("copied file hash in the guest %s", got)
	}
	if out := run("exec", sb.ID, "--", "readlink", "/tmp/copied/link"); out != "a.txt\n" {
		t.Fatalf("link in the guest: %q", out)
	}
	back := filepath.Join(t.TempDir(), "back")
	run("cp", sb.ID+":/tmp/copied", back)
	err = filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if de.Type()&fs.ModeSymlink != 0 {
			if l, err := os.Readlink(filepath.Join(back, rel)); err != nil || l != "a.txt" {
				t.Errorf("%s: link %q, %v", rel, l, err)
			}
			return nil
		}
		got, err := os.ReadFile(filepath.Join(back, rel))
		if err != nil || sha(got) != sha(files[rel]) {
			t.Errorf("%s came back with %d bytes, %v", rel, len(got), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	one := filepath.Join(t.TempDir(), "one.txt")
	run("cp", sb.ID+":/tmp/single.txt", one)
	if b, _ := os.ReadFile(one); string(b) != "alpha\n" {
		t.Fatalf("single file back: %q", b)
	}
	if out := run("files", "ls", sb.ID, "/tmp/copied"); !strings.Contains(out, "/tmp/copied/sub") || !strings.Contains(out, "-> a.txt") {
		t.Fatalf("files ls:\n%s", out)
	}

	// ember exec -i is interactive: each line comes back before the next
	// is typed, and the end of input ends cat.
	ecmd := exec.Command(d.Bin, "exec", "-i", sb.ID, "--", "cat")
	ecmd.Env = d.Env()
	in, _ := ecmd.StdinPipe()
	var echoed safeBuffer
	ecmd.Stdout = &echoed
	if err := ecmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"first line\n", "second line\n"} {
		io.WriteString(in, line)
		deadline := time.Now().Add(15 * time.Second)
		for !strings.HasSuffix(echoed.String(), line) {
			if time.Now().After(deadline) {
				ecmd.Process.Kill()
				t.Fatalf("%q not echoed while stdin stays open; got %q", line, echoed.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	in.Close()
	if err := ecmd.Wait(); err != nil || echoed.String() != "first line\nsecond line\n" {
		t.Fatalf("exec -i: %v, %q", err, echoed.String())
	}

	// ember shell on a terminal of ours, as a person would use it.
	cmd := exec.Command(d.Bin, "shell", sb.ID)
	cmd.Env = append(d.Env(), "TERM=xterm")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 100, Rows: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var screen safeBuffer
	go io.Copy(&screen, ptmx)
	waitScreen := func(re string) {
		t.Helper()
		rx := regexp.MustCompile(re)
		deadline := time.Now().Add(30 * time.Second)
		for !rx.MatchString(screen.String()) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q on the terminal:\n%s", re, screen.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitScreen(`bash-5[.0-9]*\$ `)
	io.WriteString(ptmx, "stty size; echo sum-$((20+22))\r")
	waitScreen(`30 100`)
	waitScreen(`sum-42`)
	if err := pty.Setsize(ptmx, &pty.Winsize{Cols: 132, Rows: 43}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // SIGWINCH reaches ember, which resizes the sandbox's terminal
	io.WriteString(ptmx, "stty size\r")
	waitScreen(`43 132`)
	io.WriteString(ptmx, "exit 5\r")
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
			t.Fatalf("ember shell exited with %v, want status 5", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("ember shell did not exit:\n%s", screen.String())
	}
}

// TestExecMemoryFlat: a command that prints without end under the buffered
// exec for 20 s costs the daemon its output limit, not more.
func TestExecMemoryFlat(t *testing.T) {
	d := start(t, 5100)
	ctx := context.Background()
	sb, err := d.Client.CreateSandbox(ctx, client.CreateSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	before, err := d.RSS()
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		res client.ExecResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := d.Client.Exec(ctx, sb.ID, client.ExecRequest{Cmd: "timeout", Args: []string{"20", "yes"}, TimeoutS: 60})
		done <- result{res, err}
	}()
	// The highest RSS in two windows after yes has long filled the kept
	// 16 MiB: a daemon that kept more would be higher in the second.
	var peak, early, late int64
	var r result
	begin := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case r = <-done:
			break wait
		case <-tick.C:
			rss, err := d.RSS()
			if err != nil {
				continue
			}
			peak = max(peak, rss)
			switch at := time.Since(begin); {
			case at > 8*time.Second && at < 13500*time.Millisecond:
				early = max(early, rss)
			case at >= 13500*time.Millisecond && at < 19*time.Second:
				late = max(late, rss)
			}
		}
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("daemon RSS %d MiB before, at most %d MiB from 8 s to 13.5 s and %d MiB from 13.5 s to 19 s, peak %d MiB; kept %d MiB of stdout",
		before>>20, early>>20, late>>20, peak>>20, len(r.res.Stdout)>>20)
	if late-early > 16<<20 {
		t.Errorf("daemon RSS rose by %d MiB in the last 5.5 s of yes, want it flat (at most 16)", (late-early)>>20)
	}
	if !r.res.Truncated || len(r.res.Stdout) != 16<<20 {
		t.Fatalf("kept %d bytes, truncated %v; want the 16 MiB limit and truncated", len(r.res.Stdout), r.res.Truncated)
	}
	// The kept 16 MiB, and the garbage collector's headroom over it and
	// over the output passing through.
	if growth := peak - before; growth > 80<<20 {
		t.Fatalf("daemon RSS grew by %d MiB while yes ran, want at most 80", growth>>20)
	}
}

// safeBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
