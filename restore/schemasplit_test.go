package restore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault"
	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// readCounter counts the bytes read from each key.
type readCounter struct {
	repo.Backend
	mu    sync.Mutex
	bytes map[string]int64
}

func (c *readCounter) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := c.Backend.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	c.mu.Lock()
	c.bytes[key] += int64(len(data))
	c.mu.Unlock()
	return io.NopCloser(bytes.NewReader(data)), err
}

func (c *readCounter) take() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.bytes
	c.bytes = map[string]int64{}
	return out
}

// TestSchemaSplitRestoreReadsOnePart restores one schema of a 50-schema
// set (set format 3, split schema SQL) into an empty database and into the
// live one, and checks that it read the tenant's part of the split schema
// (and the prelude, and the shared part for the empty target), never the
// pg_dump archive, and a header that does not list the other tenants'
// tables.
func TestSchemaSplitRestoreReadsOnePart(t *testing.T) {
	ctx := testenv.Context(t, 4*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');
CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');`)
	var tenants []string
	var script strings.Builder
	for i := 0; i < 50; i++ {
		s := fmt.Sprintf("tenant_%02d", i)
		tenants = append(tenants, s)
		fmt.Fprintf(&script, tenantSchema, pgx.Identifier{s}.Sanitize(), 2+i%3)
		fmt.Fprintf(&script, "COMMENT ON TABLE %s.orders IS 'orders of %s';\n", s, s)
	}
	testenv.Exec(t, db, script.String())
	dir := t.TempDir()
	v, b := openVault(t, ctx, "file://"+dir)
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	set, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	const one = "tenant_17"
	want := dumpSchemaRows(t, ctx, db, one)

	// A reader of its own, counting what it reads.
	rc := &readCounter{Backend: b, bytes: map[string]int64{}}
	rv, err := vault.Open(ctx, rc, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := rv.OpenSet(ctx, set.ID)
	if err != nil {
		t.Fatal(err)
	}
	hdr := s.Header()
	if hdr.Version != manifest.Version6 || len(hdr.Schemas) != 1 || hdr.Schemas[0].Split == nil {
		t.Fatalf("set format %d, schemas %+v", hdr.Version, hdr.Schemas)
	}
	if n := len(hdr.TablePositions); n != 1 || len(hdr.Tables) != 1+50*3 {
		t.Fatalf("header holds %d of %d tables (want only shared.settings)", n, len(hdr.Tables))
	}
	got := rc.take()
	if n := got[vault.ManifestKey(set.ID)]; n == 0 || n > 4096 {
		t.Errorf("header: %d bytes", n)
	}
	split := hdr.Schemas[0].Split
	tn, err := s.Tenant(ctx, one)
	if err != nil || tn == nil || tn.SchemaSQL == nil || len(tn.Tables) != 3 {
		t.Fatalf("entry of %s: %+v, %v", one, tn, err)
	}
	rc.take()

	check := func(what, target string, shared bool) {
		t.Helper()
		read := rc.take()
		if n := read[hdr.Schemas[0].Key]; n != 0 {
			t.Errorf("%s: read %d bytes of the pg_dump archive", what, n)
		}
		wantParts := split.Prelude.Length + tn.SchemaSQL.Length
		if shared {
			wantParts += split.Shared.Length
		}
		if n := read[split.Key]; n != wantParts {
			t.Errorf("%s: read %d bytes of the split schema, want %d (prelude, %s part%s)", what, n, wantParts, one, map[bool]string{true: ", shared part"}[shared])
		}
		if got := dumpSchemaRows(t, ctx, target, one); got != want {
			t.Errorf("%s:\n got %s\nwant %s", what, got, want)
		}
		var comment string
		if err := testenv.Connect(t, target).QueryRow(ctx, `SELECT obj_description('tenant_17.orders'::regclass)`).Scan(&comment); err != nil || comment != "orders of tenant_17" {
			t.Errorf("%s: comment %q, %v", what, comment, err)
		}
	}

	// Into an empty database: shared part and the one tenant's.
	dst := testenv.NewDatabase(t)
	rv2, _ := vault.Open(ctx, rc, vault.Options{})
	rc.take()
	if _, err := restore.Run(ctx, restore.Options{Vault: rv2, Target: dst, Tenants: []string{one}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	check("empty target", dst, true)
	var schemas string
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&schemas); err != nil || schemas != "shared,tenant_17" {
		t.Fatalf("schemas in the empty target: %s, %v", schemas, err)
	}
	// Identity and serial sequences moved past the restored rows.
	testenv.Exec(t, dst, `INSERT INTO tenant_17.orders (customer_id, total) VALUES (1, 1); INSERT INTO tenant_17.customers (name, tier) VALUES ('new', 'free')`)

	// Into the live database, its schema dropped: only the tenant's part.
	testenv.Exec(t, db, `DROP SCHEMA tenant_17 CASCADE`)
	rv3, _ := vault.Open(ctx, rc, vault.Options{})
	rc.take()
	if _, err := restore.Run(ctx, restore.Options{Vault: rv3, Target: db, Tenants: []string{one}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	check("live database", db, false)
}

// TestSchemaRestoreAmongManySchemas restores, into a live database holding
// many other tenant schemas, three tenants at once whose schemas were
// dropped (their schemas created, the catalog read again once for all) and
// checks each row for row, the neighbours untouched, and that the
// catalog read limited to the restored schemas still sees what would make
// a restore wrong: a tenant whose table differs is refused, and one with
// rows is a conflict.
func TestSchemaRestoreAmongManySchemas(t *testing.T) {
	ctx := testenv.Context(t, 4*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');
CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');`)
	var script strings.Builder
	var tenants []string
	for i := range 60 {
		s := fmt.Sprintf("tenant_%02d", i)
		tenants = append(tenants, s)
		fmt.Fprintf(&script, tenantSchema, pgx.Identifier{s}.Sanitize(), 1+i%4)
	}
	testenv.Exec(t, db, script.String())
	v, _ := openVault(t, ctx, "file://"+t.TempDir())
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	if _, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, s := range tenants {
		want[s] = dumpSchemaRows(t, ctx, db, s)
	}
	lost := []string{"tenant_07", "tenant_31", "tenant_58"}
	testenv.Exec(t, db, `DROP SCHEMA tenant_07, tenant_31, tenant_58 CASCADE`)
	rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: lost, CreateSchema: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range rep.Tenants {
		if !tr.Verified || tr.Digests != 3 {
			t.Errorf("%s: verified %v, %d digests", tr.Tenant, tr.Verified, tr.Digests)
		}
	}
	for _, s := range tenants {
		if got := dumpSchemaRows(t, ctx, db, s); got != want[s] {
			t.Errorf("schema %s:\n got %s\nwant %s", s, got, want[s])
		}
	}
	// Sequences moved past the restored rows, in every created schema.
	for _, s := range lost {
		testenv.Exec(t, db, fmt.Sprintf(`INSERT INTO %[1]s.customers (name, tier) VALUES ('new', 'free'); INSERT INTO %[1]s.orders (customer_id, total) VALUES (1, 1)`, s))
	}

	// A restored tenant's table that differs from the set's is refused,
	// nothing written; the other tenants' tables are not looked at.
	testenv.Exec(t, db, `DELETE FROM tenant_07.lines; DELETE FROM tenant_07.orders; DELETE FROM tenant_07.customers;
ALTER TABLE tenant_07.orders ADD COLUMN region text NOT NULL; ALTER TABLE tenant_12.orders DROP COLUMN note`)
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"tenant_07"}})
	var sm *restore.SchemaMismatchError
	if !errors.As(err, &sm) || !strings.Contains(err.Error(), "tenant_07.orders.region: NOT NULL without a default in the target") || strings.Contains(err.Error(), "tenant_12") {
		t.Fatalf("err = %v", err)
	}
	if n := count(t, ctx, db, `SELECT count(*) FROM tenant_07.customers`); n != 0 {
		t.Fatalf("refused restore wrote %d rows", n)
	}
	// A tenant with rows is a conflict.
	_, err = restore.Run(ctx, restore.Options{Vault: v, Target: db, Tenants: []string{"tenant_31"}})
	var ie *tenantvault.InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), `"tenant_31": tenant_31.customers (`) {
		t.Fatalf("err = %v", err)
	}
}

// TestSchemaSplitEncrypted snapshots schemas with hostile names into an
// encrypted repository (file:// and MinIO) and checks that the schema SQL
// is split and sealed (set format 4), that restoring one schema into an
// empty database reads the prelude, the shared part and that schema's
// part, never the archive, and equals the source row for row; that a
// damaged part is an integrity failure; and that destroying a tenant's key
// (forget) makes its part unreadable while another tenant still restores.
func TestSchemaSplitEncrypted(t *testing.T) {
	for name, url := range map[string]func(*testing.T) string{
		"file": func(t *testing.T) string { return "file://" + t.TempDir() },
		"s3":   func(t *testing.T) string { return testenv.NewS3Repo(t) },
	} {
		t.Run(name, func(t *testing.T) { testSchemaSplitEncrypted(t, url(t)) })
	}
}

func testSchemaSplitEncrypted(t *testing.T, url string) {
	ctx := testenv.Context(t, 4*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');
CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');`)
	tenants := []string{"tenant_a", "tenant_o'brien", `tenant_"q" &x`, "tenant_ünï", "tenant_z"}
	var script strings.Builder
	for i, s := range tenants {
		fmt.Fprintf(&script, tenantSchema, pgx.Identifier{s}.Sanitize(), 2+i%3)
	}
	testenv.Exec(t, db, script.String())
	idText, signText, _, _, err := vault.NewKeyPair("2026-01-01T00:00:00Z")
	if err != nil {
		t.Fatal(err)
	}
	reader, _ := vault.ParseKeyFile(strings.NewReader(idText))
	writer, _ := vault.ParseKeyFile(strings.NewReader(signText))
	b, err := repo.Open(ctx, url, repo.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	w, err := vault.Open(ctx, b, vault.Options{Init: true, Keys: writer})
	if err != nil {
		t.Fatal(err)
	}
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	set, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: w, Tenancy: cfg})
	if err != nil {
		t.Fatal(err)
	}
	const one = "tenant_o'brien"
	want := dumpSchemaRows(t, ctx, db, one)

	rc := &readCounter{Backend: b, bytes: map[string]int64{}}
	rv, err := vault.Open(ctx, rc, vault.Options{Keys: reader})
	if err != nil {
		t.Fatal(err)
	}
	s, err := rv.OpenSet(ctx, set.ID)
	if err != nil {
		t.Fatal(err)
	}
	hdr := s.Header()
	if hdr.Version != manifest.Version6 || len(hdr.Schemas) != 1 || hdr.Schemas[0].Split == nil {
		t.Fatalf("set format %d, schemas %+v", hdr.Version, hdr.Schemas)
	}
	split := hdr.Schemas[0].Split
	tn, err := s.Tenant(ctx, one)
	if err != nil || tn == nil || tn.SchemaSQL == nil || tn.Key == "" {
		t.Fatalf("entry of %s: %+v, %v", one, tn, err)
	}
	// The signed header lists the split object: verify and GC see it.
	x, err := rv.ReadIndex(ctx, set.ID)
	if err != nil || len(x.Schemas) != 2 || x.Schemas[1].Key != split.Key {
		t.Fatalf("signed header schemas %+v, %v", x.Schemas, err)
	}

	dst := testenv.NewDatabase(t)
	rv2, _ := vault.Open(ctx, rc, vault.Options{Keys: reader})
	rc.take()
	if _, err := restore.Run(ctx, restore.Options{Vault: rv2, Target: dst, Tenants: []string{one}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	read := rc.take()
	if n := read[hdr.Schemas[0].Key]; n != 0 {
		t.Errorf("read %d bytes of the sealed pg_dump archive", n)
	}
	if n, wantN := read[split.Key], split.Prelude.Length+split.Shared.Length+tn.SchemaSQL.Length; n != wantN {
		t.Errorf("read %d bytes of the split schema, want %d (prelude, shared, one part)", n, wantN)
	}
	if got := dumpSchemaRows(t, ctx, dst, one); got != want {
		t.Errorf("restored:\n got %s\nwant %s", got, want)
	}
	var schemas string
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&schemas); err != nil || schemas != "shared,"+one {
		t.Fatalf("schemas in the empty target: %s, %v", schemas, err)
	}

	// A damaged part: the integrity error.
	flip := &flipBackend{Backend: b, key: split.Key, at: tn.SchemaSQL.Offset + tn.SchemaSQL.Length/2}
	rv3, _ := vault.Open(ctx, flip, vault.Options{Keys: reader})
	_, err = restore.Run(ctx, restore.Options{Vault: rv3, Target: testenv.NewDatabase(t), Tenants: []string{one}, CreateSchema: true})
	if !errors.Is(err, tenantvault.ErrIntegrity) {
		t.Fatalf("damaged part: %v", err)
	}

	// The tenant's key destroyed: its part is gone with it; the others
	// restore as before.
	if _, err := w.DestroyTenantKeys(ctx, one); err != nil {
		t.Fatal(err)
	}
	rv4, _ := vault.Open(ctx, b, vault.Options{Keys: reader})
	s4, err := rv4.OpenSet(ctx, set.ID)
	if err != nil {
		t.Fatal(err)
	}
	tn4, err := s4.Tenant(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rv4.GetSchemaPart(ctx, split, *tn4.SchemaSQL, tn4); !errors.Is(err, vault.ErrTenantKeyDestroyed) {
		t.Fatalf("part of a shredded tenant: %v", err)
	}
	other := "tenant_ünï"
	dst2 := testenv.NewDatabase(t)
	if _, err := restore.Run(ctx, restore.Options{Vault: rv4, Target: dst2, Tenants: []string{other}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := dumpSchemaRows(t, ctx, dst2, other), dumpSchemaRows(t, ctx, db, other); got != want {
		t.Errorf("%s after forget:\n got %s\nwant %s", other, got, want)
	}
}

// flipBackend flips one bit at offset at of key in what it reads.
type flipBackend struct {
	repo.Backend
	key string
	at  int64
}

func (f *flipBackend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := f.Backend.Get(ctx, key, offset, length)
	if err != nil || key != f.key {
		return rc, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if i := f.at - offset; i >= 0 && i < int64(len(data)) {
		data[i] ^= 0x10
	}
	return io.NopCloser(bytes.NewReader(data)), err
}

// schemaShape lists what a schema defines: columns (type, default, not
// null, identity, generated), constraints, indexes and table comments.
func schemaShape(t *testing.T, ctx context.Context, db, schema string) string {
	t.Helper()
	var out *string
	err := testenv.Connect(t, db).QueryRow(ctx, `WITH n AS (SELECT oid FROM pg_namespace WHERE nspname = $1)
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
    coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END ||
    ' identity ' || a.attidentity::text || ' generated ' || a.attgenerated::text AS x
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = (SELECT oid FROM n) AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v')
  UNION ALL
  SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = (SELECT oid FROM n)
  UNION ALL
  SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = $1
  UNION ALL
  SELECT 'comment ' || c.relname || ' ' || obj_description(c.oid, 'pg_class') FROM pg_class c
  WHERE c.relnamespace = (SELECT oid FROM n) AND obj_description(c.oid, 'pg_class') IS NOT NULL
) s`, schema).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	if out == nil {
		return "(nothing)"
	}
	return *out
}

// TestSchemaInBatches dumps the schema of seven tenant schemas, hostile
// names among them, in one pg_dump run and two at a time (set format 5: an
// archive of what is outside them, then four of tenant schemas), and checks
// that every tenant restores into an empty database with the source's
// definitions and rows, and that one restores reading its part of the
// split, no archive. A tenant dropped from the source since an earlier set
// is restored beside one of the newest set: each schema from its own set
// (before, the dropped one was looked for in the newest set's schema, and
// its restore failed with "table missing in the target").
func TestSchemaInBatches(t *testing.T) {
	t.Run("one run", func(t *testing.T) { testSchemaInBatches(t, -1) })
	t.Run("batches of 2", func(t *testing.T) { testSchemaInBatches(t, 2) })
}

func testSchemaInBatches(t *testing.T, batch int) {
	ctx := testenv.Context(t, 4*time.Minute)
	db := testenv.NewDatabase(t)
	testenv.Exec(t, db, `CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');
CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');
CREATE SCHEMA "tenant_st*r ""q"""; CREATE TABLE "tenant_st*r ""q""".notes (id int PRIMARY KEY, body text);`)
	tenants := []string{"tenant_a", "tenant_b c", "tenant_o'brien", `tenant_stXr "q"`, "tenant_ünï", "tenant_y", "tenant_z"}
	var script strings.Builder
	for i, s := range tenants {
		fmt.Fprintf(&script, tenantSchema, pgx.Identifier{s}.Sanitize(), 2+i%3)
		fmt.Fprintf(&script, "COMMENT ON TABLE %s.orders IS %s;\n", pgx.Identifier{s}.Sanitize(), "'orders of "+strings.ReplaceAll(s, "'", "''")+"'")
	}
	testenv.Exec(t, db, script.String())
	tenants = append(tenants, `tenant_st*r "q"`)
	testenv.Exec(t, db, `INSERT INTO "tenant_st*r ""q""".notes VALUES (1, 'x')`)
	shape, rows := map[string]string{}, map[string]string{}
	for _, s := range tenants {
		shape[s], rows[s] = schemaShape(t, ctx, db, s), dumpSchemaRows(t, ctx, db, s)
	}
	sharedShape := schemaShape(t, ctx, db, "shared")

	dir := t.TempDir()
	v, b := openVault(t, ctx, "file://"+dir)
	cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
	whole, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg, SchemaBatch: -1})
	if err != nil {
		t.Fatal(err)
	}
	// tenant_z is dropped: from now on only the first set holds it.
	testenv.Exec(t, db, `DROP SCHEMA tenant_z CASCADE`)
	set, err := snapshot.Run(ctx, snapshot.Options{Source: db, Vault: v, Tenancy: cfg, SchemaBatch: batch})
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := v.ReadManifest(ctx, set.ID)
	if err != nil {
		t.Fatal(err)
	}
	if w, _ := v.ReadManifest(ctx, whole.ID); w.Version != manifest.Version6 || len(w.Schemas) != 1 || w.Schemas[0].Covers != "" {
		t.Fatalf("set dumped in one run: format %d, schemas %+v", w.Version, w.Schemas)
	}
	if batch > 0 && (hdr.Version != manifest.Version6 || len(hdr.Schemas) != 5 || hdr.Schemas[0].Covers != manifest.CoversShared) || hdr.Schemas[0].Split == nil {
		t.Fatalf("set format %d, schemas %+v", hdr.Version, hdr.Schemas)
	}
	for _, d := range hdr.Schemas[1:] {
		if d.Covers != manifest.CoversTenants || d.Split != nil {
			t.Fatalf("batch archive %+v", d)
		}
	}
	check := func(what, target string, restored []string) {
		t.Helper()
		for _, s := range restored {
			if got := schemaShape(t, ctx, target, s); got != shape[s] {
				t.Errorf("%s: %s defines\n%s\nwant\n%s", what, s, got, shape[s])
			}
			if got := dumpSchemaRows(t, ctx, target, s); got != rows[s] {
				t.Errorf("%s: %s rows\n%s\nwant\n%s", what, s, got, rows[s])
			}
		}
		if got := schemaShape(t, ctx, target, "shared"); got != sharedShape {
			t.Errorf("%s: shared defines\n%s\nwant\n%s", what, got, sharedShape)
		}
		var schemas []string
		r, _ := testenv.Connect(t, target).Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant%' ORDER BY 1`)
		schemas, err := pgx.CollectRows(r, pgx.RowTo[string])
		want := append([]string(nil), restored...)
		slices.Sort(want)
		if err != nil || !slices.Equal(schemas, want) {
			t.Errorf("%s: tenant schemas %q, want %q (%v)", what, schemas, want, err)
		}
	}

	// Every tenant of the batched set into an empty database.
	all := slices.DeleteFunc(slices.Clone(tenants), func(s string) bool { return s == "tenant_z" })
	dst := testenv.NewDatabase(t)
	if _, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: all, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	check("all tenants", dst, all)

	// One tenant reads its part of the split, never an archive.
	rc := &readCounter{Backend: b, bytes: map[string]int64{}}
	rv, err := vault.Open(ctx, rc, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst = testenv.NewDatabase(t)
	if _, err := restore.Run(ctx, restore.Options{Vault: rv, Target: dst, Tenants: []string{`tenant_stXr "q"`}, CreateSchema: true}); err != nil {
		t.Fatal(err)
	}
	read := rc.take()
	for _, d := range hdr.Schemas {
		if n := read[d.Key]; n != 0 {
			t.Errorf("one tenant: read %d bytes of the archive %s (%s)", n, d.Key, d.Covers)
		}
	}
	if read[hdr.Schemas[0].Split.Key] == 0 {
		t.Error("one tenant: read nothing of the split schema")
	}
	check("one tenant", dst, []string{`tenant_stXr "q"`})

	// tenant_z's newest set is the first: its schema comes from that set's
	// split, the shared one and tenant_o'brien's from the newest set's.
	dst = testenv.NewDatabase(t)
	rep, err := restore.Run(ctx, restore.Options{Vault: rv, Target: dst, Tenants: []string{"tenant_o'brien", "tenant_z"}, CreateSchema: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range rep.Tenants {
		if want := map[string]string{"tenant_o'brien": set.ID, "tenant_z": whole.ID}[tr.Tenant]; tr.Set != want || !tr.Verified {
			t.Errorf("%s: from set %s (want %s), verified %v", tr.Tenant, tr.Set, want, tr.Verified)
		}
	}
	read = rc.take()
	for key, n := range read {
		if strings.HasSuffix(key, ".dump") {
			t.Errorf("two sets: read %d bytes of the archive %s", n, key)
		}
	}
	check("two sets", dst, []string{"tenant_o'brien", "tenant_z"})
}
