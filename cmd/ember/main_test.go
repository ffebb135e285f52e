package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// run executes the ember command line with args and returns its output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Every command's --help carries an example of its use.
func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Name() == "help" || c.Hidden {
			return
		}
		n++
		if c.Example == "" {
			t.Errorf("%q has no example", c.CommandPath())
			return
		}
		for _, line := range strings.Split(c.Example, "\n") {
			if !strings.HasPrefix(line, "  ") || !strings.Contains(line, "ember") {
				t.Errorf("%q: example line %q is not an indented ember command line", c.CommandPath(), line)
			}
		}
	}
	root := newRoot()
	walk(root)
	if n < 20 {
		t.Fatalf("walked %d commands, want every one", n)
	}
	out, err := run(t, "exec", "--help")
	if err != nil || !strings.Contains(out, "Examples:\n  ember exec SANDBOX -- uname -a") {
		t.Errorf("exec --help: %v\n%s", err, out)
	}
}

// cobra's completion commands write to the standard output they found when
// they were made, so the test reads that.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__ember_", "zsh": "#compdef ember", "fish": "complete -c ember"} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout := os.Stdout
		os.Stdout = w
		got := make(chan []byte)
		go func() { b, _ := io.ReadAll(r); got <- b }()
		_, err = run(t, "completion", shell)
		os.Stdout = stdout
		w.Close()
		out := <-got
		r.Close()
		if err != nil || !bytes.Contains(out, []byte(want)) {
			t.Errorf("completion %s: %v, output lacks %q", shell, err, want)
		}
	}
}

func TestVersion(t *testing.T) {
	old := commit
	commit = "0123abcd"
	defer func() { commit = old }()
	t.Setenv("EMBER_URL", "http://127.0.0.1:1")
	t.Setenv("EMBER_API_KEY", "k")
	out, err := run(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ember " + version + "\n", "commit:  0123abcd\n", "go:      " + runtime.Version(),
		"vmm:     firecracker, qemu", "rootfs:  devmapper, reflink, qcow2, copy", "daemon:  none answering"} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

func TestPrintConfig(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("serve runs on Linux only")
	}
	path := filepath.Join(t.TempDir(), "ember.toml")
	if err := os.WriteFile(path, []byte("slot-count = 20\nlisten = \"0.0.0.0:7070\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "serve", "--config", path, "--print-config", "--listen", "127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"slot-count = 20 # " + path + ":1\n", "listen = \"127.0.0.1:9\" # flag --listen\n", "domain = \"localhost\" # default\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out)
		}
	}
	os.WriteFile(path, []byte("slot_count = 20\n"), 0o600)
	if _, err := run(t, "serve", "--config", path, "--print-config"); err == nil || !strings.Contains(err.Error(), path+":1: slot_count: unknown key (did you mean \"slot-count\"?)") {
		t.Errorf("bad key: %v", err)
	}
}
