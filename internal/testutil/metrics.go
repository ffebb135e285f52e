package testutil

import (
	"bytes"
	"os/exec"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// CheckMetrics runs `promtool check metrics` (Debian's prometheus package)
// on a Prometheus text exposition and fails the test on anything it finds.
func CheckMetrics(t testing.TB, exposition []byte) {
	t.Helper()
	RequireTool(t, "promtool")
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// Metrics is a parsed Prometheus text exposition, by family name.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses a Prometheus text exposition, failing the test when
// it is not one.
func ParseMetrics(t testing.TB, exposition []byte) Metrics {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(exposition))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return fams
}

// Value returns the value of family name's series whose labels include
// labels: a counter's or gauge's value, a histogram's count. ok is false
// when there is no such series.
func (m Metrics) Value(name string, labels map[string]string) (v float64, ok bool) {
	mt := m.series(name, labels)
	switch {
	case mt == nil:
		return 0, false
	case mt.Histogram != nil:
		return float64(mt.Histogram.GetSampleCount()), true
	case mt.Counter != nil:
		return mt.Counter.GetValue(), true
	case mt.Gauge != nil:
		return mt.Gauge.GetValue(), true
	case mt.Untyped != nil:
		return mt.Untyped.GetValue(), true
	}
	return 0, false
}

// Sum returns the sum of a histogram series' observations.
func (m Metrics) Sum(name string, labels map[string]string) (v float64, ok bool) {
	mt := m.series(name, labels)
	if mt == nil || mt.Histogram == nil {
		return 0, false
	}
	return mt.Histogram.GetSampleSum(), true
}

// series finds family name's first series whose labels include labels.
func (m Metrics) series(name string, labels map[string]string) *dto.Metric {
	f := m[name]
	if f == nil {
		return nil
	}
next:
	for _, mt := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range mt.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, want := range labels {
			if got[k] != want {
				continue next
			}
		}
		return mt
	}
	return nil
}

// LabelValues lists every label value in the exposition.
func (m Metrics) LabelValues() []string {
	var out []string
	for _, f := range m {
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}
