package restore_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
)

const tenantSchema = `
CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.customers (id serial PRIMARY KEY, name text NOT NULL, tier shared.tier NOT NULL);
CREATE TABLE %[1]s.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int NOT NULL REFERENCES %[1]s.customers(id), total numeric(12,2), note text,
  total_cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED);
CREATE TABLE %[1]s.lines (order_id bigint REFERENCES %[1]s.orders(id), sku text, qty int);
INSERT INTO %[1]s.customers (name, tier) SELECT 'customer ' || g || ' of %[2]d', 'gold' FROM generate_series(1, %[2]d) g;
INSERT INTO %[1]s.orders (customer_id, total, note) SELECT c.id, c.id * 10.5, E'a\tb' FROM %[1]s.customers c, generate_series(1, 3);
INSERT INTO %[1]s.lines SELECT o.id, 'sku-' || o.id, 2 FROM %[1]s.orders o;
`

// dumpSchemaRows reads every row of the tenant tables in a schema.
func dumpSchemaRows(t *testing.T, ctx context.Context, db, schema string) string {
	t.Helper()
	conn := testenv.Connect(t, db)
	var b strings.Builder
	for _, table := range []string{"customers", "orders", "lines"} {
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT t::text FROM %s t ORDER BY t::text", pgx.Identifier{schema, table}.Sanitize()))
		if err != nil {
			return "missing: " + err.Error()
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s: %s\n", table, strings.Join(vals, "|"))
	}
	return b.String()
}

func TestSchemaModel(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');
CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');`)
	tenants := []string{"tenant_acme", "tenant_globex", "tenant_o'brien"}
	for i, s := range tenants {
		testenv.Exec(t, db, fmt.Sprintf(tenantSchema, pgx.Identifier{s}.Sanitize(), 3+i*5))
	}
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	set, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if set, err = v.ReadManifest(ctx, set.ID); err != nil {
		t.Fatal(err)
	}
	if len(set.Tenants) != 3 || set.Tenant("tenant_o'brien") == nil {
		t.Fatalf("tenants: %+v", set.Tenants)
	}
	want := map[string]string{}
	for _, s := range tenants {
		want[s] = dumpSchemaRows(t, ctx, db, s)
	}

	// A tenant's schema dropped: restoring it needs --create-schema.
	testenv.Exec(t, db, `DROP SCHEMA "tenant_o'brien" CASCADE; UPDATE tenant_globex.orders SET note = 'corrupted'`)
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"tenant_o'brien"}})
	if err == nil || !strings.Contains(err.Error(), `schema "tenant_o'brien" does not exist in the target`) {
		t.Fatalf("err = %v", err)
	}
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"tenant_o'brien"}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"tenant_globex"}, IfExists: restore.IfExistsReplace})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PreRestoreSet == "" {
		t.Fatal("no pre-restore set")
	}
	for _, s := range tenants {
		if got := dumpSchemaRows(t, ctx, db, s); got != want[s] {
			t.Errorf("schema %s:\n got %s\nwant %s", s, got, want[s])
		}
	}
	// Identity columns moved forward.
	testenv.Exec(t, db, `INSERT INTO "tenant_o'brien".orders (customer_id, total) VALUES (1, 1)`)

	// Into an empty database: the schemas come from the archive.
	dst := testenv.NewDatabase(t)
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: []string{"tenant_acme"}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	if got := dumpSchemaRows(t, ctx, dst, "tenant_acme"); got != want["tenant_acme"] {
		t.Errorf("empty target:\n got %s\nwant %s", got, want["tenant_acme"])
	}
	// Only that tenant's schema, not an empty one per other tenant (which
	// would look like tenants without rows, and once made the next
	// tenant's --create-schema fail: "schema already exists").
	var schemas string
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%'`).Scan(&schemas); err != nil || schemas != "tenant_acme" {
		t.Fatalf("tenant schemas in the empty target: %s, %v", schemas, err)
	}
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: []string{"tenant_o'brien"}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"tenant_acme", "tenant_o'brien"} {
		if got := dumpSchemaRows(t, ctx, dst, s); got != want[s] {
			t.Errorf("empty target, schema %s:\n got %s\nwant %s", s, got, want[s])
		}
	}
}

