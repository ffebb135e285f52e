package e2b

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// schemaTypes holds each body of the facade to the component schema of
// E2B's OpenAPI document it stands for, by name.
var schemaTypes = map[string]any{
	"NewSandbox":                 NewSandbox{},
	"NewSandboxV2":               NewSandboxV2{},
	"Sandbox":                    Sandbox{},
	"SandboxDetail":              SandboxDetail{},
	"ListedSandbox":              ListedSandbox{},
	"ConnectSandbox":             Connect{},
	"ConnectSandboxV2":           Connect{},
	"ResumedSandbox":             Resume{},
	"SandboxTimeoutRequest":      TimeoutRequest{},
	"SandboxRefreshRequest":      RefreshRequest{},
	"SandboxPauseRequest":        PauseRequest{},
	"SandboxMetric":              Metric{},
	"SandboxesWithMetrics":       SandboxesWithMetrics{},
	"SandboxNetworkConfig":       NetworkConfig{},
	"SandboxNetworkUpdateConfig": NetworkUpdate{},
	"SandboxEgressProxyConfig":   EgressProxy{},
	"SandboxSnapshotRequest":     SnapshotRequest{},
	"SnapshotInfo":               SnapshotInfo{},
	"SandboxForkRequest":         ForkRequest{},
	"SandboxForkResult":          ForkResult{},
	"SandboxLifecycle":           Lifecycle{},
	"SandboxAutoResumeConfig":    AutoResume{},
	"SandboxVolumeMount":         VolumeMount{},
	"Error":                      Error{},
	"TemplateBuildRequestV3":     TemplateBuildRequestV3{},
	"TemplateRequestResponseV3":  TemplateRequestResponseV3{},
	"TemplateBuildFileUpload":    TemplateBuildFileUpload{},
	"TemplateBuildStartV2":       TemplateBuildStartV2{},
	"TemplateStep":               TemplateStep{},
	"TemplateBuildInfo":          TemplateBuildInfo{},
	"BuildLogEntry":              BuildLogEntry{},
	"BuildStatusReason":          BuildStatusReason{},
	"TemplateAliasResponse":      TemplateAliasResponse{},
}

// sdks are the e2b packages the compatibility matrix pins (test/e2b and
// its subdirectories), the pinned one first. The pinned one's schemas are
// ours exactly; an older one's must be contained in ours, so that what it
// sends is understood and what it reads is there.
var sdks = []struct{ dir, env string }{
	{"test/e2b", "EMBER_E2B_PKG"},
	{"test/e2b/v2early", ""},
	{"test/e2b/v1", ""},
}

// TestBodiesMatchTheSDKSchemas checks every body's JSON field names against
// the schema types compiled into each pinned SDK, so a field name drift (of
// ours, or of a new SDK's) fails here rather than in a user's code.
func TestBodiesMatchTheSDKSchemas(t *testing.T) {
	for i, sdk := range sdks {
		t.Run(sdk.dir, func(t *testing.T) {
			dts := readDeclarations(t, sdk.dir, sdk.env)
			seen := 0
			for name, v := range schemaTypes {
				want, ok := componentSchema(dts, name)
				if !ok {
					if i == 0 {
						t.Errorf("schema %s: not in the pinned SDK", name)
					}
					continue // an older SDK without it
				}
				seen++
				got := jsonNames(reflect.TypeOf(v))
				if i == 0 && !slices.Equal(got, want) {
					t.Errorf("%s: our fields %v, the SDK's %v", name, got, want)
				}
				for _, f := range want {
					if !slices.Contains(got, f) {
						t.Errorf("%s: the SDK's field %q is not ours (%v)", name, f, got)
					}
				}
			}
			if seen < 5 {
				t.Fatalf("only %d schemas found: the declarations' layout changed", seen)
			}
		})
	}
}

// TestComponentSchemaDetectsDrift proves the comparison can fail.
func TestComponentSchemaDetectsDrift(t *testing.T) {
	dts := `
interface components {
  schemas: {
    Sandbox: {
      /** @description Identifier */
      sandboxID: string;
      domain?: string | null;
      nested?: {
        inner: string;
      };
    };
    Other: {
      x: number;
    } | null;
  };
}`
	got, ok := componentSchema(dts, "Sandbox")
	if !ok || !slices.Equal(got, []string{"domain", "nested", "sandboxID"}) {
		t.Fatalf("Sandbox: %v %v", got, ok)
	}
	if got, ok := componentSchema(dts, "Other"); !ok || !slices.Equal(got, []string{"x"}) {
		t.Fatalf("Other: %v %v", got, ok)
	}
	if _, ok := componentSchema(dts, "Missing"); ok {
		t.Fatal("found a schema that is not there")
	}
	type renamed struct {
		SandboxID string `json:"sandboxId"`
		Domain    string `json:"domain,omitempty"`
		Nested    string `json:"nested"`
	}
	if jn := jsonNames(reflect.TypeOf(renamed{})); slices.Equal(jn, got) {
		t.Fatalf("a renamed field went unnoticed: %v", jn)
	}
}

// readDeclarations reads dist/index.d.ts of the e2b package under dir (from
// the repository root), skipping (or failing under EMBER_REQUIRE_ALL=1)
// when it is not installed.
func readDeclarations(t *testing.T, dir, env string) string {
	t.Helper()
	pkg := filepath.Join("..", "..", "..", dir, "node_modules", "e2b")
	if v := os.Getenv(env); env != "" && v != "" {
		pkg = v
	}
	b, err := os.ReadFile(filepath.Join(pkg, "dist", "index.d.ts"))
	if err != nil {
		msg := fmt.Sprintf("e2b npm package not found at %s (%v): run `make npm`", pkg, err)
		if os.Getenv("EMBER_REQUIRE_ALL") == "1" {
			t.Fatalf("%s (EMBER_REQUIRE_ALL=1 forbids this skip)", msg)
		}
		t.Skip(msg)
	}
	return string(b)
}

// schemaProp matches a property name at the start of a (trimmed) line.
var schemaProp = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\??:`)

// componentSchema returns the property names of components.schemas.<name>
// in openapi-typescript's declarations, sorted. The indentation step is
// the one the "schemas" line has (2 spaces in 2.x's bundles, 4 in 1.x's):
// schemas sit at two steps, their properties at three.
func componentSchema(dts, name string) ([]string, bool) {
	i := strings.Index(dts, "\ninterface components {")
	if i < 0 {
		return nil, false
	}
	lines := strings.Split(dts[i+1:], "\n")
	if len(lines) < 2 || strings.TrimSpace(lines[1]) != "schemas: {" {
		return nil, false
	}
	step := strings.Repeat(" ", len(lines[1])-len(strings.TrimLeft(lines[1], " ")))
	start := slices.Index(lines, step+step+name+": {")
	if start < 0 {
		return nil, false
	}
	var out []string
	for _, l := range lines[start+1:] {
		if strings.HasPrefix(l, step+step+"}") {
			break
		}
		rest, ok := strings.CutPrefix(l, step+step+step)
		if !ok || strings.HasPrefix(rest, " ") {
			continue
		}
		if m := schemaProp.FindStringSubmatch(rest); m != nil {
			out = append(out, m[1])
		}
	}
	slices.Sort(out)
	return out, true
}

// jsonNames lists the JSON names of a struct's fields, those of embedded
// structs included, sorted.
func jsonNames(rt reflect.Type) []string {
	var out []string
	for i := range rt.NumField() {
		f := rt.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonNames(f.Type)...)
			continue
		}
		out = append(out, strings.Split(f.Tag.Get("json"), ",")[0])
	}
	slices.Sort(out)
	return out
}
