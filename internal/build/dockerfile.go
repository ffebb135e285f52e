package build

import (
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// DebianRef is the name of ember's built-in Debian base.
const DebianRef = "ember/debian:bookworm"

// ParseDockerfile translates a Dockerfile into a Spec, with buildArgs
// overriding ARG defaults. It takes FROM, RUN, COPY and ADD (from the
// context, with --chown and --chmod), ENV, ARG, WORKDIR and USER; CMD and
// ENTRYPOINT become the start command (as E2B's SDK reads a Dockerfile).
// Instructions that mean nothing for a template (EXPOSE, VOLUME,
// HEALTHCHECK, LABEL, …) are ignored with a warning; an instruction nobody
// knows is an error naming its line.
func ParseDockerfile(r io.Reader, buildArgs map[string]string) (Spec, error) {
	res, err := parser.Parse(r)
	if err != nil {
		return Spec{}, inputError(ErrDockerfile, lineOf(err), "", "%s", cleanParseError(err))
	}
	t := translator{args: map[string]string{}, buildArgs: buildArgs, workdir: "/", lex: shell.NewLex(res.EscapeToken)}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		t.spec.Warnings = append(t.spec.Warnings, fmt.Sprintf("line %d: %s", line, w.Short))
	}
	for _, n := range res.AST.Children {
		if err := t.node(n); err != nil {
			return Spec{}, err
		}
	}
	if !t.from {
		return Spec{}, inputError(ErrDockerfile, 0, "", "no FROM instruction")
	}
	if t.entrypoint != "" || t.cmd != "" {
		cmd := strings.TrimSpace(t.entrypoint + " " + t.cmd)
		t.spec.Steps = append(t.spec.Steps, Step{Kind: Start, Command: cmd, Line: t.cmdLine, Text: "START " + cmd})
	}
	return t.spec, nil
}

// translator walks a Dockerfile's instructions in order, keeping what later
// ones depend on (variables for expansion, the working directory).
type translator struct {
	spec      Spec
	from      bool
	lex       *shell.Lex
	buildArgs map[string]string
	// args are the ARGs in scope (RUN sees them in its environment; the
	// template does not keep them); env the ENVs so far.
	args    map[string]string
	argKeys []string
	env     []KeyValue
	workdir string
	// entrypoint and cmd, shell-quoted, make the start command.
	entrypoint, cmd string
	cmdLine         int
}