func TestDatabaseModel(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	prefix := testenv.RandomName("tvdbm_")
	admin := testenv.PostgresURL(t)
	var dbs []string
	for i, name := range []string{"a", "b"} {
		dbName := prefix + "_" + name
		testenv.Exec(t, admin, "CREATE DATABASE "+dbName)
		dbs = append(dbs, dbName)
		t.Cleanup(func() {
			testenv.Exec(t, admin, "DROP DATABASE IF EXISTS "+dbName+" WITH (FORCE)")
		})
		testenv.Exec(t, testenv.DatabaseURL(t, dbName), `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');`+
			fmt.Sprintf(tenantSchema, "app", 4+i))
	}
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{Model: tenancy.ModelDatabase, DatabasePattern: prefix + `\_%`}
	set, err := snapshot.Run(ctx, snapshot.Options{Source: admin, Vault: v, Tenancy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	// Set format 2: the tenants are in the index, not in what Run returns.
	if set, err = v.ReadManifest(ctx, set.ID); err != nil {
		t.Fatal(err)
	}
	if len(set.Tenants) != 2 || len(set.Schemas) != 2 {
		t.Fatalf("set: %d tenants, %d schemas", len(set.Tenants), len(set.Schemas))
	}
	want := dumpSchemaRows(t, ctx, testenv.DatabaseURL(t, dbs[1]), "app")
	testenv.Exec(t, admin, "DROP DATABASE "+dbs[1]+" WITH (FORCE)")
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: admin, Tenants: []string{dbs[1]}})
	if err == nil || !strings.Contains(err.Error(), "does not exist in the target") {
		t.Fatalf("err = %v", err)
	}
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: admin, Tenants: []string{dbs[1]}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	if got := dumpSchemaRows(t, ctx, testenv.DatabaseURL(t, dbs[1]), "app"); got != want {
		t.Errorf("restored database:\n got %s\nwant %s", got, want)
	}
	// Restoring over the existing one replaces it.
	testenv.Exec(t, testenv.DatabaseURL(t, dbs[1]), "DELETE FROM app.lines")
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: admin, Tenants: []string{dbs[1]}, IfExists: restore.IfExistsReplace}); err != nil {
		t.Fatal(err)
	}
	if got := dumpSchemaRows(t, ctx, testenv.DatabaseURL(t, dbs[1]), "app"); got != want {
		t.Errorf("replaced database:\n got %s\nwant %s", got, want)
	}
}

// A partial set of the schema model (snapshot --tenant) holds only the
// tenants it captured: restoring another tenant from "the newest set"
// takes that tenant's rows from the full set before it. The partial set
// once held an empty entry for every other tenant schema, and such a
// restore brought the tenant back empty, reported verified.
func TestSchemaModelPartialSet(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');`)
	tenants := []string{"tenant_acme", "tenant_o'brien"}
	for i, s := range tenants {
		testenv.Exec(t, db, fmt.Sprintf(tenantSchema, pgx.Identifier{s}.Sanitize(), 3+i*5))
	}
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	full, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	want := dumpSchemaRows(t, ctx, db, "tenant_o'brien")
	part, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg, Tenants: []string{"tenant_acme"}})
	if err != nil {
		t.Fatal(err)
	}
	if part, err = v.ReadManifest(ctx, part.ID); err != nil {
		t.Fatal(err)
	}
	if !part.Partial || !part.ExactTenants || len(part.Tenants) != 1 || part.Tenants[0].ID != "tenant_acme" {
		t.Fatalf("partial set: partial %v, exact %v, tenants %+v", part.Partial, part.ExactTenants, part.Tenants)
	}
	dst := testenv.NewDatabase(t)
	rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: []string{"tenant_o'brien"}, CreateSchema: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Tenants[0].Set; got != full.ID {
		t.Errorf("restored from set %s, want the full set %s", got, full.ID)
	}
	if got := dumpSchemaRows(t, ctx, dst, "tenant_o'brien"); got != want {
		t.Errorf("restored:\n got %s\nwant %s", got, want)
	}

	// The partial set read the catalog of its tenant schema alone, and its
	// whole-database archive is split by every tenant schema: restored
	// into an empty database it creates that schema and the shared one.
	for _, tb := range part.Tables {
		if tb.Schema != "tenant_acme" {
			t.Errorf("the partial set has table %s.%s", tb.Schema, tb.Name)
		}
	}
	if part.Schemas[0].Split == nil || part.Schemas[0].TenantSchemasOnly {
		t.Fatalf("partial set's schema: split %v, tenant schemas only %v", part.Schemas[0].Split != nil, part.Schemas[0].TenantSchemasOnly)
	}
	acme := dumpSchemaRows(t, ctx, db, "tenant_acme")
	dst2 := testenv.NewDatabase(t)
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst2, Select: restore.Selector{SetID: part.ID}, Tenants: []string{"tenant_acme"}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	if got := dumpSchemaRows(t, ctx, dst2, "tenant_acme"); got != acme {
		t.Errorf("restored from the partial set:\n got %s\nwant %s", got, acme)
	}
	var schemas string
	if err := testenv.Connect(t, dst2).QueryRow(ctx, `SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&schemas); err != nil || schemas != "shared,tenant_acme" {
		t.Fatalf("schemas in the empty target: %s, %v", schemas, err)
	}
}

// A partial set whose schema SQL is not split (here: a tenant schema's name
// holds a line break) names only the tenants it captured, so restoring
// from it into an empty database cannot leave the other tenant schemas of
// its whole archive out: refused before anything is created.
func TestSchemaModelPartialSetWithoutSplit(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');`)
	for i, s := range []string{"tenant_acme", "tenant_two\nlines"} {
		testenv.Exec(t, db, fmt.Sprintf(tenantSchema, pgx.Identifier{s}.Sanitize(), 3+i*5))
	}
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	part, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg, Tenants: []string{"tenant_acme"}})
	if err != nil {
		t.Fatal(err)
	}
	if part.Schemas[0].Split != nil {
		t.Fatal("the schema SQL was split")
	}
	dst := testenv.NewDatabase(t)
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: []string{"tenant_acme"}, CreateSchema: true})
	want := "snapshot set " + part.ID + " is a partial set without split schema SQL: restoring it into an empty database would create every tenant schema of its archive"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	var n int
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("schemas created in the target: %d, %v", n, err)
	}
	// Into the database it was taken from, with the tenant's schema gone,
	// it restores (only that schema is rendered).
	want2 := dumpSchemaRows(t, ctx, db, "tenant_acme")
	testenv.Exec(t, db, `DROP SCHEMA tenant_acme CASCADE`)
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"tenant_acme"}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	if got := dumpSchemaRows(t, ctx, db, "tenant_acme"); got != want2 {
		t.Errorf("restored:\n got %s\nwant %s", got, want2)
	}
}

