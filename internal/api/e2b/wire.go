package e2b

import "encoding/json"

// The JSON bodies of E2B's control plane, spelt as the schema compiled into
// the pinned e2b npm package (test/e2b) spells them: a test holds every type
// here to its schema, field for field, and to the older SDKs' schemas the
// compatibility matrix pins.

// newSandboxFields are the fields both create bodies share.
type newSandboxFields struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout,omitempty"`
	Metadata            map[string]string `json:"metadata,omitempty"`
	EnvVars             map[string]string `json:"envVars,omitempty"`
	AllowInternetAccess *bool             `json:"allow_internet_access,omitempty"`
	Network             *NetworkConfig    `json:"network,omitempty"`
	AutoPause           *bool             `json:"autoPause,omitempty"`
	AutoPauseMemory     *bool             `json:"autoPauseMemory,omitempty"`
	AutoResume          *AutoResume       `json:"autoResume,omitempty"`
	// Not served: their presence is refused with 501 (see create).
	MCP          json.RawMessage `json:"mcp,omitempty"`
	IAM          json.RawMessage `json:"iam,omitempty"`
	VolumeMounts []VolumeMount   `json:"volumeMounts,omitempty"`
}

// NewSandbox is the body of POST /sandboxes, the create of the 1.x and
// early 2.x SDKs.
type NewSandbox struct {
	newSandboxFields
	// Secure asks for an envd access token, which every ember sandbox has.
	Secure *bool `json:"secure,omitempty"`
}

// NewSandboxV2 is the body of POST /v2/sandboxes (SDK 2.51.0's create).
type NewSandboxV2 struct {
	newSandboxFields
}

// AutoResume is SandboxAutoResumeConfig.
type AutoResume struct {
	Enabled bool `json:"enabled"`
}

// VolumeMount is SandboxVolumeMount (volumes are not served).
type VolumeMount struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// NetworkConfig is SandboxNetworkConfig: egress lists and who may reach
// the sandbox's ports.
type NetworkConfig struct {
	AllowOut           []string        `json:"allowOut,omitempty"`
	DenyOut            []string        `json:"denyOut,omitempty"`
	AllowPublicTraffic *bool           `json:"allowPublicTraffic,omitempty"`
	EgressProxy        *EgressProxy    `json:"egressProxy,omitempty"`
	HTTPSPorts         []int           `json:"httpsPorts,omitempty"`
	MaskRequestHost    string          `json:"maskRequestHost,omitempty"`
	Rules              json.RawMessage `json:"rules,omitempty"`
}

// NetworkUpdate is SandboxNetworkUpdateConfig, the body of PUT
// /sandboxes/{id}/network: it replaces the egress configuration whole.
type NetworkUpdate struct {
	AllowInternetAccess *bool           `json:"allow_internet_access,omitempty"`
	AllowOut            []string        `json:"allowOut,omitempty"`
	DenyOut             []string        `json:"denyOut,omitempty"`
	EgressProxy         *EgressProxy    `json:"egressProxy,omitempty"`
	Rules               json.RawMessage `json:"rules,omitempty"`
}

// EgressProxy is SandboxEgressProxyConfig (not served).
type EgressProxy struct {
	Address  string `json:"address"`
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// Sandbox is what create, connect, resume and fork answer with.
type Sandbox struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken,omitempty"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             string  `json:"domain"`
}

// ListedSandbox is one element of GET /v2/sandboxes (and GET /sandboxes).
type ListedSandbox struct {
	SandboxID    string            `json:"sandboxID"`
	TemplateID   string            `json:"templateID"`
	Alias        string            `json:"alias,omitempty"`
	ClientID     string            `json:"clientID"`
	CPUCount     int               `json:"cpuCount"`
	MemoryMB     int               `json:"memoryMB"`
	DiskSizeMB   int               `json:"diskSizeMB"`
	EnvdVersion  string            `json:"envdVersion"`
	Metadata     map[string]string `json:"metadata"`
	StartedAt    string            `json:"startedAt"`
	EndAt        string            `json:"endAt"`
	State        string            `json:"state"`
	VolumeMounts []VolumeMount     `json:"volumeMounts"`
}

