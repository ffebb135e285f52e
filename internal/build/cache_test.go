package build

import (
	"io/fs"
	"testing"
	"testing/fstest"
	"time"
)

// TestStepKeys holds the cache key to what a step does: a change of what
// it does (or of its parent, or of the files a COPY copies) is another
// key; where and how it was written is not.
func TestStepKeys(t *testing.T) {
	run := Step{Kind: Run, Command: "apt-get install -y python3", Line: 3, Text: "RUN apt-get install -y python3"}
	parent := baseKey("image sha256:aa", "guest 1", 4096)
	key := stepKey(parent, run, "")
	for _, tc := range []struct {
		name   string
		parent string
		step   Step
		digest string
		same   bool
	}{
		{"the same step elsewhere in the file", parent, Step{Kind: Run, Command: run.Command, Line: 9, Text: "RUN  apt-get install -y python3"}, "", true},
		{"forced", parent, Step{Kind: Run, Command: run.Command, Force: true}, "", true},
		{"another command", parent, Step{Kind: Run, Command: "apt-get install -y python3-pip"}, "", false},
		{"as another user", parent, Step{Kind: Run, Command: run.Command, User: "user"}, "", false},
		{"another parent", baseKey("image sha256:bb", "guest 1", 4096), run, "", false},
		{"another guest layer", baseKey("image sha256:aa", "guest 2", 4096), run, "", false},
		{"another disk", baseKey("image sha256:aa", "guest 1", 8192), run, "", false},
		{"another kind", parent, Step{Kind: Start, Command: run.Command}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := stepKey(tc.parent, tc.step, tc.digest) == key; got != tc.same {
				t.Errorf("same key = %v, want %v", got, tc.same)
			}
		})
	}
	// A COPY's key follows the files it copies, and only those.
	cp := Step{Kind: Copy, Sources: []string{"app"}, Path: "/opt/app/"}
	files := func(hello string, mode uint32, mtime time.Time) fstest.MapFS {
		return fstest.MapFS{
			"app/hello.py": {Data: []byte(hello), Mode: fs.FileMode(mode), ModTime: mtime},
			"other.txt":    {Data: []byte("not copied"), Mode: 0o644},
		}
	}
	copyKey := func(t *testing.T, ctx fstest.MapFS) string {
		t.Helper()
		p, err := planCopy(ctx, cp)
		if err != nil {
			t.Fatal(err)
		}
		d, err := p.digest(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return stepKey(parent, cp, d)
	}
	base := copyKey(t, files("print(1)", 0o644, time.Unix(1, 0)))
	for _, tc := range []struct {
		name string
		ctx  fstest.MapFS
		same bool
	}{
		{"an unrelated file changed", func() fstest.MapFS {
			m := files("print(1)", 0o644, time.Unix(1, 0))
			m["other.txt"] = &fstest.MapFile{Data: []byte("changed")}
			return m
		}(), true},
		{"a copied file changed", files("print(2)", 0o644, time.Unix(1, 0)), false},
		{"a copied file's mode changed", files("print(1)", 0o755, time.Unix(1, 0)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := copyKey(t, tc.ctx) == base; got != tc.same {
				t.Errorf("same key = %v, want %v", got, tc.same)
			}
		})
	}
}