// restore --if-exists replace of the schema model takes its pre-restore set
// of the replaced tenant schemas alone (discovery and pg_dump --schema), so
// its cost does not grow with the other tenant schemas; such a set goes
// back into the database it came from and is refused into an empty one.
// The names hold pg_dump pattern characters: "tenant_st*r" must not match
// "tenant_stXr", nor a quote end the pattern.
func TestSchemaModelPreRestoreSet(t *testing.T) {
	ctx := testenv.Context(t, 3*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');`)
	const hostile = `tenant_st*r "q"`
	tenants := []string{hostile, `tenant_stXr "q"`, "tenant_o'brien"}
	for i, s := range tenants {
		testenv.Exec(t, db, fmt.Sprintf(tenantSchema, pgx.Identifier{s}.Sanitize(), 3+i*5))
	}
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg}); err != nil {
		t.Fatal(err)
	}
	testenv.Exec(t, db, `UPDATE "tenant_st*r ""q""".orders SET note = 'changed after the set'`)
	changed := dumpSchemaRows(t, ctx, db, hostile)
	rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{hostile}, IfExists: restore.IfExistsReplace})
	if err != nil {
		t.Fatal(err)
	}
	pre, err := v.ReadManifest(ctx, rep.PreRestoreSet)
	if err != nil {
		t.Fatal(err)
	}
	d := pre.Schemas[0]
	if !d.TenantSchemasOnly || d.Split == nil || len(pre.Tenants) != 1 || pre.Tenants[0].ID != hostile {
		t.Fatalf("pre-restore set: tenant schemas only %v, split %v, tenants %+v", d.TenantSchemasOnly, d.Split != nil, pre.Tenants)
	}
	for _, tb := range pre.Tables {
		if tb.Schema != hostile {
			t.Errorf("pre-restore set has table %s.%s", tb.Schema, tb.Name)
		}
	}
	archive, err := v.GetSchema(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "a.dump")
	if err := os.WriteFile(f, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("pg_restore", "--list", f).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, not := range []string{"tenant_stXr", "o'brien", "shared"} {
		if strings.Contains(string(out), not) {
			t.Errorf("the pre-restore archive lists %q:\n%s", not, out)
		}
	}
	if !strings.Contains(string(out), "TABLE "+hostile+" orders") {
		t.Errorf("the pre-restore archive misses the tenant's tables:\n%s", out)
	}

	// Undo: the replaced rows go back into the database they came from,
	// the schema recreated from the set's own part.
	testenv.Exec(t, db, `DROP SCHEMA "tenant_st*r ""q""" CASCADE`)
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Select: restore.Selector{SetID: pre.ID}, Tenants: []string{hostile}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	if got := dumpSchemaRows(t, ctx, db, hostile); got != changed {
		t.Errorf("undone:\n got %s\nwant %s", got, changed)
	}

	dst := testenv.NewDatabase(t)
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: dst, Select: restore.Selector{SetID: pre.ID}, Tenants: []string{hostile}, CreateSchema: true})
	want := "snapshot set " + pre.ID + " holds the schema of its own tenant schemas only (a pre-restore set): restoring it into an empty database would miss what lives outside them"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
	var n int
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("schemas created in the target: %d, %v", n, err)
	}
}