// SandboxDetail is GET /sandboxes/{id}.
type SandboxDetail struct {
	SandboxID           string            `json:"sandboxID"`
	TemplateID          string            `json:"templateID"`
	Alias               string            `json:"alias,omitempty"`
	ClientID            string            `json:"clientID"`
	CPUCount            int               `json:"cpuCount"`
	MemoryMB            int               `json:"memoryMB"`
	DiskSizeMB          int               `json:"diskSizeMB"`
	EnvdVersion         string            `json:"envdVersion"`
	EnvdAccessToken     string            `json:"envdAccessToken,omitempty"`
	Domain              string            `json:"domain"`
	Metadata            map[string]string `json:"metadata"`
	StartedAt           string            `json:"startedAt"`
	EndAt               string            `json:"endAt"`
	State               string            `json:"state"`
	AllowInternetAccess *bool             `json:"allowInternetAccess"`
	Network             *NetworkConfig    `json:"network,omitempty"`
	Lifecycle           *Lifecycle        `json:"lifecycle,omitempty"`
	VolumeMounts        []VolumeMount     `json:"volumeMounts"`
}

// Lifecycle is SandboxLifecycle: what happens at the end time, and whether
// traffic resumes the paused sandbox.
type Lifecycle struct {
	OnTimeout  string `json:"onTimeout"`
	AutoResume bool   `json:"autoResume"`
}

// Connect is ConnectSandbox and ConnectSandboxV2 (the body of both
// connects): Timeout in seconds from now, which only ever extends the end
// time; Memory false asks for a cold boot from the disk, not served.
type Connect struct {
	Timeout *int  `json:"timeout,omitempty"`
	Memory  *bool `json:"memory,omitempty"`
}

// Resume is ResumedSandbox, the body of the early 2.x SDKs' POST
// /sandboxes/{id}/resume.
type Resume struct {
	Timeout   *int  `json:"timeout,omitempty"`
	AutoPause *bool `json:"autoPause,omitempty"`
	Memory    *bool `json:"memory,omitempty"`
}

// TimeoutRequest is SandboxTimeoutRequest: the end time becomes now +
// Timeout seconds.
type TimeoutRequest struct {
	Timeout int `json:"timeout"`
}

// RefreshRequest is SandboxRefreshRequest: keep the sandbox alive for
// Duration seconds more from now, if that is later than its end time.
type RefreshRequest struct {
	Duration *int `json:"duration,omitempty"`
}

// PauseRequest is SandboxPauseRequest; Memory false (a filesystem-only
// pause) is not served.
type PauseRequest struct {
	Memory *bool `json:"memory,omitempty"`
}

// Metric is SandboxMetric: one sample of the guest's use.
type Metric struct {
	Timestamp     string  `json:"timestamp"`
	TimestampUnix int64   `json:"timestampUnix"`
	CPUCount      int     `json:"cpuCount"`
	CPUUsedPct    float64 `json:"cpuUsedPct"`
	MemUsed       int64   `json:"memUsed"`
	MemTotal      int64   `json:"memTotal"`
	MemCache      int64   `json:"memCache"`
	DiskUsed      int64   `json:"diskUsed"`
	DiskTotal     int64   `json:"diskTotal"`
}

// SandboxesWithMetrics is GET /sandboxes/metrics: each sandbox's latest
// sample.
type SandboxesWithMetrics struct {
	Sandboxes map[string]Metric `json:"sandboxes"`
}

// SnapshotRequest is SandboxSnapshotRequest.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"`
}

// SnapshotInfo names a snapshot; SnapshotID is what a create takes as its
// templateID.
type SnapshotInfo struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

// ForkRequest is SandboxForkRequest.
type ForkRequest struct {
	Count   *int `json:"count,omitempty"`
	Timeout *int `json:"timeout,omitempty"`
}

// ForkResult is SandboxForkResult: one fork, or why it did not start.
type ForkResult struct {
	Sandbox *Sandbox `json:"sandbox,omitempty"`
	Error   *Error   `json:"error,omitempty"`
}

// Error is E2B's error body: Code repeats the HTTP status, which is what
// the SDKs branch on (a 404 body is SandboxNotFoundError, a 409 on pause
// "already paused").
type Error struct {
	Code      int    `json:"code"`
	ErrorCode string `json:"error_code,omitempty"`
	Message   string `json:"message"`
}

