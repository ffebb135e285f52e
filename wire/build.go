package wire

// The types of a template build's progress events (POST /v1/templates
// answers with them as NDJSON, one per line).
const (
	// BuildStep: a step starts (Step of Total, Instruction, Line; Cached
	// when its result is reused).
	BuildStep = "step"
	// BuildOutput: output of the running step (Stream "stdout" or
	// "stderr", Data the bytes).
	BuildOutput = "output"
	// BuildStepDone: a step ended (DurationMS).
	BuildStepDone = "step_done"
	// BuildLog: what the builder is doing between outputs (unpacking the
	// base, booting the build sandbox).
	BuildLog = "log"
	// BuildWarning: something of the definition was ignored (EXPOSE,
	// VOLUME, …), or a stand-in used.
	BuildWarning = "warning"
	// BuildDone: the template is published (Template, DurationMS); the
	// last event of a build that worked.
	BuildDone = "done"
	// BuildError: the build failed and published nothing (Code, Message;
	// for a failed step Step, ExitCode and Output, its last lines); the
	// last event of a build that did not work.
	BuildError = "error"
)

// BuildEvent is one line of a template build's progress.
type BuildEvent struct {
	Type string `json:"type"`
	// Step and Total number the steps: FROM is step 1.
	Step        int    `json:"step,omitempty"`
	Total       int    `json:"total,omitempty"`
	Instruction string `json:"instruction,omitempty"`
	// Line is the Dockerfile line of the step or the error, when known.
	Line   int    `json:"line,omitempty"`
	Cached bool   `json:"cached,omitempty"`
	Stream string `json:"stream,omitempty"`
	Data   []byte `json:"data,omitempty"`
	// Message is a log line, a warning or an error's message.
	Message string `json:"message,omitempty"`
	// ElapsedMS is the time since the build started; DurationMS a step's
	// or the whole build's.
	ElapsedMS  float64   `json:"elapsed_ms"`
	DurationMS float64   `json:"duration_ms,omitempty"`
	Template   *Template `json:"template,omitempty"`
	Code       string    `json:"code,omitempty"`
	// ExitCode is a failed step's exit code (-1: it did not exit).
	ExitCode *int     `json:"exit_code,omitempty"`
	Output   []string `json:"output,omitempty"`
}

// BuildTemplateRequest is the JSON form of a build's options; POST
// /v1/templates takes them as query parameters beside the context's tar
// stream (see the OpenAPI document).
type BuildTemplateRequest struct {
	Name       string            `json:"name"`
	Dockerfile string            `json:"dockerfile,omitempty"`
	BuildArgs  map[string]string `json:"build_args,omitempty"`
	StartCmd   string            `json:"start_cmd,omitempty"`
	ReadyCmd   string            `json:"ready_cmd,omitempty"`
	DiskMiB    int               `json:"disk_mib,omitempty"`
	NoCache    bool              `json:"no_cache,omitempty"`
}
