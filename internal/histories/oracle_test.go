package histories_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/histories"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/tenancy"
)

// A failing seed prints its features by name; the rerun command parses
// them back to the same set.
func TestFeaturesRoundTrip(t *testing.T) {
	for f := histories.Features(0); f <= histories.All; f++ {
		got, err := histories.ParseFeatures(f.String())
		if err != nil || got != f {
			t.Fatalf("%d: %q parsed as %d, %v", f, f.String(), got, err)
		}
	}
	if _, err := histories.ParseFeatures("moves,typo"); err == nil || !strings.Contains(err.Error(), `"typo"`) {
		t.Fatalf("unknown feature: %v", err)
	}
}

// The oracle's comparison names the rows a restore lost or added, and
// treats rows as a multiset (tables without a primary key hold duplicates).
func TestDiff(t *testing.T) {
	want := histories.State{"comments": {"(1,a)", "(2,b)", "(2,b)"}, "tenants": {"(x)"}}
	if d := histories.Diff(want, histories.State{"tenants": {"(x)"}, "comments": {"(2,b)", "(1,a)", "(2,b)"}}); d != "" {
		t.Fatalf("equal states differ: %s", d)
	}
	d := histories.Diff(want, histories.State{"comments": {"(1,a)", "(2,b)", "(3,c)"}})
	for _, s := range []string{"comments: 3 rows, want 3", "missing (2,b)", "extra   (3,c)", "tenants: 0 rows, want 1", "missing (x)"} {
		if !strings.Contains(d, s) {
			t.Errorf("diff lacks %q:\n%s", s, d)
		}
	}
}

// Every generated schema is valid SQL with its initial rows, and
// tenantvault's discovery scopes each table along the very path the oracle
// joins: 30 seeds, each in a transaction that is rolled back.
func TestGeneratedSchemas(t *testing.T) {
	ctx := testenv.Context(t, 4*time.Minute)
	conn := testenv.Connect(t, testenv.NewDatabase(t))
	kinds := map[string]bool{}
	for seed := uint64(1); seed <= 30; seed++ {
		s := histories.GenerateSchema(seed, histories.All)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, s.DDL()+s.Populate()); err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, s.DDL())
		}
		cfg := tenancy.Config{TenantTable: s.TenantTable.Name}
		if !s.ViaTenantTable {
			cfg.TenantColumn = s.TenantCol
		}
		if err := cfg.Normalize(); err != nil {
			t.Fatal(err)
		}
		cat, err := tenancy.Discover(ctx, tx, cfg, "")
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if err := s.CheckScopes(cat.Tables); err != nil {
			t.Fatalf("seed %d: %v\n%s", seed, err, s.Describe())
		}
		for _, tb := range s.Tables {
			kinds[tb.Named] = true
		}
		if s.ViaTenantTable {
			kinds["scoped through the tenant table"] = true
		}
		tx.Rollback(ctx)
	}
	if len(kinds) < 12 {
		t.Fatalf("only %d kinds of table in 30 schemas: %v", len(kinds), kinds)
	}
}
