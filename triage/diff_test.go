package triage_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/repo"
	_ "github.com/tenantvault/tenantvault/repo/file"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/triage"
	"github.com/tenantvault/tenantvault/vault"
)

const tenantSchema = `
CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE %[1]s.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int NOT NULL REFERENCES %[1]s.customers(id), total numeric(12,2), note text);
INSERT INTO %[1]s.customers (name) SELECT 'customer ' || g FROM generate_series(1, %[2]d) g;
INSERT INTO %[1]s.orders (customer_id, total, note) SELECT c.id, c.id * 10.5, E'a\tb' FROM %[1]s.customers c, generate_series(1, 3);
`

func run(t *testing.T, ctx context.Context, o triage.DiffOptions) (map[string]triage.TenantDiff, *triage.DiffReport, error) {
	t.Helper()
	got := map[string]triage.TenantDiff{}
	var order []string
	rep, err := triage.Diff(ctx, o, func(d *triage.TenantDiff) error {
		cp := *d
		cp.Tables = append([]triage.TableDiff(nil), d.Tables...)
		got[d.Tenant] = cp
		order = append(order, d.Tenant)
		return nil
	})
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Fatalf("tenants not in ascending order: %q", order)
		}
	}
	return got, rep, err
}

// TestDiffSchemaModel: in the schema model a dropped tenant schema is a
// deleted tenant and a new one a new tenant, not a schema change; --exact
// finds an update that keeps the counts; a changed table is refused.
func TestDiffSchemaModel(t *testing.T) {
	ctx := testenv.Context(t, 2*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');`)
	for i, s := range []string{"tenant_acme", "tenant_globex", "tenant_o'brien", "tenant_quiet"} {
		testenv.Exec(t, db, fmt.Sprintf(tenantSchema, pgx.Identifier{s}.Sanitize(), 3+i))
	}
	b, err := repo.Open(ctx, "file://"+t.TempDir(), repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	v, err := vault.Open(ctx, b, vault.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	set, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `DROP SCHEMA "tenant_o'brien" CASCADE;
DELETE FROM tenant_acme.orders WHERE id % 2 = 0;
UPDATE tenant_globex.orders SET note = 'changed' WHERE id = 1;`)
	testenv.Exec(t, db, fmt.Sprintf(tenantSchema, "tenant_new", 2))

	got, rep, err := run(t, ctx, triage.DiffOptions{Vault: v, Source: db})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"tenant_acme": triage.MissingRows, "tenant_globex": triage.Unchanged, "tenant_o'brien": triage.Deleted,
		"tenant_quiet": triage.Unchanged, "tenant_new": triage.New}
	for id, s := range want {
		if got[id].Status != s {
			t.Fatalf("%q: %+v, want %s", id, got[id], s)
		}
	}
	if rep.Set.ID != set.ID || rep.Tenants != 5 || rep.LostByTable[`tenant_o'brien.customers`] != 5 || rep.Worst[0].Tenant != "tenant_o'brien" {
		t.Fatalf("report: %+v", rep)
	}

	got, rep, err = run(t, ctx, triage.DiffOptions{Vault: v, Source: db, Exact: true, Tenants: []string{"tenant_globex", "tenant_quiet", "tenant_o'brien"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["tenant_globex"].Status != triage.Changed || got["tenant_quiet"].Status != triage.Unchanged || got["tenant_o'brien"].Status != triage.Deleted {
		t.Fatalf("--exact: %+v", got)
	}
	for _, td := range got["tenant_globex"].Tables {
		if want := map[bool]string{true: "differs", false: "same"}[td.Table == "tenant_globex.orders"]; td.Digest != want {
			t.Fatalf("--exact digest of %s: %q, want %q", td.Table, td.Digest, want)
		}
	}
	if !rep.Exact {
		t.Fatal("report does not say exact")
	}

	// A table of an existing tenant changed shape: refused, exit 2.
	testenv.Exec(t, db, `ALTER TABLE tenant_quiet.orders ADD COLUMN extra int`)
	_, _, err = run(t, ctx, triage.DiffOptions{Vault: v, Source: db})
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "table tenant_quiet.orders changed (columns (") {
		t.Fatalf("changed table: %v", err)
	}
}
