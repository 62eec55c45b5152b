package tools

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

const dashboardFile = "deploy/grafana/tenantvault-dashboard.json"

// The parts of a Grafana dashboard this one uses, decoded strictly: a
// misspelt key (gridpos, legendformat) is an error here, where Grafana
// would silently ignore it.
type dashboard struct {
	Inputs        []json.RawMessage `json:"__inputs"`
	UID           string            `json:"uid"`
	Title         string            `json:"title"`
	Description   string            `json:"description"`
	Tags          []string          `json:"tags"`
	Timezone      string            `json:"timezone"`
	Editable      bool              `json:"editable"`
	GraphTooltip  int               `json:"graphTooltip"`
	SchemaVersion int               `json:"schemaVersion"`
	Version       int               `json:"version"`
	Refresh       string            `json:"refresh"`
	Time          struct{ From, To string }
	Links         []struct {
		Title       string `json:"title"`
		Type        string `json:"type"`
		URL         string `json:"url"`
		TargetBlank bool   `json:"targetBlank"`
	} `json:"links"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations json.RawMessage `json:"annotations"`
	Panels      []panel         `json:"panels"`
}

type variable struct {
	Name       string          `json:"name"`
	Label      string          `json:"label"`
	Type       string          `json:"type"`
	Datasource *datasource     `json:"datasource"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
	Current    json.RawMessage `json:"current"`
	Refresh    int             `json:"refresh"`
	Sort       int             `json:"sort"`
	Hide       int             `json:"hide"`
	Regex      string          `json:"regex"`
	Options    []any           `json:"options"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	ID          int                      `json:"id"`
	Datasource  *datasource              `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []target                 `json:"targets"`
	FieldConfig json.RawMessage          `json:"fieldConfig"`
	Options     json.RawMessage          `json:"options"`
	Collapsed   bool                     `json:"collapsed"`
	Panels      []panel                  `json:"panels"`
}

type target struct {
	Datasource   *datasource `json:"datasource"`
	RefID        string      `json:"refId"`
	Expr         string      `json:"expr"`
	LegendFormat string      `json:"legendFormat"`
	Instant      bool        `json:"instant"`
	Range        bool        `json:"range"`
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(read(t, dashboardFile)))
	dec.DisallowUnknownFields()
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return &d
}

// dashboardQuery is one PromQL query of the dashboard, as Prometheus gets it.
type dashboardQuery struct {
	where, expr string
}

// queries returns every panel's and variable's PromQL. label_values(m, l)
// variables count as the query m.
func (d *dashboard) queries(t *testing.T) []dashboardQuery {
	var out []dashboardQuery
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, dashboardQuery{fmt.Sprintf("panel %q query %s", p.Title, tg.RefID), grafanaVars.Replace(tg.Expr)})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		out = append(out, dashboardQuery{"variable " + v.Name, grafanaVars.Replace(m[1])})
	}
	return out
}

var panelTypes = map[string]bool{"row": true, "stat": true, "timeseries": true, "table": true}

// TestDashboard checks the dashboard's structure (strict keys, unique ids,
// a layout that fits the 24-column grid without overlaps, every query on
// the datasource variable) and parses each query with Prometheus' parser.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid %q title %q schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	anchors := runbookAnchors(t)
	for _, l := range d.Links {
		if anchor, ok := strings.CutPrefix(l.URL, runbookURL); ok && !anchors[anchor] {
			t.Errorf("link %q: %s is not a section of docs/RUNBOOK.md", l.Title, l.URL)
		}
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["datasource"] || !vars["source"] {
		t.Fatalf("variables %v, want datasource and source", sortedKeys(vars))
	}
	ids := map[int]bool{}
	type cell struct{ x, y int }
	used := map[cell]string{}
	var panels int
	var check func([]panel)
	check = func(ps []panel) {
		for _, p := range ps {
			if !panelTypes[p.Type] {
				t.Errorf("panel %q: type %q", p.Title, p.Type)
			}
			if ids[p.ID] || p.ID == 0 {
				t.Errorf("panel %q: id %d not unique", p.Title, p.ID)
			}
			ids[p.ID] = true
			g := p.GridPos
			if g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("panel %q: gridPos %+v off the grid", p.Title, g)
			}
			for x := g.X; x < g.X+g.W; x++ {
				for y := g.Y; y < g.Y+g.H; y++ {
					if other, ok := used[cell{x, y}]; ok {
						t.Errorf("panel %q overlaps %q at %d,%d", p.Title, other, x, y)
						return
					}
					used[cell{x, y}] = p.Title
				}
			}
			check(p.Panels)
			if p.Type == "row" {
				continue
			}
			panels++
			if p.Title == "" || len(p.Targets) == 0 {
				t.Errorf("panel %d: title %q, %d queries", p.ID, p.Title, len(p.Targets))
			}
			refs := map[string]bool{}
			for _, tg := range append([]target{{Datasource: p.Datasource, RefID: "panel"}}, p.Targets...) {
				if tg.Datasource == nil || tg.Datasource.Type != "prometheus" || tg.Datasource.UID != "${datasource}" {
					t.Errorf("panel %q %s: datasource %+v, want the ${datasource} variable", p.Title, tg.RefID, tg.Datasource)
				}
				if refs[tg.RefID] {
					t.Errorf("panel %q: refId %s twice", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
			}
			for _, tg := range p.Targets {
				for _, v := range regexp.MustCompile(`\$\{?(\w+)`).FindAllStringSubmatch(tg.Expr, -1) {
					if !vars[v[1]] && !strings.HasPrefix(v[1], "__") {
						t.Errorf("panel %q: query uses $%s, not a variable of the dashboard", p.Title, v[1])
					}
				}
			}
		}
	}
	check(d.Panels)
	if panels < 20 {
		t.Errorf("%d panels", panels)
	}
	names := map[string]bool{}
	for _, q := range d.queries(t) {
		for _, s := range selectors(t, q.where, q.expr) {
			names[s.name] = true
		}
	}
	// What the issue asks the dashboard to show.
	for _, want := range []string{
		"tenantvault_snapshot_last_success_timestamp_seconds", "tenantvault_capture_archived_until_timestamp_seconds",
		"tenantvault_capture_slot_lag_bytes", "tenantvault_capture_running", "tenantvault_snapshot_tenants",
		"tenantvault_snapshot_bytes_written_total", "tenantvault_snapshot_bytes_reused_total", "tenantvault_snapshot_last_duration_seconds",
		"tenantvault_verify_failures_total", "tenantvault_replay_proof_divergences", "kube_job_status_failed",
		"tenantvault_retention_marked_total", "tenantvault_retention_purged_total", "tenantvault_gc_collected_bytes_total",
	} {
		if !names[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
}
