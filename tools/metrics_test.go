package tools

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/tenantvault/tenantvault/agent"
	"github.com/tenantvault/tenantvault/capture"
	"github.com/tenantvault/tenantvault/internal/fixture"
	"github.com/tenantvault/tenantvault/internal/testenv"
	_ "github.com/tenantvault/tenantvault/repo/s3"
)

// external are metrics the rules and the dashboard read from elsewhere:
// the drill runs as a Kubernetes CronJob, so its results come from
// kube-state-metrics, and up is Prometheus' own.
var external = map[string]string{
	"up":                                       "Prometheus",
	"kube_job_status_failed":                   "kube-state-metrics",
	"kube_job_status_active":                   "kube-state-metrics",
	"kube_job_status_start_time":               "kube-state-metrics",
	"kube_job_status_completion_time":          "kube-state-metrics",
	"kube_cronjob_status_last_successful_time": "kube-state-metrics",
}

// pending are agent metrics that are defined and registered but get their
// first series only when the agent has run a replay proof, which takes two
// exact sets and a scratch database: this agent's run is too short for it,
// so they are checked against the definitions in agent/metrics.go here, and
// against a real /metrics by the agent's TestReplayProof.
var pending = map[string]bool{
	"tenantvault_replay_proof_last_run_timestamp_seconds":     true,
	"tenantvault_replay_proof_last_success_timestamp_seconds": true,
	"tenantvault_replay_proof_divergences":                    true,
}

// targetLabels are added by Prometheus when it scrapes, so no scrape has them.
var targetLabels = map[string]bool{"job": true, "instance": true, "namespace": true, "pod": true, "service": true, "endpoint": true, "container": true}

// declaredMetrics reads the metric names agent/metrics.go defines.
func declaredMetrics(t *testing.T) map[string]bool {
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`Namespace: ns, Name: "(\w+)"`).FindAllStringSubmatch(string(read(t, "agent/metrics.go")), -1) {
		out["tenantvault_"+m[1]] = true
	}
	if len(out) < 20 {
		t.Fatalf("found %d metric definitions in agent/metrics.go", len(out))
	}
	return out
}

// use is one metric selector of a rule or dashboard query.
type use struct {
	where string
	sel   selector
}

// metricUses collects the selectors of every rule expression and dashboard
// query, and the names the recording rules define.
func metricUses(t *testing.T) ([]use, map[string]bool) {
	var uses []use
	recorded := map[string]bool{}
	for _, g := range allRules(t).Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if r.Record != "" {
				recorded[r.Record] = true
			}
			for _, s := range selectors(t, "rule "+name, r.Expr) {
				uses = append(uses, use{"rule " + name, s})
			}
		}
	}
	for _, q := range loadDashboard(t).queries(t) {
		for _, s := range selectors(t, "dashboard "+q.where, q.expr) {
			uses = append(uses, use{"dashboard " + q.where, s})
		}
	}
	if len(uses) < 50 {
		t.Fatalf("%d metric selectors in the rules and the dashboard", len(uses))
	}
	return uses, recorded
}

// family finds the scraped family of a name, also for the _bucket, _sum
// and _count series of histograms and summaries.
func family(fams map[string]*dto.MetricFamily, name string) *dto.MetricFamily {
	if f := fams[name]; f != nil {
		return f
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if f := fams[base]; f != nil && (f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY ||
			f.GetType() == dto.MetricType_GAUGE_HISTOGRAM) && (suffix != "_bucket" || f.GetType() != dto.MetricType_SUMMARY) {
			return f
		}
	}
	return nil
}

// selects reports whether a selector's label matchers (other than those on
// labels Prometheus adds) match at least one series of the family.
func selects(f *dto.MetricFamily, ms []*labels.Matcher) bool {
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, mt := range ms {
			if !targetLabels[mt.Name] && mt.Name != "le" && mt.Name != "quantile" && !mt.Matches(got[mt.Name]) {
				ok = false
			}
		}
		if ok {
			return true
		}
	}
	return false
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// TestRulesAndDashboardMetricsExist starts a real agent against the real
// PostgreSQL and MinIO (a source with change capture, snapshots every 2s,
// purge every second), scrapes its /metrics until everything the rules and
// the dashboard read is there, and fails for each metric name that never
// appears, each selector whose labels match no series (a misspelt
// reason="overun"), and each agent metric the docs do not list.
func TestRulesAndDashboardMetricsExist(t *testing.T) {
	uses, recorded := metricUses(t)
	declared := declaredMetrics(t)
	docs := string(read(t, "docs/agent.md"))
	for name := range declared {
		if !strings.Contains(docs, name) {
			t.Errorf("docs/agent.md does not list %s", name)
		}
	}
	var want []use
	for _, u := range uses {
		n := u.sel.name
		switch {
		case recorded[n]:
		case external[n] != "":
		case strings.HasPrefix(n, "tenantvault_") && !declared[n]:
			t.Errorf("%s: %s is not defined in agent/metrics.go", u.where, n)
		case pending[n]:
		default:
			want = append(want, u)
		}
	}

	db := testenv.NewDatabase(t)
	fixture.Create(t, db)
	repoURL := testenv.NewS3Repo(t)
	t.Cleanup(func() { capture.DropSlot(context.Background(), db, "") })
	cfg, err := agent.Load(fmt.Appendf(nil, `
repository: %q
init: true
listen: 127.0.0.1:0
purge_schedule: "@every 1s"
retention:
  keep_last: 2
  grace: 1h
sources:
  - name: main
    url_env: SOURCE_URL
    schedule: "@every 2s"
    timeout: 50s
    capture: true
    capture_flush_interval: 200ms
    set_replica_identity: true
`, repoURL), func(k string) string { return map[string]string{"SOURCE_URL": db}[k] })
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	a := agent.New(cfg, agent.Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Version: "test"})
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	w := fixture.StartWriter(t, db, []string{"acme", "globex"}, 1)
	defer w.Stop()

	// Some series appear only once something happened (a set, a purge, a
	// capture flush): scrape until none is missing.
	var fams map[string]*dto.MetricFamily
	var missing []use
	for deadline := time.Now().Add(2 * time.Minute); ; {
		fams = scrape(t, "http://"+a.Addr()+"/metrics")
		missing = missing[:0]
		for _, u := range want {
			if f := family(fams, u.sel.name); f == nil || !selects(f, u.sel.matchers) {
				missing = append(missing, u)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, u := range missing {
		if family(fams, u.sel.name) == nil {
			t.Errorf("%s: %s is not in the agent's /metrics", u.where, u.sel.name)
		} else {
			t.Errorf("%s: %s selects no series of the agent's /metrics", u.where, u.sel.text)
		}
	}
	// The stale-backup alert fires when /readyz calls the source late:
	// twice the schedule interval (2s) plus the jitter (none).
	if f := fams["tenantvault_snapshot_late_after_seconds"]; f == nil || len(f.Metric) != 1 || f.Metric[0].GetGauge().GetValue() != 4 {
		t.Errorf("tenantvault_snapshot_late_after_seconds %v, want 4 for main", f)
	}
	for n := range pending {
		if fams[n] != nil {
			t.Logf("%s now has series: it can leave the pending list", n)
		}
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", logs.String())
	}
	t.Logf("%d selectors of the rules and the dashboard checked against %d metric families", len(want), len(fams))
}
