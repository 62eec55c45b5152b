package restore_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
	if hdr.Version != manifest.Version3 || len(hdr.Schemas) != 1 || hdr.Schemas[0].Split == nil {
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