func (t *translator) node(n *parser.Node) error {
	line := n.StartLine
	if len(n.Heredocs) > 0 {
		return inputError(ErrDockerfile, line, "", "heredocs are not supported: put the script in the build context and COPY it")
	}
	v, err := instructions.ParseInstruction(n)
	if err != nil {
		var unknown *instructions.UnknownInstructionError
		if errors.As(err, &unknown) {
			return inputError(ErrUnknownInstruction, line, "", "unknown instruction %s", strings.ToUpper(unknown.Instruction))
		}
		return inputError(ErrDockerfile, line, "", "%s", cleanParseError(err))
	}
	text := strings.TrimSpace(n.Original)
	if a, ok := v.(*instructions.ArgCommand); ok {
		return t.arg(a, line)
	}
	if s, ok := v.(*instructions.Stage); ok {
		return t.stage(s, line)
	}
	if !t.from {
		return inputError(ErrDockerfile, line, "", "%s before FROM", strings.ToUpper(n.Value))
	}
	if e, ok := v.(interface {
		Expand(instructions.SingleWordExpander) error
	}); ok {
		if _, isRun := v.(*instructions.RunCommand); !isRun {
			// RUN is expanded by the shell that runs it, with the
			// variables in its environment.
			if err := e.Expand(t.expand); err != nil {
				return inputError(ErrDockerfile, line, "", "expand variables: %v", err)
			}
		}
	}
	switch c := v.(type) {
	case *instructions.RunCommand:
		if len(c.FlagsUsed) > 0 {
			return inputError(ErrDockerfile, line, "", "RUN --%s is not supported", c.FlagsUsed[0])
		}
		if strings.TrimSpace(shellForm(c.ShellDependantCmdLine)) == "" {
			return inputError(ErrDockerfile, line, "", "RUN requires at least one argument")
		}
		t.spec.Steps = append(t.spec.Steps, Step{Kind: Run, Command: shellForm(c.ShellDependantCmdLine), Env: t.argEnv(), Line: line, Text: text})
	case *instructions.CopyCommand:
		switch {
		case c.From != "":
			return inputError(ErrDockerfile, line, "", "COPY --from is not supported: one stage only")
		case c.Parents || len(c.ExcludePatterns) > 0 || c.Link:
			return inputError(ErrDockerfile, line, "", "COPY --parents, --exclude and --link are not supported")
		}
		return t.copy(c.SourcesAndDest, c.Chown, c.Chmod, line, text)
	case *instructions.AddCommand:
		for _, src := range c.SourcePaths {
			if strings.Contains(src, "://") || strings.HasPrefix(src, "git@") {
				return inputError(ErrDockerfile, line, src, "ADD from a URL is not supported: download it in a RUN step")
			}
		}
		if c.Checksum != "" || len(c.ExcludePatterns) > 0 || c.Link {
			return inputError(ErrDockerfile, line, "", "ADD --checksum, --exclude and --link are not supported")
		}
		return t.copy(c.SourcesAndDest, c.Chown, c.Chmod, line, text)
	case *instructions.EnvCommand:
		var kvs []KeyValue
		for _, kv := range c.Env {
			kvs = append(kvs, KeyValue{kv.Key, kv.Value})
			t.setEnv(kv.Key, kv.Value)
		}
		t.spec.Steps = append(t.spec.Steps, Step{Kind: Env, Env: kvs, Line: line, Text: text})
	case *instructions.WorkdirCommand:
		dir := c.Path
		if !path.IsAbs(dir) {
			dir = path.Join(t.workdir, dir)
		}
		t.workdir = path.Clean(dir)
		t.spec.Steps = append(t.spec.Steps, Step{Kind: Workdir, Path: t.workdir, Line: line, Text: text})
	case *instructions.UserCommand:
		if c.User == "" {
			return inputError(ErrDockerfile, line, "", "USER needs a user")
		}
		t.spec.Steps = append(t.spec.Steps, Step{Kind: User, Path: c.User, Line: line, Text: text})
	case *instructions.CmdCommand:
		t.cmd, t.cmdLine = shellForm(c.ShellDependantCmdLine), line
	case *instructions.EntrypointCommand:
		t.entrypoint, t.cmdLine = shellForm(c.ShellDependantCmdLine), line
		t.cmd = "" // as in Docker: an ENTRYPOINT resets an earlier CMD
	default:
		t.spec.Warnings = append(t.spec.Warnings, fmt.Sprintf("line %d: %s is ignored: it means nothing for a template", line, strings.ToUpper(n.Value)))
	}
	return nil
}

func (t *translator) stage(s *instructions.Stage, line int) error {
	if t.from {
		return inputError(ErrDockerfile, line, "", "a second FROM: multi-stage builds are not supported")
	}
	t.from = true
	ref, err := t.expand(s.BaseName)
	if err != nil {
		return inputError(ErrDockerfile, line, s.BaseName, "expand variables: %v", err)
	}
	if p := s.Platform; p != "" {
		if p, err = t.expand(p); err != nil {
			return inputError(ErrDockerfile, line, s.Platform, "expand variables: %v", err)
		}
		if p != "linux/amd64" && p != "linux/x86_64" {
			return inputError(ErrPlatform, line, ref, "--platform=%s: guests are linux/amd64", p)
		}
	}
	t.spec.Base = ParseBase(ref)
	t.spec.Base.Line = line
	// ARGs before FROM are in scope for FROM only, unless redeclared.
	t.args, t.argKeys = map[string]string{}, nil
	return nil
}

func (t *translator) arg(a *instructions.ArgCommand, line int) error {
	for _, kv := range a.Args {
		v, set := t.buildArgs[kv.Key]
		if !set && kv.Value != nil {
			expanded, err := t.expand(*kv.Value)
			if err != nil {
				return inputError(ErrDockerfile, line, "", "expand variables: %v", err)
			}
			v, set = expanded, true
		}
		if _, seen := t.args[kv.Key]; !seen {
			t.argKeys = append(t.argKeys, kv.Key)
		}
		if set {
			t.args[kv.Key] = v
		} else if _, ok := t.args[kv.Key]; !ok {
			t.args[kv.Key] = ""
		}
	}
	return nil
}

