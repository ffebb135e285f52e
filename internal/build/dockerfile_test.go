package build

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseDockerfile(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		args     map[string]string
		base     Base
		steps    []Step
		warnings int
	}{
		{
			name: "debian with python and a script",
			src: `FROM debian:bookworm
RUN apt-get update && apt-get install -y python3
COPY hello.py /app/
WORKDIR /app
CMD ["python3", "hello.py"]
`,
			base: Base{Kind: BaseImage, Ref: "debian:bookworm", Line: 1},
			steps: []Step{
				{Kind: Run, Command: "apt-get update && apt-get install -y python3", Line: 2, Text: "RUN apt-get update && apt-get install -y python3"},
				{Kind: Copy, Sources: []string{"hello.py"}, Path: "/app/", Line: 3, Text: "COPY hello.py /app/"},
				{Kind: Workdir, Path: "/app", Line: 4, Text: "WORKDIR /app"},
				{Kind: Start, Command: "python3 hello.py", Line: 5, Text: "START python3 hello.py"},
			},
		},
		{
			name: "built-in debian, env, user, relative workdir and copy",
			src: `FROM ember/debian
ENV GREETING=hi PORT=8000
WORKDIR /srv
WORKDIR web
COPY --chown=user:user --chmod=755 a b ./
USER user
RUN echo $GREETING
`,
			base: Base{Kind: BaseDebian, Ref: DebianRef, Line: 1},
			steps: []Step{
				{Kind: Env, Env: []KeyValue{{"GREETING", "hi"}, {"PORT", "8000"}}, Line: 2, Text: "ENV GREETING=hi PORT=8000"},
				{Kind: Workdir, Path: "/srv", Line: 3, Text: "WORKDIR /srv"},
				{Kind: Workdir, Path: "/srv/web", Line: 4, Text: "WORKDIR web"},
				{Kind: Copy, Sources: []string{"a", "b"}, Path: "/srv/web/", Chown: "user:user", Mode: 0o755, Line: 5, Text: "COPY --chown=user:user --chmod=755 a b ./"},
				{Kind: User, Path: "user", Line: 6, Text: "USER user"},
				{Kind: Run, Command: "echo $GREETING", Line: 7, Text: "RUN echo $GREETING"},
			},
		},
		{
			name: "args: meta arg in FROM, build arg overrides, RUN sees them",
			src: `ARG TAG=bookworm
FROM debian:${TAG}
ARG VERSION=1
ARG EMPTY
ENV DIR=/opt/v${VERSION}
COPY x ${DIR}/
RUN make VERSION=$VERSION
`,
			args: map[string]string{"VERSION": "2"},
			base: Base{Kind: BaseImage, Ref: "debian:bookworm", Line: 2},
			steps: []Step{
				{Kind: Env, Env: []KeyValue{{"DIR", "/opt/v2"}}, Line: 5, Text: "ENV DIR=/opt/v${VERSION}"},
				{Kind: Copy, Sources: []string{"x"}, Path: "/opt/v2/", Line: 6, Text: "COPY x ${DIR}/"},
				{Kind: Run, Command: "make VERSION=$VERSION", Env: []KeyValue{{"EMPTY", ""}, {"VERSION", "2"}}, Line: 7, Text: "RUN make VERSION=$VERSION"},
			},
		},
		{
			name: "ignored instructions warn, entrypoint with cmd starts",
			src: `FROM /srv/images/app.tar
EXPOSE 8080
VOLUME /data
LABEL a=b
HEALTHCHECK CMD true
ENTRYPOINT ["/usr/bin/server", "--port"]
CMD ["8080"]
`,
			base:     Base{Kind: BaseImage, Ref: "/srv/images/app.tar", Line: 1},
			steps:    []Step{{Kind: Start, Command: "/usr/bin/server --port 8080", Line: 7, Text: "START /usr/bin/server --port 8080"}},
			warnings: 4,
		},
		{
			name:  "exec form quoted, oci-layout base, template base",
			src:   "FROM oci-layout:///var/lib/img\nRUN [\"sh\", \"-c\", \"echo 'a b'\"]\n",
			base:  Base{Kind: BaseImage, Ref: "/var/lib/img", Line: 1},
			steps: []Step{{Kind: Run, Command: `sh -c 'echo '\''a b'\'''`, Line: 2, Text: `RUN ["sh", "-c", "echo 'a b'"]`}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseDockerfile(strings.NewReader(tc.src), tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Base != tc.base {
				t.Errorf("base = %+v, want %+v", spec.Base, tc.base)
			}
			if !reflect.DeepEqual(spec.Steps, tc.steps) {
				t.Errorf("steps:\n got %+v\nwant %+v", spec.Steps, tc.steps)
			}
			if len(spec.Warnings) != tc.warnings {
				t.Errorf("warnings = %q, want %d", spec.Warnings, tc.warnings)
			}
			for _, w := range spec.Warnings {
				if !strings.HasPrefix(w, "line ") {
					t.Errorf("warning %q names no line", w)
				}
			}
		})
	}
}

func TestParseDockerfileErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want error
		line int
	}{
		{"unknown instruction", "FROM debian\nRUN true\nFROBNICATE now\n", ErrUnknownInstruction, 3},
		{"RUN with nothing to run", "FROM debian\nRUN\n", ErrDockerfile, 2},
		{"no from", "RUN true\n", ErrDockerfile, 1},
		{"empty", "", ErrDockerfile, 0},
		{"two stages", "FROM a AS x\nFROM b\n", ErrDockerfile, 2},
		{"copy from stage", "FROM a\nCOPY --from=x /a /b\n", ErrDockerfile, 2},
		{"copy outside context", "FROM a\nCOPY ../secret /b\n", ErrCopySource, 2},
		{"add url", "FROM a\nADD https://example.com/x /x\n", ErrDockerfile, 2},
		{"run mount", "FROM a\nRUN --mount=type=cache,target=/c true\n", ErrDockerfile, 2},
		{"bad chmod", "FROM a\nCOPY --chmod=rwx a /a\n", ErrDockerfile, 2},
		{"heredoc", "FROM a\nRUN <<EOF\necho hi\nEOF\n", ErrDockerfile, 2},
		{"other platform", "FROM --platform=linux/arm64 debian\n", ErrPlatform, 1},
		{"env without value", "FROM a\nENV\n", ErrDockerfile, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDockerfile(strings.NewReader(tc.src), nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			var ie *InputError
			if !errors.As(err, &ie) || ie.Line != tc.line {
				t.Fatalf("err = %#v, want an *InputError at line %d", err, tc.line)
			}
		})
	}
}

func TestParseBase(t *testing.T) {
	for ref, want := range map[string]Base{
		"ember/debian":          {Kind: BaseDebian, Ref: DebianRef},
		"ember/debian:bookworm": {Kind: BaseDebian, Ref: DebianRef},
		"debian:bookworm":       {Kind: BaseImage, Ref: "debian:bookworm"},
		"oci-layout:///x/y":     {Kind: BaseImage, Ref: "/x/y"},
		"code":                  {Kind: BaseImage, Ref: "code"},
	} {
		if got := ParseBase(ref); got != want {
			t.Errorf("ParseBase(%q) = %+v, want %+v", ref, got, want)
		}
	}
}
