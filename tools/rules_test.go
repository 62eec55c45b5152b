package tools

import (
	"bytes"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"go.yaml.in/yaml/v3"
)

const (
	rulesFile     = "deploy/prometheus/tenantvault-rules.yaml"
	ruleCRFile    = "deploy/kubernetes/prometheus-rule.yaml"
	chartRuleFile = "deploy/helm/tenantvault/files/tenantvault-rules.yaml"
	runbookURL    = "https://github.com/tenantvault/tenantvault/blob/main/docs/RUNBOOK.md#"
)

// parseRules runs a rules file through the parser and the checks
// Prometheus applies when it loads one (unknown fields are errors, every
// expression and annotation template must parse).
func parseRules(t *testing.T, where string, data []byte) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.Parse(data, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("%s: %v", where, err)
	}
	if groups == nil || len(groups.Groups) == 0 {
		t.Fatalf("%s: no rule groups", where)
	}
	return groups
}

// prometheusRule is the part of a PrometheusRule the operator reads.
type prometheusRule struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
}

// ruleCRGroups checks a PrometheusRule's envelope and parses its spec as a
// rules file.
func ruleCRGroups(t *testing.T, where string, data []byte) *rulefmt.RuleGroups {
	t.Helper()
	var cr prometheusRule
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cr); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if cr.APIVersion != "monitoring.coreos.com/v1" || cr.Kind != "PrometheusRule" || cr.Metadata.Name == "" {
		t.Fatalf("%s: not a named monitoring.coreos.com/v1 PrometheusRule: %s %s %q", where, cr.APIVersion, cr.Kind, cr.Metadata.Name)
	}
	spec, err := yaml.Marshal(&cr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return parseRules(t, where+" spec", spec)
}

// allRules is every rule of the plain rules file, parsed.
func allRules(t *testing.T) *rulefmt.RuleGroups {
	return parseRules(t, rulesFile, read(t, rulesFile))
}

var severities = map[string]bool{"critical": true, "warning": true}

// TestAlertRules parses the rules file with Prometheus' rule parser and
// checks what an on-call person needs in every alert.
func TestAlertRules(t *testing.T) {
	groups := allRules(t)
	anchors := runbookAnchors(t)
	docs := string(read(t, "docs/agent.md"))
	seen := map[string]bool{}
	var alerts int
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				if !strings.HasPrefix(r.Record, "tenantvault:") {
					t.Errorf("recording rule %s: not under tenantvault:", r.Record)
				}
				continue
			}
			alerts++
			where := g.Name + "/" + r.Alert
			if seen[r.Alert] {
				t.Errorf("%s: alert name used twice", where)
			}
			seen[r.Alert] = true
			if !severities[r.Labels["severity"]] {
				t.Errorf("%s: severity %q, want critical or warning", where, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
			u := r.Annotations["runbook_url"]
			if anchor, ok := strings.CutPrefix(u, runbookURL); !ok || !anchors[anchor] {
				t.Errorf("%s: runbook_url %s is not a section of docs/RUNBOOK.md", where, u)
			}
			if !strings.Contains(docs, "`"+r.Alert+"`") {
				t.Errorf("%s: not documented in docs/agent.md", where)
			}
		}
	}
	if alerts < 15 {
		t.Errorf("%d alerts", alerts)
	}
	// Each area of the issue has its alert.
	for _, want := range []string{"TenantvaultBackupStale", "TenantvaultCaptureBehind", "TenantvaultCaptureStopped",
		"TenantvaultVerifyFailed", "TenantvaultDrillFailed", "TenantvaultDrillSlow", "TenantvaultReplayProofDivergence",
		"TenantvaultPurgeFailing", "TenantvaultWebhookFailing"} {
		if !seen[want] {
			t.Errorf("no alert %s", want)
		}
	}
}

// TestAlertRulesBroken makes sure the parser used above rejects what it
// should, so that a green TestAlertRules means something.
func TestAlertRulesBroken(t *testing.T) {
	for name, file := range map[string]string{
		"bad PromQL":     "groups: [{name: g, rules: [{alert: A, expr: 'rate(x[5m]'}]}]",
		"unknown field":  "groups: [{name: g, rules: [{alert: A, expr: up, fro: 5m}]}]",
		"bad template":   "groups: [{name: g, rules: [{alert: A, expr: up, annotations: {summary: '{{ $labels.x '}}]}]",
		"duplicate name": "groups: [{name: g, rules: [{alert: A, expr: up}]}, {name: g, rules: [{alert: B, expr: up}]}]",
	} {
		if _, errs := rulefmt.Parse([]byte(file), false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler)); len(errs) == 0 {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestPrometheusRuleMatchesRulesFile: the PrometheusRule of
// deploy/kubernetes and the chart's copy carry exactly the rules file's
// rules.
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	plain := allRules(t)
	cr := ruleCRGroups(t, ruleCRFile, read(t, ruleCRFile))
	if !reflect.DeepEqual(plain.Groups, cr.Groups) {
		t.Errorf("%s differs from %s:\n%s", ruleCRFile, rulesFile, groupsDiff(plain, cr))
	}
	if !bytes.Equal(read(t, rulesFile), read(t, chartRuleFile)) {
		t.Errorf("%s is not a copy of %s (cp %[2]s %[1]s)", chartRuleFile, rulesFile)
	}
}

func groupsDiff(a, b *rulefmt.RuleGroups) string {
	if len(a.Groups) != len(b.Groups) {
		return fmt.Sprintf("%d groups, %d groups", len(a.Groups), len(b.Groups))
	}
	for i := range a.Groups {
		ga, gb := a.Groups[i], b.Groups[i]
		if ga.Name != gb.Name || len(ga.Rules) != len(gb.Rules) {
			return fmt.Sprintf("group %d: %s (%d rules), %s (%d rules)", i, ga.Name, len(ga.Rules), gb.Name, len(gb.Rules))
		}
		for j := range ga.Rules {
			if !reflect.DeepEqual(ga.Rules[j], gb.Rules[j]) {
				return fmt.Sprintf("group %s rule %d:\n%+v\n%+v", ga.Name, j, ga.Rules[j], gb.Rules[j])
			}
		}
	}
	return "group settings differ"
}

// runbookAnchors are the anchors GitHub gives docs/RUNBOOK.md's headings.
func runbookAnchors(t *testing.T) map[string]bool {
	out := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(string(read(t, "docs/RUNBOOK.md")), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			h = strings.TrimSpace(strings.TrimLeft(h, "#"))
			out[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")] = true
		}
	}
	return out
}