func (t *translator) copy(sd instructions.SourcesAndDest, chown, chmod string, line int, text string) error {
	if len(sd.SourceContents) > 0 {
		return inputError(ErrDockerfile, line, "", "heredocs are not supported: put the file in the build context")
	}
	if chmod != "" {
		if _, err := strconv.ParseUint(chmod, 8, 32); err != nil {
			return inputError(ErrDockerfile, line, chmod, "--chmod takes an octal mode")
		}
	}
	// A destination ending in / (or naming the working directory) is a
	// directory the sources go into.
	dest, dir := sd.DestPath, strings.HasSuffix(sd.DestPath, "/") || sd.DestPath == "."
	if !path.IsAbs(dest) {
		dest = path.Join(t.workdir, dest)
	}
	dest = path.Clean(dest)
	if dir && dest != "/" {
		dest += "/"
	}
	srcs := make([]string, len(sd.SourcePaths))
	for i, s := range sd.SourcePaths {
		rel := path.Clean(strings.TrimPrefix(s, "/"))
		if rel == ".." || strings.HasPrefix(rel, "../") {
			return inputError(ErrCopySource, line, s, "outside the build context")
		}
		srcs[i] = rel
	}
	st := Step{Kind: Copy, Sources: srcs, Path: dest, Chown: chown, Line: line, Text: text}
	if chmod != "" {
		m, _ := strconv.ParseUint(chmod, 8, 32)
		st.Mode = uint32(m)
	}
	t.spec.Steps = append(t.spec.Steps, st)
	return nil
}

func (t *translator) setEnv(k, v string) {
	for i := range t.env {
		if t.env[i].Key == k {
			t.env[i].Value = v
			return
		}
	}
	t.env = append(t.env, KeyValue{k, v})
}

// argEnv is what a RUN sees of the ARGs in scope, sorted: part of its key.
func (t *translator) argEnv() []KeyValue {
	var out []KeyValue
	for _, k := range t.argKeys {
		if t.envHas(k) {
			continue // an ENV of the same name wins, as in Docker
		}
		out = append(out, KeyValue{k, t.args[k]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (t *translator) envHas(k string) bool {
	for _, kv := range t.env {
		if kv.Key == k {
			return true
		}
	}
	return false
}

// expand substitutes $VAR and ${VAR} with the ARGs and ENVs so far, as
// Docker does in every instruction but RUN, CMD and ENTRYPOINT.
func (t *translator) expand(word string) (string, error) {
	vars := map[string]string{}
	for k, v := range t.args {
		vars[k] = v
	}
	for _, kv := range t.env {
		vars[kv.Key] = kv.Value
	}
	if !t.from {
		// FROM sees the build args given for the meta ARGs.
		vars = t.args
	}
	res, err := t.lex.ProcessWordWithMatches(word, envGetter(vars))
	if err != nil {
		return "", err
	}
	return res.Result, nil
}

// envGetter is a map as the shell lexer reads variables.
type envGetter map[string]string

func (e envGetter) Get(k string) (string, bool) { v, ok := e[k]; return v, ok }

func (e envGetter) Keys() []string {
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// shellForm is a command line as one shell command: the shell form as
// written, the exec form with each word quoted.
func shellForm(c instructions.ShellDependantCmdLine) string {
	if c.PrependShell {
		return strings.Join(c.CmdLine, " ")
	}
	q := make([]string, len(c.CmdLine))
	for i, w := range c.CmdLine {
		q[i] = ShellQuote(w)
	}
	return strings.Join(q, " ")
}

// ShellQuote quotes a word for /bin/sh.
func ShellQuote(w string) string {
	if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == "" {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// ParseBase classifies what a FROM names: ember's built-in Debian, a path
// on the host (an OCI layout directory or an image tarball, absolute or
// oci-layout://), or an image reference (which, when it names an ember
// template, is that template: the builder decides).
func ParseBase(ref string) Base {
	switch {
	case ref == "ember/debian" || ref == DebianRef:
		return Base{Kind: BaseDebian, Ref: DebianRef}
	case strings.HasPrefix(ref, "oci-layout://"):
		return Base{Kind: BaseImage, Ref: strings.TrimPrefix(ref, "oci-layout://")}
	}
	return Base{Kind: BaseImage, Ref: ref}
}

// lineOf digs the first line number out of a parser error.
func lineOf(err error) int {
	var le *parser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		return le.Locations[0][0].Start.Line
	}
	return 0
}

// cleanParseError is the parser's message without the stack the errdefs
// wrapper prints.
func cleanParseError(err error) string {
	msg := err.Error()
	msg, _, _ = strings.Cut(msg, "\n")
	return msg
}
