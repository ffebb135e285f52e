package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/testutil"
)

// scrape serves m and parses what a scrape gets.
func scrape(t *testing.T, m *Metrics) (testutil.Metrics, []byte) {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	body := []byte(get(t, srv.URL))
	return testutil.ParseMetrics(t, body), body
}

// value is a gauge's or a counter's value, or a histogram's count, in a
// scrape of m.
func value(t *testing.T, m *Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	fams, _ := scrape(t, m)
	v, ok := fams.Value(name, labels)
	if !ok {
		t.Fatalf("no %s%v", name, labels)
	}
	return v
}

func TestLifecycleByOperationOutcomeAndPhase(t *testing.T) {
	m := New(Config{})
	// Present at zero before anything happened.
	for _, op := range sandbox.Ops {
		if v := value(t, m, "ember_lifecycle_duration_seconds", map[string]string{"op": op, "outcome": OutcomeError}); v != 0 {
			t.Fatalf("%s errors at start: %v", op, v)
		}
	}
	m.Observe(sandbox.Op{Name: sandbox.OpCreate, Duration: time.Second,
		Phases: map[string]time.Duration{"disk": time.Millisecond, "boot": 800 * time.Millisecond}})
	m.Observe(sandbox.Op{Name: sandbox.OpCreate, Duration: 2 * time.Second, Phases: map[string]time.Duration{"disk": time.Millisecond}})
	m.Observe(sandbox.Op{Name: sandbox.OpCreate, Duration: time.Second, Err: errors.New("boom"),
		Phases: map[string]time.Duration{"disk": time.Millisecond}})
	m.Observe(sandbox.Op{Name: sandbox.OpPause, Duration: 20 * time.Millisecond})
	cases := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"creates ok", "ember_lifecycle_duration_seconds", map[string]string{"op": "create", "outcome": "ok"}, 2},
		{"creates failed", "ember_lifecycle_duration_seconds", map[string]string{"op": "create", "outcome": "error"}, 1},
		{"pauses", "ember_lifecycle_duration_seconds", map[string]string{"op": "pause", "outcome": "ok"}, 1},
		{"no resumes", "ember_lifecycle_duration_seconds", map[string]string{"op": "resume", "outcome": "ok"}, 0},
		// A failed operation's phases are not counted.
		{"disk phases", "ember_lifecycle_phase_duration_seconds", map[string]string{"op": "create", "phase": "disk"}, 2},
		{"boot phases", "ember_lifecycle_phase_duration_seconds", map[string]string{"op": "create", "phase": "boot"}, 1},
		{"restore phases", "ember_lifecycle_phase_duration_seconds", map[string]string{"op": "create", "phase": "restore"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := value(t, m, tc.metric, tc.labels); got != tc.want {
				t.Fatalf("%s%v = %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		})
	}
	fams, _ := scrape(t, m)
	if sum, _ := fams.Sum("ember_lifecycle_duration_seconds", map[string]string{"op": "create", "outcome": "ok"}); sum != 3 {
		t.Fatalf("create seconds %v, want 3", sum)
	}
}

func TestRequestsByRouteAndStatusClass(t *testing.T) {
	m := New(Config{})
	for _, r := range []struct {
		route  string
		status int
	}{
		{"GET /v1/sandboxes/{id}", 200}, {"GET /v1/sandboxes/{id}", 404}, {"GET /v1/sandboxes/{id}", 410},
		{"POST /v1/sandboxes", 201}, {"", 404},
	} {
		m.ObserveRequest(r.route, r.status, time.Millisecond)
	}
	cases := []struct {
		route, code string
		want        float64
	}{
		{"GET /v1/sandboxes/{id}", "2xx", 1},
		{"GET /v1/sandboxes/{id}", "4xx", 2},
		{"POST /v1/sandboxes", "2xx", 1},
		{"unmatched", "4xx", 1},
	}
	for _, tc := range cases {
		if got := value(t, m, "ember_api_requests_total", map[string]string{"route": tc.route, "code": tc.code}); got != tc.want {
			t.Errorf("%s %s: %v, want %v", tc.route, tc.code, got, tc.want)
		}
	}
	if got := value(t, m, "ember_api_request_duration_seconds", map[string]string{"route": "GET /v1/sandboxes/{id}"}); got != 3 {
		t.Errorf("latency count %v, want 3", got)
	}
}

// scraped is a Metrics whose scrape-time figures are set.
func scraped() *Metrics {
	return New(Config{
		Version: "v1", VMM: "qemu", Disk: "copy",
		Sandboxes: func() []store.Sandbox {
			return []store.Sandbox{
				{State: sandbox.StateRunning, Template: "base", DiskBytes: 100},
				{State: sandbox.StateRunning, Template: "base", DiskBytes: 50},
				{State: sandbox.StatePaused, Template: "base", DiskBytes: 10, MemoryBytes: 7},
				{State: sandbox.StateRunning, Template: "pvm"},
			}
		},
		Templates: func() []string { return []string{"base", "empty"} },
		Slots:     func() slot.Stats { return slot.Stats{Idle: 3, Reused: 1, InUse: 4, Reuses: 9} },
		Capacity: func() []Capacity {
			return []Capacity{{Resource: "vcpus", Used: 4, Free: 12}, {Resource: "memory_bytes", Used: 1 << 30, Free: 3 << 30}}
		},
	})
}

func TestScrapeTimeFigures(t *testing.T) {
	m := scraped()
	cases := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"ember_sandboxes", map[string]string{"state": "running", "template": "base"}, 2},
		{"ember_sandboxes", map[string]string{"state": "paused", "template": "base"}, 1},
		{"ember_sandboxes", map[string]string{"state": "error", "template": "base"}, 0},
		{"ember_sandboxes", map[string]string{"state": "running", "template": "pvm"}, 1},
		{"ember_sandboxes", map[string]string{"state": "running", "template": "empty"}, 0},
		{"ember_disk_allocated_bytes", nil, 160},
		{"ember_saved_memory_bytes", nil, 7},
		{"ember_disk_backend_info", map[string]string{"backend": "copy"}, 1},
		{"ember_build_info", map[string]string{"version": "v1", "vmm": "qemu"}, 1},
		{"ember_network_slots", map[string]string{"state": "idle"}, 3},
		{"ember_network_slots", map[string]string{"state": "reused"}, 1},
		{"ember_network_slots", map[string]string{"state": "in_use"}, 4},
		{"ember_network_slot_reuses_total", nil, 9},
		{"ember_capacity_vcpus", map[string]string{"state": "free"}, 12},
		{"ember_capacity_memory_bytes", map[string]string{"state": "used"}, 1 << 30},
	}
	for _, tc := range cases {
		if got := value(t, m, tc.metric, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.metric, tc.labels, got, tc.want)
		}
	}
	if fams, _ := scrape(t, New(Config{})); fams["ember_capacity_vcpus"] != nil {
		t.Error("capacity exported without a capacity hook")
	}
	fams, _ := scrape(t, m)
	for _, family := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if fams[family] == nil {
			t.Errorf("no %s: the Go and process collectors are missing", family)
		}
	}
}

func TestBadCapacityResourceFailsOnlyItself(t *testing.T) {
	m := New(Config{Capacity: func() []Capacity { return []Capacity{{Resource: "Memory Bytes"}, {Resource: "vcpus", Used: 1}} }})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	body := get(t, srv.URL)
	if !strings.Contains(body, `ember_capacity_vcpus{state="used"} 1`) {
		t.Fatalf("the good capacity is missing from\n%s", body)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestPromtoolFindsNothing lints every series the daemon exports, each
// kind populated, with Prometheus's own checker.
func TestPromtoolFindsNothing(t *testing.T) {
	m := scraped()
	m.Observe(sandbox.Op{Name: sandbox.OpCreate, Duration: time.Second, Phases: map[string]time.Duration{"boot": time.Second}})
	m.ObserveRequest("POST /v1/sandboxes", 201, time.Second)
	_, body := scrape(t, m)
	for _, want := range []string{"ember_lifecycle_duration_seconds_bucket", "ember_api_requests_total", "ember_sandboxes", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("no %s in\n%s", want, body)
		}
	}
	testutil.CheckMetrics(t, body)
}
