package snapshot_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/restore"
	"github.com/tenantvault/tenantvault/snapshot"
	"github.com/tenantvault/tenantvault/tenancy"
	"github.com/tenantvault/tenantvault/vault"
)

// hostileIDs are tenant IDs whose COPY text needs escapes, whose byte
// order differs from a collation's, and one that is empty.
var hostileIDs = []string{"", "a", "ab", "A", "Z", "10", "9", `back\slash`, "tab\there", "new\nline", `quote"'`, "ünï", "日本", "a b", "(x,y)", "cr\rlf", `\N`}

// hostileSchema has every shape the sorted export must order exactly as
// the server does: composite text+int keys, uuid keys, negative and
// extreme integers, text keys full of escapes, a keyless table with
// duplicate rows and record-quoting characters, a partitioned table, NULL
// and dangling foreign keys (NOT VALID constraints), a one-hop and a
// two-hop chain, and a table whose key type the client cannot order
// (numeric: the server's path).
const hostileSchema = `
CREATE TABLE tenants (id text PRIMARY KEY, name text);
CREATE TABLE plans (id int PRIMARY KEY, name text);
CREATE TABLE notes_global (body text, n int);
CREATE TABLE users (tenant_id text NOT NULL REFERENCES tenants, id bigint, name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE docs (id int PRIMARY KEY, tenant_id text REFERENCES tenants, title text);
CREATE TABLE notes (key text PRIMARY KEY, doc_id int, body text);
CREATE TABLE marks (note_key text, n smallint, body text);
CREATE TABLE things (id uuid PRIMARY KEY, tenant_id text REFERENCES tenants, v numeric);
CREATE TABLE prices (id numeric PRIMARY KEY, tenant_id text REFERENCES tenants, p text);
CREATE TABLE log (tenant_id text REFERENCES tenants, at int, what text);
CREATE TABLE parts (tenant_id text NOT NULL REFERENCES tenants, id bigint, body text, PRIMARY KEY (id, tenant_id)) PARTITION BY RANGE (id);
CREATE TABLE parts_neg PARTITION OF parts FOR VALUES FROM (MINVALUE) TO (0);
CREATE TABLE parts_pos PARTITION OF parts FOR VALUES FROM (0) TO (MAXVALUE);
`

// hostileData fills it; %s is the tenants' VALUES list.
const hostileData = `
INSERT INTO tenants VALUES %s;
INSERT INTO plans SELECT g, 'plan ' || g FROM generate_series(-5, 5) g;
INSERT INTO notes_global VALUES ('dup', 1), ('dup', 1), (NULL, NULL), ('', 0), ('a,b', 2), ('(x)', 3), ('q"\', 4), (' lead', 5), ('tab' || chr(9), 6);
INSERT INTO users SELECT t.id, k, 'user ' || k || E'\t' || t.id FROM tenants t, unnest(ARRAY[-9223372036854775808, -1, 0, 1, 10, 9, 9223372036854775807]::bigint[]) k;
INSERT INTO docs SELECT g, (SELECT id FROM tenants ORDER BY id OFFSET (g %% (SELECT count(*) FROM tenants)) LIMIT 1), 'doc ' || g FROM generate_series(1, 300) g;
INSERT INTO docs VALUES (-2147483648, NULL, 'no tenant'), (2147483647, 'Z', 'max');
INSERT INTO notes SELECT k, d, 'note ' || k FROM (
  SELECT g, (ARRAY['', E'\\', E'\t', E'\n', '"', '''', 'ü', '日', 'a', 'A', 'a b', E'\r', 'z'])[1 + g %% 13] || g::text AS k,
         CASE WHEN g %% 50 = 0 THEN NULL WHEN g %% 47 = 0 THEN 100000 + g ELSE 1 + g %% 300 END AS d
  FROM generate_series(1, 3000) g) s;
INSERT INTO notes VALUES ('', 2147483647, 'empty key');
INSERT INTO marks SELECT key, (g %% 5 - 2)::smallint, CASE WHEN g %% 3 = 0 THEN NULL WHEN g %% 3 = 1 THEN 'dup' ELSE E'x\ty,(z)"' || (g %% 7) END
  FROM notes, generate_series(1, 2) g WHERE length(key) %% 3 = 0;
INSERT INTO marks VALUES ('no such note', 1, 'dangling'), (NULL, 2, 'null ref');
INSERT INTO things SELECT md5(g::text)::uuid, (SELECT id FROM tenants ORDER BY id OFFSET (g %% (SELECT count(*) FROM tenants)) LIMIT 1), g / 7.0 FROM generate_series(1, 500) g;
INSERT INTO prices SELECT g / 3.0, (SELECT id FROM tenants ORDER BY id OFFSET (abs(g) %% (SELECT count(*) FROM tenants)) LIMIT 1), 'p' || g FROM generate_series(-50, 50) g;
INSERT INTO log SELECT t.id, g %% 4, CASE WHEN g %% 2 = 0 THEN 'same' ELSE 'x' || g END FROM tenants t, generate_series(1, 12) g;
INSERT INTO log VALUES (NULL, 1, 'nobody');
INSERT INTO parts SELECT t.id, g * 1000003 - 5000000, 'part ' || g FROM tenants t, generate_series(-3, 8) g;
ALTER TABLE notes ADD FOREIGN KEY (doc_id) REFERENCES docs NOT VALID;
ALTER TABLE marks ADD FOREIGN KEY (note_key) REFERENCES notes NOT VALID;
ANALYZE;
`