// TemplateBuildRequestV3 is the body of POST /v3/templates, which asks
// for a build of a template (Template.build's first call).
type TemplateBuildRequestV3 struct {
	// Name is the template's, with an optional ":tag" (Alias, the older
	// spelling, when empty).
	Name          string   `json:"name,omitempty"`
	Alias         string   `json:"alias,omitempty"`
	Tags          []string `json:"tags,omitempty"`
	CPUCount      *int     `json:"cpuCount,omitempty"`
	MemoryMB      *int     `json:"memoryMB,omitempty"`
	MinFreeDiskMB *int     `json:"minFreeDiskMb,omitempty"`
	TeamID        string   `json:"teamID,omitempty"`
}

// TemplateRequestResponseV3 answers POST /v3/templates: the template and
// the build the SDK then uploads files for and starts.
type TemplateRequestResponseV3 struct {
	TemplateID string   `json:"templateID"`
	BuildID    string   `json:"buildID"`
	Names      []string `json:"names"`
	Aliases    []string `json:"aliases"`
	Tags       []string `json:"tags"`
	Public     bool     `json:"public"`
}

// TemplateBuildFileUpload answers GET /templates/{id}/files/{hash}:
// whether the daemon has a COPY's files, and where to PUT them if not.
type TemplateBuildFileUpload struct {
	Present bool              `json:"present"`
	URL     string            `json:"url,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// TemplateBuildStartV2 is the body of POST /v2/templates/{id}/builds/{b}:
// the template definition.
type TemplateBuildStartV2 struct {
	Force        bool       `json:"force,omitempty"`
	FromImage    string     `json:"fromImage,omitempty"`
	FromTemplate string     `json:"fromTemplate,omitempty"`
	ReadyCmd     string     `json:"readyCmd,omitempty"`
	StartCmd     string     `json:"startCmd,omitempty"`
	Steps        []SentStep `json:"steps,omitempty"`
	// FromImageRegistry carries registry credentials, which ember's
	// builds do not take (refused with a 400).
	FromImageRegistry json.RawMessage `json:"fromImageRegistry,omitempty"`
}

// TemplateStep is one step of a definition: its type (RUN, COPY, ENV,
// WORKDIR, USER) and arguments.
type TemplateStep struct {
	Type      string   `json:"type"`
	Args      []string `json:"args,omitempty"`
	FilesHash string   `json:"filesHash,omitempty"`
	Force     bool     `json:"force,omitempty"`
}

// SentStep is a TemplateStep as the SDK sends it: its instruction object
// whole, with the upload options of a COPY the schema does not name.
type SentStep struct {
	TemplateStep
	ForceUpload     *bool `json:"forceUpload,omitempty"`
	ResolveSymlinks *bool `json:"resolveSymlinks,omitempty"`
	Gzip            *bool `json:"gzip,omitempty"`
}

// TemplateBuildInfo answers GET /templates/{id}/builds/{b}/status: the
// build's state and its log from logsOffset on.
type TemplateBuildInfo struct {
	TemplateID string             `json:"templateID"`
	BuildID    string             `json:"buildID"`
	Status     string             `json:"status"`
	LogEntries []BuildLogEntry    `json:"logEntries"`
	Logs       []string           `json:"logs"`
	Reason     *BuildStatusReason `json:"reason,omitempty"`
}

// BuildLogEntry is one line of a build's log.
type BuildLogEntry struct {
	Timestamp string `json:"timestamp"`
	Level     string `json:"level"`
	Message   string `json:"message"`
	Step      string `json:"step,omitempty"`
}

// BuildStatusReason says why a build failed: the message, E2B's name of
// the step ("base", the instruction's number from 1, "finalize") and its
// last output.
type BuildStatusReason struct {
	Message    string          `json:"message"`
	Step       string          `json:"step,omitempty"`
	LogEntries []BuildLogEntry `json:"logEntries,omitempty"`
}

// TemplateAliasResponse answers GET /templates/aliases/{alias}.
type TemplateAliasResponse struct {
	TemplateID string `json:"templateID"`
	Public     bool   `json:"public"`
}
