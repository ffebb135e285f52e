package proto

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// envdSchema returns the properties of an object schema of envd's HTTP API
// as the SDK's type declarations describe it ("Metrics: { ... };").
func envdSchema(t *testing.T, dts, name string) []string {
	t.Helper()
	start := strings.Index(dts, "\n    "+name+": {\n")
	if start < 0 {
		t.Fatalf("no schema %s in the SDK's declarations", name)
	}
	body := dts[start+len(name)+8:]
	body = body[:strings.Index(body, "\n    };")]
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^      ([a-z_]+)\??:`).FindAllStringSubmatch(body, -1) {
		out = append(out, m[1])
	}
	slices.Sort(out)
	return out
}

// jsonNames lists the JSON names of a struct's fields.
func jsonNames(v any) []string {
	var out []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		out = append(out, strings.Split(rt.Field(i).Tag.Get("json"), ",")[0])
	}
	slices.Sort(out)
	return out
}

// TestMetricsMatchEnvd holds the agent's GET /metrics body to envd's
// Metrics schema, as the pinned SDK declares it.
func TestMetricsMatchEnvd(t *testing.T) {
	dts, err := os.ReadFile(filepath.Join(e2bPackage(t), "dist", "index.d.ts"))
	if err != nil {
		t.Fatal(err)
	}
	want := envdSchema(t, string(dts), "Metrics")
	if got := jsonNames(Metrics{}); !slices.Equal(got, want) {
		t.Fatalf("our fields %v, envd's %v", got, want)
	}
}