func hostileValues() string {
	vals := make([]string, len(hostileIDs))
	for i, id := range hostileIDs {
		vals[i] = fmt.Sprintf("(%s, %s)", tenancy.Literal(id), tenancy.Literal("tenant "+id))
	}
	return strings.Join(vals, ", ")
}

// chunkKey names a chunk across sets.
type chunkKey struct{ tenant, table string }

type chunkSum struct {
	digest string
	size   int64
	rows   int64
}

func setChunks(t *testing.T, ctx context.Context, v *vault.Vault, id string) (map[chunkKey]chunkSum, *manifest.Manifest) {
	t.Helper()
	m, err := v.ReadManifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[chunkKey]chunkSum{}
	add := func(tenant string, c manifest.Chunk) {
		k := chunkKey{tenant, m.Tables[c.Table].QualifiedName()}
		if _, dup := out[k]; dup {
			t.Fatalf("set %s: two chunks for %q", id, k)
		}
		out[k] = chunkSum{c.Digest, c.Size, c.Rows}
	}
	for _, c := range m.Global {
		add("\x00global", c)
	}
	for _, tn := range m.Tenants {
		for _, c := range tn.Chunks {
			add(tn.ID, c)
		}
	}
	return out, m
}

// exportThreeWays snapshots src with the server's ORDER BY, with the
// client's sort, and with the client's sort through a tiny arena (every
// table spills, many runs, a multi-level merge), and checks the three sets
// hold the same chunks, byte for byte. It returns the client's set.
func exportThreeWays(t *testing.T, ctx context.Context, src string, cfg tenancy.Config, wantSorted, wantRouted int64) (*vault.Vault, *manifest.Manifest) {
	t.Helper()
	var sums []map[chunkKey]chunkSum
	var v *vault.Vault
	var m *manifest.Manifest
	for i, how := range []string{"server", "client", "client, tiny arena"} {
		v = openVault(t, ctx, "file://"+t.TempDir())
		o := snapshot.Options{Source: src, Vault: v, Tenancy: cfg, Parallel: 2, PackSize: 64 << 10, ServerSort: i == 0, TempDir: t.TempDir()}
		if i == 2 {
			defer snapshot.SetSortMem(1 << 10)()
		}
		s0, r0 := snapshot.SortedExports()
		set, err := snapshot.Run(ctx, o)
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		s1, r1 := snapshot.SortedExports()
		switch {
		case i == 0 && s1 != s0:
			t.Fatalf("%s: %d tables took the client's sort", how, s1-s0)
		case i > 0 && (s1-s0 != wantSorted || r1-r0 != wantRouted):
			t.Fatalf("%s: %d tables sorted by the client (%d routed), want %d (%d)", how, s1-s0, r1-r0, wantSorted, wantRouted)
		}
		var sum map[chunkKey]chunkSum
		sum, m = setChunks(t, ctx, v, set.ID)
		sums = append(sums, sum)
	}
	keys := make([]chunkKey, 0, len(sums[0]))
	for k := range sums[0] {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if keys[a].tenant != keys[b].tenant {
			return keys[a].tenant < keys[b].tenant
		}
		return keys[a].table < keys[b].table
	})
	if len(keys) < 4 {
		t.Fatalf("only %d chunks", len(keys))
	}
	for i := 1; i < len(sums); i++ {
		if len(sums[i]) != len(sums[0]) {
			t.Errorf("set %d: %d chunks, the server's order gives %d", i, len(sums[i]), len(sums[0]))
		}
		for _, k := range keys {
			if got, want := sums[i][k], sums[0][k]; got != want {
				t.Errorf("set %d, tenant %q table %s: %+v, the server's order gives %+v", i, k.tenant, k.table, got, want)
			}
		}
	}
	return v, m
}

