package tenancy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/tenancy"
)

// render describes a catalog as restore uses it: each table with its
// columns and key, and the foreign keys between them.
func render(cat *tenancy.Catalog, keep func(schema string) bool) string {
	var lines []string
	for _, t := range cat.Tables {
		if !keep(t.Schema) {
			continue
		}
		var cols []string
		for _, c := range t.Columns {
			cols = append(cols, fmt.Sprintf("%s %s nn=%v gen=%v id=%q seq=%q def=%v", c.Name, c.Type, c.NotNull, c.Generated, c.Identity, c.Sequence, c.HasDefault))
		}
		lines = append(lines, fmt.Sprintf("table %s part=%v key=%v: %s", t.QualifiedName(), t.Partitioned, t.Key, strings.Join(cols, ", ")))
	}
	for _, fk := range cat.ForeignKeys {
		from, to := cat.Tables[fk.From], cat.Tables[fk.To]
		if !keep(from.Schema) || !keep(to.Schema) {
			continue
		}
		lines = append(lines, fmt.Sprintf("fk %s %s%v -> %s%v nn=%v cascade=%v", fk.Name, from.QualifiedName(), fk.Columns, to.QualifiedName(), fk.RefCols, fk.NotNull, fk.Cascade))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestReadCatalogFiltered checks the catalog read a schema-model restore
// makes of a target with many tenant schemas (from the schemas through
// pg_depend, not by a scan of pg_class) against the whole catalog: the same
// tables, columns, keys and foreign keys for the shared schemas and the
// tenants asked for, none of the others, and a true answer to "are there
// other tenant tables" exactly when there are.
func TestReadCatalogFiltered(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	db := testenv.NewDatabase(t)
	var b strings.Builder
	b.WriteString(`CREATE TABLE public.plans (id int PRIMARY KEY, name text NOT NULL);
CREATE SCHEMA shared;
CREATE TABLE shared.events (at timestamptz NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE shared.events_2026 PARTITION OF shared.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE VIEW shared.v AS SELECT 1 AS one;
CREATE TABLE public.moved (id int PRIMARY KEY, note text);
`)
	for i := range 40 {
		s := fmt.Sprintf(`"tenant_%02d"`, i)
		fmt.Fprintf(&b, `CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.projects (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, plan_id int NOT NULL REFERENCES public.plans, name text);
CREATE TABLE %[1]s.tasks (id bigserial PRIMARY KEY, project_id bigint NOT NULL REFERENCES %[1]s.projects ON DELETE CASCADE, title text DEFAULT 'x');
CREATE INDEX ON %[1]s.tasks (project_id);
`, s)
	}
	// A table moved into a tenant schema after it was created, an unlogged
	// one, and a name that needs quoting.
	b.WriteString(`ALTER TABLE public.moved SET SCHEMA tenant_03;
CREATE UNLOGGED TABLE tenant_05.scratch (k text PRIMARY KEY);
CREATE SCHEMA "tenant_o'brien"; CREATE TABLE "tenant_o'brien"."Odd Name" (id int PRIMARY KEY);
`)
	testenv.Exec(t, db, b.String())
	conn := testenv.Connect(t, db)
	full, err := tenancy.ReadCatalog(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	isTenant := func(s string) bool { return strings.HasPrefix(s, "tenant_") }
	for _, c := range []struct {
		schemas []string
		others  bool
	}{
		{[]string{"tenant_03", "tenant_05", "tenant_o'brien", "tenant_gone"}, true},
		{nil, true},
		{allTenants(), false},
	} {
		asked := map[string]bool{}
		for _, s := range c.schemas {
			asked[s] = true
		}
		keep := func(s string) bool { return !isTenant(s) || asked[s] }
		cat, others, err := tenancy.ReadCatalogFiltered(ctx, conn, tenancy.SchemaFilter{Pattern: `tenant\_%`, Schemas: c.schemas})
		if err != nil {
			t.Fatal(err)
		}
		want := render(full, keep)
		if got := render(cat, func(string) bool { return true }); got != want {
			t.Errorf("schemas %v:\n got:\n%s\nwant:\n%s", c.schemas, got, want)
		}
		if others != c.others {
			t.Errorf("schemas %v: others = %v, want %v", c.schemas, others, c.others)
		}
		if len(c.schemas) == 4 && !strings.Contains(want, "tenant_03.moved") || !strings.Contains(want, "shared.events part=true") {
			t.Fatalf("the fixture lost its point:\n%s", want)
		}
	}
	// An empty database: nothing, and no other tables.
	cat, others, err := tenancy.ReadCatalogFiltered(ctx, testenv.Connect(t, testenv.NewDatabase(t)), tenancy.SchemaFilter{Pattern: `tenant\_%`, Schemas: []string{"tenant_03"}})
	if err != nil || len(cat.Tables) != 0 || others {
		t.Fatalf("empty database: %d tables, others %v, %v", len(cat.Tables), others, err)
	}
}

func allTenants() []string {
	out := []string{"tenant_o'brien"}
	for i := range 40 {
		out = append(out, fmt.Sprintf("tenant_%02d", i))
	}
	return out
}
