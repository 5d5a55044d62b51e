package examples

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// dashboard is the part of a Grafana dashboard model these tests check.
type dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    *struct {
		X, Y, W, H int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // inside collapsed rows
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardFile, err)
	}
	return &d
}

func (d *dashboard) allPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// labelValuesQuery is Grafana's variable query label_values(<series>, <label>).
var labelValuesQuery = regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`)

// dashboardQueries returns the PromQL of every panel target and of every
// query variable.
func dashboardQueries(t *testing.T, d *dashboard) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range d.allPanels() {
		for _, target := range p.Targets {
			out[fmt.Sprintf("panel %q target %s", p.Title, target.RefID)] = target.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesQuery.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(<series>, <label>)", v.Name, v.Definition)
			continue
		}
		out["variable "+v.Name] = m[1]
	}
	return out
}

func TestDashboardModel(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Error("the dashboard needs a title and a uid")
	}
	if d.SchemaVersion != 39 {
		t.Errorf("schemaVersion = %d, want 39", d.SchemaVersion)
	}

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Type == "query" {
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s does not query the ${datasource} variable", v.Name)
			}
			// The query and its definition must agree, or Grafana runs one
			// and shows the other.
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil || q.Query != v.Definition {
				t.Errorf("variable %s: query %s differs from definition %q", v.Name, v.Query, v.Definition)
			}
		}
	}
	if vars["datasource"] != "datasource" || vars["job"] != "query" || vars["instance"] != "query" {
		t.Errorf("template variables = %v, want datasource (datasource), job and instance (query)", vars)
	}
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && string(v.Query) != `"prometheus"` {
			t.Errorf("the datasource variable offers %s, want prometheus", v.Query)
		}
	}

	ids := map[int]bool{}
	metricsShown := map[string]bool{}
	for _, p := range d.allPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q has no valid gridPos", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refIDs := map[string]bool{}
		for _, target := range p.Targets {
			if target.RefID == "" || refIDs[target.RefID] {
				t.Errorf("panel %q: refId %q is empty or repeated", p.Title, target.RefID)
			}
			refIDs[target.RefID] = true
			if target.Datasource == nil || target.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s does not use the ${datasource} variable", p.Title, target.RefID)
			}
			// Every query is narrowed by the job and instance variables.
			if !strings.Contains(target.Expr, `job=~"$job"`) || !strings.Contains(target.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q target %s ignores the job or instance variable: %s", p.Title, target.RefID, target.Expr)
			}
			for _, name := range metricNames(target.Expr) {
				metricsShown[name] = true
			}
		}
	}

	// What the mail team looks at: success, latency by phase, reply codes,
	// failure reasons, certificate expiry, extensions and mechanisms, and
	// the canaries' delivery: latency and what became of them.
	for _, name := range []string{
		"probe_success", "probe_smtp_duration_seconds", "probe_smtp_status_code", "probe_smtp_failure_info",
		"probe_ssl_earliest_cert_expiry", "probe_smtp_extension_info", "probe_smtp_auth_mechanism_info",
		"smtp_exporter_delivery_latency_seconds_bucket", "probe_smtp_delivery_last_seconds",
		"probe_smtp_delivery_delivered_total", "probe_smtp_delivery_junk_total", "probe_smtp_delivery_lost_total",
	} {
		if !metricsShown[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
}

// TestDashboardDeclaresItsDataSource checks what makes Grafana's import ask
// for the Prometheus data source: an input DS_PROMETHEUS of type
// datasource, used as the default of the datasource variable, which every
// panel and query variable follows (TestDashboardModel). Import replaces
// ${DS_PROMETHEUS} with the data source chosen; the panels keep following
// the variable, so that viewers can switch, and a dashboard loaded by file
// provisioning (where nothing replaces ${DS_PROMETHEUS}) falls back to the
// default Prometheus instead of a data source that does not exist.
func TestDashboardDeclaresItsDataSource(t *testing.T) {
	var d struct {
		Inputs []struct {
			Name, Label, Type, PluginID string
		} `json:"__inputs"`
		Requires []struct {
			Type, ID string
		} `json:"__requires"`
		Templating struct {
			List []struct {
				Name    string `json:"name"`
				Type    string `json:"type"`
				Current struct {
					Value json.RawMessage `json:"value"`
				} `json:"current"`
			} `json:"list"`
		} `json:"templating"`
	}
	data := readFile(t, dashboardFile)
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Inputs) != 1 || d.Inputs[0].Name != "DS_PROMETHEUS" || d.Inputs[0].Type != "datasource" ||
		d.Inputs[0].PluginID != "prometheus" || d.Inputs[0].Label == "" {
		t.Errorf("__inputs = %+v, want one input DS_PROMETHEUS, type datasource, pluginId prometheus, with a label", d.Inputs)
	}
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && string(v.Current.Value) != `"${DS_PROMETHEUS}"` {
			t.Errorf("datasource variable %s defaults to %s, want ${DS_PROMETHEUS}, the data source chosen at import", v.Name, v.Current.Value)
		}
	}
	// Every ${DS_...} placeholder must be an input, or import leaves it
	// unresolved.
	for _, m := range regexp.MustCompile(`\$\{(DS_[A-Z0-9_]+)\}`).FindAllStringSubmatch(string(data), -1) {
		if m[1] != "DS_PROMETHEUS" {
			t.Errorf("the dashboard uses ${%s}, which is not in __inputs", m[1])
		}
	}
	required := map[string]bool{}
	for _, r := range d.Requires {
		required[r.Type+"/"+r.ID] = true
	}
	types := []string{"grafana/grafana", "datasource/prometheus"}
	for _, p := range loadDashboard(t).allPanels() {
		if p.Type != "row" {
			types = append(types, "panel/"+p.Type)
		}
	}
	for _, typ := range types {
		if !required[typ] {
			t.Errorf("__requires does not list %s", typ)
		}
	}
}
