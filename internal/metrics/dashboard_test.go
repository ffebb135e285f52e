package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/sandbox"
	"github.com/emberhq/ember/internal/testutil"
)

// dashboardPath is the Grafana dashboard docs/ ships.
var dashboardPath = filepath.Join("..", "..", "docs", "grafana", "ember.json")

type dashboard struct {
	Title, UID    string
	SchemaVersion int `json:"schemaVersion"`
	Templating    struct {
		List []struct{ Name, Type, Query any }
	}
	Panels []struct {
		ID         int
		Type       string
		Title      string
		Datasource struct{ Type, UID string }
		GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
		Targets    []struct {
			Expr       string
			Datasource struct{ UID string }
		}
	}
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// TestDashboardLoadsAsItIs checks what Grafana needs to import the file
// unchanged: a title and uid, a data source variable every query uses (no
// import-time inputs), panels with unique ids that fit the grid.
func TestDashboardLoadsAsItIs(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Fatalf("title %q, uid %q, schema %d", d.Title, d.UID, d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[fmt.Sprint(v.Name)] = fmt.Sprint(v.Type) + " " + fmt.Sprint(v.Query)
	}
	if vars["datasource"] != "datasource prometheus" {
		t.Fatalf("variables %v: want a datasource variable of type prometheus", vars)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d repeated or zero", p.Title, p.ID)
		}
		ids[p.ID] = true
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: grid position %+v", p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %+v, %d queries", p.Title, p.Datasource, len(p.Targets))
		}
		for _, q := range p.Targets {
			if q.Datasource.UID != "${datasource}" || !strings.Contains(q.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q: query %q is not on the dashboard's data source and daemons", p.Title, q.Expr)
			}
		}
	}
}

// metricRef finds the metric names a query refers to.
var metricRef = regexp.MustCompile(`\b(?:ember|go|process)_[a-z0-9_]+`)

// TestDashboardIsBuiltOnTheseMetrics holds every query to metrics the
// daemon exports, and to PromQL that Prometheus parses.
func TestDashboardIsBuiltOnTheseMetrics(t *testing.T) {
	m := scraped()
	m.Observe(sandbox.Op{Name: sandbox.OpCreate, Duration: time.Second, Phases: map[string]time.Duration{"boot": time.Second}})
	m.ObserveRequest("POST /v1/sandboxes", 201, time.Second)
	fams, _ := scrape(t, m)
	exported := func(name string) bool {
		if fams[name] != nil {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && fams[base] != nil {
				return true
			}
		}
		return false
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, p := range loadDashboard(t).Panels {
		for j, q := range p.Targets {
			for _, name := range metricRef.FindAllString(q.Expr, -1) {
				if !exported(name) {
					t.Errorf("panel %q queries %s, which the daemon does not export", p.Title, name)
				}
			}
			expr, _ := json.Marshal(q.Expr) // a JSON string is a YAML string
			fmt.Fprintf(&rules, "      - record: dashboard:panel_%d_%d\n        expr: %s\n", i, j, expr)
		}
	}
	testutil.RequireTool(t, "promtool")
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}
