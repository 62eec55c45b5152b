package bench

import (
	"net/url"
	"strings"
	"testing"

	"github.com/tenantvault/tenantvault/bench/datagen"
)

func TestMedianAndPairedRatio(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median of 3 = %v", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of 4 = %v", got)
	}
	base := &Step{Samples: []Sample{{Wall: 10}, {Wall: 20}, {Wall: 40}}}
	// The same 2x in every repetition, whatever the load did.
	other := &Step{Samples: []Sample{{Wall: 20}, {Wall: 40}, {Wall: 80}}}
	if got := pairedRatio(other, base); got != "2.00×" {
		t.Errorf("paired ratio = %q", got)
	}
	if got := pairedRatio(&Step{Samples: []Sample{{Wall: 1}}}, base); got != "" {
		t.Errorf("unpaired samples gave %q", got)
	}
	if m := other.Median(); m.Wall != 40 {
		t.Errorf("median wall = %v", m.Wall)
	}
}

func TestWithParams(t *testing.T) {
	u := withParams("postgres://postgres@127.0.0.1:5432/saas?sslmode=disable", []string{"options=-c enable_seqscan=off -c plan_cache_mode=force_custom_plan"})
	if strings.Contains(u, "+") {
		t.Errorf("%s: spaces must be %%20, libpq parsers do not read '+'", u)
	}
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Query().Get("options"); got != "-c enable_seqscan=off -c plan_cache_mode=force_custom_plan" {
		t.Errorf("options = %q", got)
	}
	if p.Query().Get("sslmode") != "disable" {
		t.Errorf("lost sslmode: %s", u)
	}
}

func TestTenantQueriesQuote(t *testing.T) {
	qs := tenantQueries(datagen.ShapeTracker, []string{"t0001", "o'brien"})
	if len(qs) != 10 || qs[0].table != "tenants" || qs[len(qs)-1].table != "audit_log" {
		t.Fatalf("queries: %+v", qs)
	}
	for _, q := range qs {
		if !strings.Contains(q.sql, "'o''brien'") {
			t.Errorf("%s: tenant ID not quoted: %s", q.table, q.sql)
		}
	}
}
