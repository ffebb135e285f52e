//go:build linux

package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// apiTimeout bounds one API request when the caller's context has no
// earlier deadline. Snapshot create and load copy memory and take longer.
const (
	apiTimeout      = 10 * time.Second
	snapshotTimeout = 5 * time.Minute
)

// client speaks Firecracker's REST API over its Unix socket.
type client struct {
	socket string
	http   *http.Client
}

func newClient(socket string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		// One request at a time, and a daemon that attaches after a
		// restart must not find a stale connection.
		DisableKeepAlives: true,
	}
	return &client{socket: socket, http: &http.Client{Transport: tr}}
}

// APIError is Firecracker's answer to a request it refused: the status
// and its fault_message.
type APIError struct {
	Method, Path string
	Status       int
	Fault        string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.Method, e.Path, e.Status, e.Fault)
}

// do sends one request with body marshalled to JSON (none when nil) and
// decodes a 200 answer into out (when not nil).
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	timeout := apiTimeout
	if path == "/snapshot/create" || path == "/snapshot/load" {
		timeout = snapshotTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode: %w", method, path, err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, r)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var fault struct {
			Message string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fault) != nil || fault.Message == "" {
			fault.Message = string(bytes.TrimSpace(data))
		}
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, Fault: fault.Message}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode answer %q: %w", method, path, data, err)
		}
	}
	return nil
}

// The request bodies the driver sends, named after the spec's definitions.
// Optional fields are omitted when empty so nothing the spec does not ask
// for reaches Firecracker.

type logger struct {
	LogPath       string `json:"log_path"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

type metrics struct {
	MetricsPath string `json:"metrics_path"`
}

type machineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMiB      int  `json:"mem_size_mib"`
	SMT             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages"`
}

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	CacheType    string `json:"cache_type,omitempty"`
	IOEngine     string `json:"io_engine,omitempty"`
}

type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

type entropyDevice struct{}

type balloon struct {
	AmountMiB             int  `json:"amount_mib"`
	DeflateOnOOM          bool `json:"deflate_on_oom"`
	StatsPollingIntervalS int  `json:"stats_polling_interval_s,omitempty"`
}

type vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

type action struct {
	ActionType string `json:"action_type"`
}

type vmState struct {
	State string `json:"state"`
}

type instanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

type snapshotCreate struct {
	SnapshotType string `json:"snapshot_type,omitempty"`
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
}

type memoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type networkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

type snapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       *memoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages  bool              `json:"track_dirty_pages"`
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []networkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *vsockOverride    `json:"vsock_override,omitempty"`
}

type vsockOverride struct {
	UDSPath string `json:"uds_path"`
}
