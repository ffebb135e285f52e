// Package metrics is the daemon's Prometheus instrumentation, served at GET
// /metrics: lifecycle operations and their phases as histograms by
// operation and outcome, sandboxes by state and template, the network
// slots, disk use, API requests by route pattern and status class (never by
// sandbox id, so the series stay bounded), and the Go runtime and process
// collectors. Names and units follow Prometheus's conventions, which
// `promtool check metrics` holds them to.
package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/slot"
	"github.com/emberhq/ember/internal/store"
)

// Config says where the scrape-time figures come from.
type Config struct {
	// Version, VMM and Disk describe the daemon (ember_build_info,
	// ember_disk_backend_info).
	Version, VMM, Disk string
	// Sandboxes returns every sandbox's record with its disk and saved
	// memory use (Manager.List).
	Sandboxes func() []store.Sandbox
	// Templates returns the templates' names, so each has its series
	// before its first sandbox; nil: those of the sandboxes only.
	Templates func() []string
	// Slots says how the network slots stand; nil exports none.
	Slots func() slot.Stats
	// Capacity reads what admission control has committed of the host and
	// what is left; nil exports no capacity metric.
	Capacity func() []Capacity
	// Log receives the errors of a scrape.
	Log *slog.Logger
}

// Capacity is one resource's use of what the host offers, in the
// resource's base unit: exported as ember_capacity_<Resource>{state="used"}
// and {state="free"}, so Resource carries the unit ("vcpus",
// "memory_bytes", "disk_bytes").
type Capacity struct {
	Resource   string
	Used, Free float64
}

// Metrics holds the daemon's metrics. It is the sandbox manager's
// Observer and the API's request observer.
type Metrics struct {
	reg       *prometheus.Registry
	lifecycle *prometheus.HistogramVec
	phases    *prometheus.HistogramVec
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	log       *slog.Logger
}

// Outcomes of a lifecycle operation.
const (
	OutcomeOK    = "ok"
	OutcomeError = "error"
)

// lifecycleBuckets span a snapshot's milliseconds to a first template
// build's minutes.
var lifecycleBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// requestBuckets span a listing's milliseconds to a long exec.
var requestBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// New returns the daemon's metrics, its lifecycle series all present at
// zero so that rates and increases work from the first scrape.
func New(cfg Config) *Metrics {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		log: cfg.Log,
		lifecycle: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ember_lifecycle_duration_seconds",
			Help:    "Lifecycle operations (create, restore, pause, resume, snapshot, fork, destroy, template_build) by outcome (ok, error).",
			Buckets: lifecycleBuckets,
		}, []string{"op", "outcome"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ember_lifecycle_phase_duration_seconds",
			Help:    "The phases of successful lifecycle operations (disk, network, boot or restore, agent ready, ...).",
			Buckets: lifecycleBuckets,
		}, []string{"op", "phase"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ember_api_requests_total",
			Help: "API requests by route pattern and status class (2xx, 4xx, ...).",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ember_api_request_duration_seconds",
			Help:    "API request durations by route pattern (streams last as long as they stream).",
			Buckets: requestBuckets,
		}, []string{"route"}),
	}
	for _, op := range sandbox.Ops {
		m.lifecycle.WithLabelValues(op, OutcomeOK)
		m.lifecycle.WithLabelValues(op, OutcomeError)
		for _, p := range sandbox.Phases[op] {
			m.phases.WithLabelValues(op, p)
		}
	}
	m.reg.MustRegister(m.lifecycle, m.phases, m.requests, m.latency, &state{cfg: cfg},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records a lifecycle operation as it ended (sandbox.Observer).
func (m *Metrics) Observe(op sandbox.Op) {
	outcome := OutcomeOK
	if op.Err != nil {
		outcome = OutcomeError
	}
	m.lifecycle.WithLabelValues(op.Name, outcome).Observe(op.Duration.Seconds())
	if op.Err != nil {
		return
	}
	for name, d := range op.Phases {
		m.phases.WithLabelValues(op.Name, name).Observe(d.Seconds())
	}
}

// ObserveRequest records an API request by its route pattern ("GET
// /v1/sandboxes/{id}") and status; "" counts as "unmatched".
func (m *Metrics) ObserveRequest(route string, status int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status/100)+"xx").Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// Handler serves the metrics in Prometheus's exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(m.log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// Registry is where the metrics are registered (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// states are the sandbox states reported, each at zero when no sandbox is
// in it.
var states = []string{
	sandbox.StateCreating, sandbox.StateRunning, sandbox.StatePausing, sandbox.StatePaused,
	sandbox.StateResuming, sandbox.StateStopping, sandbox.StateError,
	sandbox.StateWarming, sandbox.StateWarm,
}

