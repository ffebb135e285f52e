// Package runner runs the external tools ember shells out to where no library
// exists (mkfs.ext4, qemu-img, make). Every call goes through Run so the
// environment is predictable and a failure carries the tool's own words.
package runner

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// maxOutput bounds how much of a failing tool's output is put into an error.
const maxOutput = 4096

// Run runs name with args under LC_ALL=C and returns its standard output. On
// failure the error names the command and carries the tail of its combined
// output.
func Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return RunIn(ctx, "", nil, name, args...)
}

// RunIn is Run with a working directory and extra environment variables.
func RunIn(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	var stdout, combined bytes.Buffer
	// exec copies stdout and stderr on two goroutines; both reach combined,
	// so both go through one lock.
	var mu sync.Mutex
	cmd.Stdout = &multi{mu: &mu, a: &stdout, b: &combined}
	cmd.Stderr = &multi{mu: &mu, b: &combined}
	if err := cmd.Run(); err != nil {
		out := strings.TrimSpace(combined.String())
		if len(out) > maxOutput {
			out = "…" + out[len(out)-maxOutput:]
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return stdout.Bytes(), nil
}

// multi writes to both buffers (a may be nil) under mu; stdout is kept apart
// while the error still sees output in the order the tool wrote it.
type multi struct {
	mu   *sync.Mutex
	a, b *bytes.Buffer
}

func (m *multi) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.a != nil {
		m.a.Write(p)
	}
	return m.b.Write(p)
}