// checkDigestsAtSource recomputes every tenant chunk's digest from the
// source with the restore's own query (tenancy.TenantCopySQL).
func checkDigestsAtSource(t *testing.T, ctx context.Context, m *manifest.Manifest, url func(db string) string) {
	t.Helper()
	n := 0
	for _, tn := range m.Tenants {
		for _, c := range tn.Chunks {
			tb := &m.Tables[c.Table]
			db := tb.Database
			if db == "" {
				db = m.Source.Database
			}
			conn := testenv.Connect(t, url(db))
			if _, err := conn.Exec(ctx, tenancy.SessionSQL); err != nil {
				t.Fatal(err)
			}
			digest, rows := copyDigest(t, ctx, conn, tenancy.TenantCopySQL(tb, tn.ID))
			conn.Close(ctx)
			if digest != c.Digest || rows != c.Rows {
				t.Errorf("tenant %q %s: set has %s (%d rows), the restore's query %s (%d)", tn.ID, tb.QualifiedName(), c.Digest[:12], c.Rows, digest[:12], rows)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no tenant chunks")
	}
}

func TestSortedExportMatchesServerOrder(t *testing.T) {
	t.Run("column", func(t *testing.T) {
		ctx := testenv.Context(t, 4*time.Minute)
		src := testenv.NewDatabase(t)
		testenv.Exec(t, src, hostileSchema)
		testenv.Exec(t, src, fmt.Sprintf(hostileData, hostileValues()))
		// Sorted: every table but prices (numeric key); routed: notes
		// (one hop, docs.id) and marks (two hops, the last to docs.id).
		v, m := exportThreeWays(t, ctx, src, tenancy.Config{}, 10, 2)
		if m.Stats.Unscoped == 0 {
			t.Fatal("no rows without a tenant: the NULL and dangling references were not exercised")
		}
		checkDigestsAtSource(t, ctx, m, func(string) string { return src })
		// The restore recomputes every digest from the target.
		dst := testenv.NewDatabase(t)
		rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: dst, Tenants: hostileIDs, CreateSchema: true, Parallel: 2})
		if err != nil {
			t.Fatal(err)
		}
		digests := 0
		for _, tr := range rep.Tenants {
			if tr.Err != nil || !tr.Verified {
				t.Errorf("tenant %q: verified %v, %v", tr.Tenant, tr.Verified, tr.Err)
			}
			digests += tr.Digests
		}
		if len(rep.Tenants) != len(hostileIDs) || digests < 5*len(hostileIDs) {
			t.Fatalf("restored %d tenants, %d digests checked", len(rep.Tenants), digests)
		}
	})
	t.Run("schema", func(t *testing.T) {
		ctx := testenv.Context(t, 4*time.Minute)
		src := testenv.NewDatabase(t)
		for _, s := range []string{"tenant_a", "tenant_b\"q", "tenant_ü"} {
			testenv.Exec(t, src, fmt.Sprintf(`CREATE SCHEMA %[1]s; SET search_path = %[1]s;`, tenancy.Ident(s))+
				`CREATE TABLE items (k text PRIMARY KEY, n bigint, body text);
CREATE TABLE pairs (a int, b text, PRIMARY KEY (b, a));
CREATE TABLE bag (x text, y int);
INSERT INTO items SELECT (ARRAY['', E'\\', E'\t', E'\n', '"', 'ü', 'a', 'A'])[1 + g % 8] || g, g - 500, 'i' || g FROM generate_series(1, 400) g;
INSERT INTO pairs SELECT g % 7 - 3, (ARRAY['b', 'B', E'\t', ''])[1 + g % 4] || (g % 11) FROM generate_series(1, 300) g ON CONFLICT DO NOTHING;
INSERT INTO bag SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE (ARRAY['', 'a b', '(', 'q"'])[1 + g % 4] END, g % 3 FROM generate_series(1, 200) g;`)
		}
		cfg := tenancy.Config{Model: tenancy.ModelSchema, SchemaPattern: `tenant\_%`}
		v, m := exportThreeWays(t, ctx, src, cfg, 9, 0)
		checkDigestsAtSource(t, ctx, m, func(string) string { return src })
		rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: src, Tenants: []string{"tenant_a", "tenant_ü"}, IfExists: restore.IfExistsReplace})
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range rep.Tenants {
			if tr.Err != nil || !tr.Verified || tr.Digests != 3 {
				t.Errorf("tenant %q: verified %v (%d digests), %v", tr.Tenant, tr.Verified, tr.Digests, tr.Err)
			}
		}
	})
	t.Run("database", func(t *testing.T) {
		ctx := testenv.Context(t, 4*time.Minute)
		prefix := testenv.RandomName("tvsort_")
		admin := testenv.PostgresURL(t)
		var dbs []string
		for i, name := range []string{"a", "b"} {
			db := prefix + "_" + name
			testenv.Exec(t, admin, "CREATE DATABASE "+db)
			dbs = append(dbs, db)
			t.Cleanup(func() { testenv.Exec(t, admin, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
			testenv.Exec(t, testenv.DatabaseURL(t, db), fmt.Sprintf(`CREATE TABLE items (k text PRIMARY KEY, n int);
CREATE TABLE bag (x text);
INSERT INTO items SELECT (ARRAY['', E'\\', E'\t', 'ü', 'a', 'A'])[1 + g %% 6] || g, g FROM generate_series(1, %d) g;
INSERT INTO bag SELECT (ARRAY['', 'a b', NULL, 'x'])[1 + g %% 4] FROM generate_series(1, 50) g;`, 300+100*i))
		}
		cfg := tenancy.Config{Model: tenancy.ModelDatabase, DatabasePattern: prefix + `\_%`}
		v, m := exportThreeWays(t, ctx, admin, cfg, 4, 0)
		checkDigestsAtSource(t, ctx, m, func(db string) string { return testenv.DatabaseURL(t, db) })
		rep, err := restore.Run(ctx, restore.Options{Vault: v, Target: admin, Tenants: []string{dbs[1]}, IfExists: restore.IfExistsReplace})
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range rep.Tenants {
			if tr.Err != nil || !tr.Verified || tr.Digests != 2 {
				t.Errorf("tenant %q: verified %v (%d digests), %v", tr.Tenant, tr.Verified, tr.Digests, tr.Err)
			}
		}
	})
}