var (
	sandboxesDesc = prometheus.NewDesc("ember_sandboxes", "Sandboxes by state and template.", []string{"state", "template"}, nil)
	diskDesc      = prometheus.NewDesc("ember_disk_allocated_bytes", "Bytes the sandboxes' disks occupy on the host (allocated blocks).", nil, nil)
	savedDesc     = prometheus.NewDesc("ember_saved_memory_bytes", "Bytes the paused sandboxes' saved machine state occupies on the host.", nil, nil)
	backendDesc   = prometheus.NewDesc("ember_disk_backend_info", "The root disk backend in use (the label), always 1.", []string{"backend"}, nil)
	buildDesc     = prometheus.NewDesc("ember_build_info", "The daemon's version and VMM driver (the labels), always 1.", []string{"version", "vmm"}, nil)
	slotsDesc     = prometheus.NewDesc("ember_network_slots", "Network slots: idle (built ahead of demand), reused (reset, waiting) and in_use.", []string{"state"}, nil)
	reusesDesc    = prometheus.NewDesc("ember_network_slot_reuses_total", "Network slots handed out again after a reset.", nil, nil)
)

// capacityName is what a Capacity's Resource may be: a metric name's tail.
var capacityName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// state collects the figures read at scrape time. It is an unchecked
// collector (Describe sends nothing): the capacity hook names its own
// metrics.
type state struct{ cfg Config }

func (s *state) Describe(chan<- *prometheus.Desc) {}

func (s *state) Collect(ch chan<- prometheus.Metric) {
	cfg := s.cfg
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(buildDesc, 1, cfg.Version, cfg.VMM)
	gauge(backendDesc, 1, cfg.Disk)

	count := map[[2]string]int{}
	templates := map[string]bool{}
	if cfg.Templates != nil {
		for _, t := range cfg.Templates() {
			templates[t] = true
		}
	}
	var disk, saved int64
	if cfg.Sandboxes != nil {
		for _, r := range cfg.Sandboxes() {
			count[[2]string{r.State, r.Template}]++
			templates[r.Template] = true
			disk += r.DiskBytes
			saved += r.MemoryBytes
		}
	}
	for t := range templates {
		for _, st := range states {
			gauge(sandboxesDesc, float64(count[[2]string{st, t}]), st, t)
		}
	}
	gauge(diskDesc, float64(disk))
	gauge(savedDesc, float64(saved))

	if cfg.Slots != nil {
		st := cfg.Slots()
		gauge(slotsDesc, float64(st.Idle), "idle")
		gauge(slotsDesc, float64(st.Reused), "reused")
		gauge(slotsDesc, float64(st.InUse), "in_use")
		ch <- prometheus.MustNewConstMetric(reusesDesc, prometheus.CounterValue, float64(st.Reuses))
	}
	if cfg.Capacity != nil {
		for _, c := range cfg.Capacity() {
			if !capacityName.MatchString(c.Resource) {
				ch <- prometheus.NewInvalidMetric(prometheus.NewDesc("ember_capacity", "", nil, nil),
					fmt.Errorf("capacity resource %q is not a metric name's tail", c.Resource))
				continue
			}
			d := prometheus.NewDesc("ember_capacity_"+c.Resource, "The host's "+c.Resource+" capacity, used and free.", []string{"state"}, nil)
			gauge(d, c.Used, "used")
			gauge(d, c.Free, "free")
		}
	}
}
