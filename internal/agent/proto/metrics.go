package proto

// Metrics is the body of the agent's GET /metrics: the guest's resource use
// in E2B's envd shape (the Metrics schema of envd's HTTP API, as the pinned
// e2b package describes it), so the daemon and E2B tooling read the same
// figures. CPUUsedPct covers the time since the previous request.
type Metrics struct {
	// Timestamp is the guest's clock, in Unix seconds.
	Timestamp   int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotal    int64   `json:"mem_total"`
	MemUsed     int64   `json:"mem_used"`
	MemCache    int64   `json:"mem_cache"`
	MemTotalMiB int64   `json:"mem_total_mib"`
	MemUsedMiB  int64   `json:"mem_used_mib"`
	DiskUsed    int64   `json:"disk_used"`
	DiskTotal   int64   `json:"disk_total"`
}
