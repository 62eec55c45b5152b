package tools

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// root is the product's repository, the parent of this module.
const root = ".."

func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// promql is Prometheus' own PromQL parser, with its default functions.
var promql = parser.NewParser(parser.Options{})

// selector is one vector selector of an expression: the metric name and
// the label matchers besides it.
type selector struct {
	name     string
	matchers []*labels.Matcher
	text     string
}

// selectors parses expr and returns its vector selectors. An expression
// that picks metrics by a regular expression over __name__ is refused: its
// metric names could not be checked.
func selectors(t *testing.T, where, expr string) []selector {
	t.Helper()
	e, err := promql.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: PromQL does not parse: %v\n%s", where, err, expr)
		return nil
	}
	var out []selector
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		s := selector{name: vs.Name, text: vs.String()}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				if m.Type != labels.MatchEqual {
					t.Errorf("%s: selector %s picks metric names by pattern; name them", where, vs)
				}
				s.name = m.Value
				continue
			}
			s.matchers = append(s.matchers, m)
		}
		if s.name == "" {
			t.Errorf("%s: selector %s names no metric", where, vs)
		}
		out = append(out, s)
		return nil
	})
	return out
}

// grafanaVars replaces the dashboard's variables with values Prometheus
// would see, so that the queries parse as Grafana sends them.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m",
	"$__range", "1d", "${__range}", "1d",
	"${source:regex}", ".*", "${source}", ".*", "$source", ".*",
)

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
