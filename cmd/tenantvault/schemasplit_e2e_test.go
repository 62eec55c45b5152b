package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenantvault/tenantvault/internal/testenv"
	"github.com/tenantvault/tenantvault/manifest"
	"github.com/tenantvault/tenantvault/repo"
	"github.com/tenantvault/tenantvault/vault"
)

// splitTenantSchema is one tenant schema of the split-schema end-to-end
// tests: its tables use the shared schema's enum, so an empty target
// needs the shared part of the schema SQL first.
const splitTenantSchema = `
CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.customers (id serial PRIMARY KEY, name text NOT NULL, tier shared.tier NOT NULL);
CREATE TABLE %[1]s.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id int NOT NULL REFERENCES %[1]s.customers(id), total numeric(12,2), note text);
INSERT INTO %[1]s.customers (name, tier) SELECT 'customer ' || g || ' of %[2]d', 'gold' FROM generate_series(1, %[2]d) g;
INSERT INTO %[1]s.orders (customer_id, total, note) SELECT c.id, c.id * 10.5, E'a\tb' FROM %[1]s.customers c, generate_series(1, 2);
`

// Tenant schemas of these tests; two hostile names.
const (
	splitForgotten = `tenant_"q" &x`
	splitKept      = "tenant_o'brien"
	splitStill     = "tenant_z"
)

// splitSource creates the source database: a shared schema with an enum
// the tenant tables use, and four tenant schemas.
func splitSource(t *testing.T) string {
	t.Helper()
	db := testenv.NewDatabase(t)
	var script strings.Builder
	script.WriteString(`CREATE SCHEMA shared; CREATE TYPE shared.tier AS ENUM ('free', 'gold');
CREATE TABLE shared.settings (k text PRIMARY KEY, v text); INSERT INTO shared.settings VALUES ('a', 'b');`)
	for i, s := range []string{"tenant_a", splitKept, splitForgotten, splitStill} {
		fmt.Fprintf(&script, splitTenantSchema, pgx.Identifier{s}.Sanitize(), 2+i)
	}
	testenv.Exec(t, db, script.String())
	return db
}

// splitRows reads every row of a tenant schema's tables.
func splitRows(t *testing.T, ctx context.Context, db, schema string) string {
	t.Helper()
	conn := testenv.Connect(t, db)
	var b strings.Builder
	for _, table := range []string{"customers", "orders"} {
		var rows string
		q := fmt.Sprintf("SELECT coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM %s t", pgx.Identifier{schema, table}.Sanitize())
		if err := conn.QueryRow(ctx, q).Scan(&rows); err != nil {
			return "missing: " + err.Error()
		}
		fmt.Fprintf(&b, "%s: %s\n", table, rows)
	}
	return b.String()
}

// userObjects lists the schemas, relations and types a database holds
// beyond what a new database has.
func userObjects(t *testing.T, ctx context.Context, db string) string {
	t.Helper()
	var out string
	err := testenv.Connect(t, db).QueryRow(ctx, `SELECT coalesce(string_agg(what, ', ' ORDER BY what), '') FROM (
  SELECT 'schema ' || nspname AS what FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname NOT IN ('public', 'information_schema')
  UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
  UNION ALL SELECT 'type ' || n.nspname || '.' || y.typname FROM pg_type y JOIN pg_namespace n ON n.oid = y.typnamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema'
  UNION ALL SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema') o`).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setIDOf takes the set ID from snapshot --json's output.
func setIDOf(t *testing.T, out string) string {
	t.Helper()
	var s struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil || !vault.ValidSetID(s.ID) {
		t.Fatalf("snapshot --json: %v\n%s", err, out)
	}
	return s.ID
}

// splitRepos are the repositories these tests run on.
var splitRepos = map[string]func(t *testing.T) string{
	"file": func(t *testing.T) string { return "file://" + filepath.Join(t.TempDir(), "repo") },
	"s3":   func(t *testing.T) string { return testenv.NewS3Repo(t) },
}

// TestForgetEncryptedSchemaSplit runs forget, as a user does, on an
// encrypted schema-model repository of two sets whose schema SQL is split
// (set format 4), on file:// and MinIO: the dry run changes nothing;
// afterwards the forgotten tenant schema is refused by restore
// --create-schema (exit 2, by default and by set ID) and nothing is
// created in the empty target; its part of the schema SQL is still
// stored, byte for byte, and can no longer be opened (its key is gone);
// list --tenant says it is erased and shows no history, then, once a new
// set holds it again under a new key, that set, which forget erases
// again; another tenant still restores row for row into an empty
// database, and verify passes with and without the identity. A tenant
// whose key object is deleted without a tombstone is refused by the key
// (exit 2), nothing created.
func TestForgetEncryptedSchemaSplit(t *testing.T) {
	for name, url := range splitRepos {
		t.Run(name, func(t *testing.T) { testForgetEncryptedSchemaSplit(t, url(t)) })
	}
}

func testForgetEncryptedSchemaSplit(t *testing.T, repoURL string) {
	ctx := testenv.Context(t, 4*time.Minute)
	identity, signing, recipient := keygen(t, t.TempDir())
	src := splitSource(t)
	snap := []string{"snapshot", "--source", src, "--repo", repoURL, "--tenancy", "schema", "--schema-pattern", "tenant_%", "--recipient", recipient, "--signing-key", signing, "--json"}
	ids := []string{setIDOf(t, expect(t, 0, "", append(snap, "--init")...))}
	// A second set: the kept tenant changed, the forgotten one reused.
	testenv.Exec(t, src, `UPDATE "tenant_o'brien".orders SET note = 'second set' WHERE id = 1`)
	ids = append(ids, setIDOf(t, expect(t, 0, "", snap...)))
	want := splitRows(t, ctx, src, splitKept)

	// Both sets are set format 6 (4 before the columnar layout) and name the forgotten tenant's part.
	reader := &vault.Keys{}
	if _, err := reader.LoadKeyFile(identity); err != nil {
		t.Fatal(err)
	}
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	parts := func(v *vault.Vault) (out []error) {
		t.Helper()
		for _, id := range ids {
			s, err := v.OpenSet(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			hdr := s.Header()
			tn, err := s.Tenant(ctx, splitForgotten)
			if err != nil || tn == nil || tn.SchemaSQL == nil || tn.Key == "" || hdr.Version != manifest.Version6 || len(hdr.Schemas) != 1 || hdr.Schemas[0].Split == nil {
				t.Fatalf("set %s: format %d, schemas %+v, entry %+v, %v", id, hdr.Version, hdr.Schemas, tn, err)
			}
			_, err = v.GetSchemaPart(ctx, hdr.Schemas[0].Split, *tn.SchemaSQL, tn)
			out = append(out, err)
		}
		return out
	}
	rv, err := vault.Open(ctx, b, vault.Options{Keys: reader})
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range parts(rv) {
		if err != nil {
			t.Fatalf("part of %s in set %s before forget: %v", splitForgotten, ids[i], err)
		}
	}

	objects := storedObjects(t, ctx, repoURL)
	out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", splitForgotten, "--dry-run", "--identity", identity)
	if !strings.Contains(out, "key objects to delete: 1 ") || !strings.Contains(out, "dry run: nothing was changed") {
		t.Fatalf("forget --dry-run:\n%s", out)
	}
	if objectList(storedObjects(t, ctx, repoURL)) != objectList(objects) {
		t.Fatal("forget --dry-run changed the repository")
	}
	out = expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", splitForgotten, "--yes", "--identity", identity, "--reason", "ticket 13")
	if !strings.Contains(out, fmt.Sprintf("erased tenant %q: 1 key object(s) destroyed", splitForgotten)) {
		t.Fatalf("forget:\n%s", out)
	}

	// Crypto-shredded: the split objects (and everything else but one key
	// object and the records forget writes) are stored as they were.
	after := storedObjects(t, ctx, repoURL)
	var gone []string
	for k, data := range objects {
		if a, ok := after[k]; !ok {
			gone = append(gone, k)
		} else if string(a) != string(data) && !strings.HasPrefix(k, vault.CatalogPrefix) {
			t.Errorf("forget rewrote %s", k)
		}
	}
	if len(gone) != 1 || !strings.HasPrefix(gone[0], vault.TenantKeysPrefix) {
		t.Fatalf("forget deleted %v, want one tenant key object", gone)
	}
	var split []string
	for k := range after {
		if strings.HasSuffix(k, ".parts") {
			split = append(split, k)
		}
	}
	if len(split) != 2 {
		t.Fatalf("split objects after forget: %v", split)
	}
	// The identity holder cannot open the part any more, in either set.
	rv, err = vault.Open(ctx, b, vault.Options{Keys: reader})
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range parts(rv) {
		if !errors.Is(err, vault.ErrTenantKeyDestroyed) {
			t.Fatalf("part of the forgotten tenant in set %s: %v", ids[i], err)
		}
	}

	// Refused, by default and by set ID, before anything is created.
	dst := testenv.NewDatabase(t)
	expect(t, 2, fmt.Sprintf("tenant %q (erased on ", splitForgotten), "restore", "--repo", repoURL, "--target", dst, "--tenant", splitForgotten, "--create-schema", "--yes", "--identity", identity)
	expect(t, 2, fmt.Sprintf("tenant %q (erased on ", splitForgotten), "restore", "--repo", repoURL, "--target", dst, "--tenant", splitForgotten, "--snapshot", ids[0], "--create-schema", "--yes", "--identity", identity)
	if got := userObjects(t, ctx, dst); got != "" {
		t.Fatalf("a refused restore created: %s", got)
	}

	// list --tenant: erased, no history; both sets keep its entries, sealed
	// with the destroyed key.
	out = expect(t, 0, "", "list", "--repo", repoURL, "--tenant", splitForgotten, "--identity", identity)
	for _, want := range []string{fmt.Sprintf("tenant %q: erased on ", splitForgotten), "ticket 13", "restore and drill refuse it",
		"2 snapshot set(s) keep its entries sealed with its destroyed keys: no one can read them", "no snapshot set holds it"} {
		if !strings.Contains(out, want) || strings.Contains(out, ids[0]) || strings.Contains(out, "still hold it") {
			t.Fatalf("list --tenant of the forgotten tenant does not say %q:\n%s", want, out)
		}
	}
	var listed erasedJSON
	out = expect(t, 0, "", "list", "--repo", repoURL, "--tenant", splitForgotten, "--identity", identity, "--json")
	if err := json.Unmarshal([]byte(out), &listed); err != nil || listed.Erased == nil || listed.Erased.State != vault.TombstoneErased || len(listed.Sets) != 0 || listed.Shredded != 2 {
		t.Fatalf("list --tenant --json: %v\n%s", err, out)
	}
	// The source still holds its rows: a new set holds it under a new
	// key, which list shows, and forget erases again.
	ids = append(ids, setIDOf(t, expect(t, 0, "", snap...)))
	out = expect(t, 0, "", "list", "--repo", repoURL, "--tenant", splitForgotten, "--identity", identity)
	if !strings.Contains(out, "1 snapshot set(s) still hold it") || !strings.Contains(out, ids[2]) || !strings.Contains(out, "2 snapshot set(s) keep its entries sealed") {
		t.Fatalf("list --tenant after a new set:\n%s", out)
	}
	expect(t, 2, fmt.Sprintf("tenant %q (erased on ", splitForgotten), "restore", "--repo", repoURL, "--target", dst, "--tenant", splitForgotten, "--create-schema", "--yes", "--identity", identity)
	if out := expect(t, 0, "", "forget", "--repo", repoURL, "--tenant", splitForgotten, "--yes", "--identity", identity); !strings.Contains(out, "1 key object(s) destroyed") {
		t.Fatalf("forget again:\n%s", out)
	}
	out = expect(t, 0, "", "list", "--repo", repoURL, "--tenant", splitForgotten, "--identity", identity)
	if !strings.Contains(out, "3 snapshot set(s) keep its entries sealed") || !strings.Contains(out, "no snapshot set holds it") {
		t.Fatalf("list --tenant after the second forget:\n%s", out)
	}
	if got := userObjects(t, ctx, dst); got != "" {
		t.Fatalf("a refused restore created: %s", got)
	}

	// Another tenant: row for row, into an empty database, one schema.
	expect(t, 0, "", "restore", "--repo", repoURL, "--target", dst, "--tenant", splitKept, "--create-schema", "--yes", "--identity", identity)
	if got := splitRows(t, ctx, dst, splitKept); got != want {
		t.Fatalf("%s after forget:\n got %s\nwant %s", splitKept, got, want)
	}
	var schemas string
	if err := testenv.Connect(t, dst).QueryRow(ctx, `SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE 'tenant%' OR nspname = 'shared'`).Scan(&schemas); err != nil || schemas != "shared,"+splitKept {
		t.Fatalf("schemas in the target: %s, %v", schemas, err)
	}
	for _, args := range [][]string{nil, {"--read-data"}, {"--identity", identity}, {"--read-data", "--identity", identity}} {
		if out := expect(t, 0, "", append([]string{"verify", "--repo", repoURL}, args...)...); !strings.Contains(out, "0 problem(s)") {
			t.Fatalf("verify %v after forget:\n%s", args, out)
		}
	}

	// Past the tombstone: a tenant whose key object is gone without one
	// (deleted by hand) is refused by the key itself, before the shared
	// part or its schema is created.
	keys, err := rv.TenantKeys(ctx, "tenant_a")
	if err != nil || len(keys) != 1 {
		t.Fatalf("tenant_a's keys: %v, %v", keys, err)
	}
	if err := b.Delete(ctx, keys[0]); err != nil {
		t.Fatal(err)
	}
	empty := testenv.NewDatabase(t)
	expect(t, 2, "is destroyed", "restore", "--repo", repoURL, "--target", empty, "--tenant", "tenant_a", "--create-schema", "--yes", "--identity", identity)
	if got := userObjects(t, ctx, empty); got != "" {
		t.Fatalf("a restore refused for a destroyed key created: %s", got)
	}
}

// TestPruneEncryptedSchemaSplit applies retention, as a user does, to an
// encrypted schema-model repository of four sets whose schema SQL is
// split (set format 4), on file:// and MinIO: the dry runs change
// nothing; the purge deletes the two oldest sets and collects exactly the
// objects only they referenced (their manifests, tenant indexes, schema
// archives, split objects and the packs no kept set points into), and
// what a dry run said it would; every object a kept set's signed header
// names is still stored, verify passes with and without the identity,
// and one schema restores from the older kept set row for row, a
// tenant whose chunks lie in a purged set's pack among them.
func TestPruneEncryptedSchemaSplit(t *testing.T) {
	for name, url := range splitRepos {
		t.Run(name, func(t *testing.T) { testPruneEncryptedSchemaSplit(t, url(t)) })
	}
}

func testPruneEncryptedSchemaSplit(t *testing.T, repoURL string) {
	ctx := testenv.Context(t, 4*time.Minute)
	identity, signing, recipient := keygen(t, t.TempDir())
	src := splitSource(t)
	snap := []string{"snapshot", "--source", src, "--repo", repoURL, "--tenancy", "schema", "--schema-pattern", "tenant_%", "--recipient", recipient, "--signing-key", signing, "--json"}
	var ids []string
	var kept []map[string]string // rows of the two tenants restored below, per set
	for i := range 4 {
		args := snap
		if i == 0 {
			args = append(slices.Clone(snap), "--init")
		}
		ids = append(ids, setIDOf(t, expect(t, 0, "", args...)))
		kept = append(kept, map[string]string{splitKept: splitRows(t, ctx, src, splitKept), splitStill: splitRows(t, ctx, src, splitStill)})
		// Only tenant_o'brien changes: tenant_z's chunks stay in the
		// first set's pack, which every later set reuses.
		testenv.Exec(t, src, fmt.Sprintf(`UPDATE "tenant_o'brien".orders SET note = 'after set %d' WHERE id = 1`, i+1))
	}
	if kept[2][splitStill] != kept[0][splitStill] || kept[2][splitKept] == kept[0][splitKept] {
		t.Fatal("the source did not change as the test expects")
	}

	// What each set's signed header names, read without keys (as GC does).
	b, err := repo.Open(ctx, repoURL, repo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rv, err := vault.Open(ctx, b, vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]map[string]bool{}
	for _, id := range ids {
		x, err := rv.ReadIndex(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		r := map[string]bool{vault.ManifestKey(id): true, x.Index.Key: true}
		for _, p := range x.Packs {
			r[p] = true
		}
		var parts int
		for _, s := range x.Schemas {
			r[s.Key] = true
			if strings.HasSuffix(s.Key, ".parts") {
				parts++
			}
		}
		if parts != 1 || len(x.Schemas) != 2 {
			t.Fatalf("set %s: signed header schemas %+v", id, x.Schemas)
		}
		refs[id] = r
	}
	purged, keptIDs := ids[:2], ids[2:]
	keptRefs, onlyPurged := map[string]bool{}, map[string]bool{}
	for _, id := range keptIDs {
		maps.Copy(keptRefs, refs[id])
	}
	for _, id := range purged {
		for k := range refs[id] {
			if !keptRefs[k] {
				onlyPurged[k] = true
			}
		}
	}
	// The case GC must get right: a purged set's pack that kept sets use.
	sharedPack := false
	for k := range keptRefs {
		sharedPack = sharedPack || strings.HasPrefix(k, vault.PacksPrefix+purged[0]+"/")
	}
	if !sharedPack {
		t.Fatal("no kept set points into a pack of a purged set")
	}
	for _, want := range []string{".parts", ".dump", ".tidx", ".pack"} {
		if !slices.ContainsFunc(slices.Collect(maps.Keys(onlyPurged)), func(k string) bool { return strings.HasSuffix(k, want) }) {
			t.Fatalf("no %s object referenced only by the purged sets: %v", want, onlyPurged)
		}
	}

	// Dry runs: retention, then (once marked) the purge; nothing changes.
	before := objectList(storedObjects(t, ctx, repoURL))
	out := expect(t, 0, "", "prune", "--repo", repoURL, "--keep-last", "2")
	if strings.Count(out, "would mark") != 2 || !strings.Contains(out, "dry run: nothing was deleted") {
		t.Fatalf("prune dry run:\n%s", out)
	}
	if objectList(storedObjects(t, ctx, repoURL)) != before {
		t.Fatal("prune's dry run changed the repository")
	}
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--keep-last", "2", "--mark", "--grace", "0s")
	for _, id := range purged {
		if !strings.Contains(out, id) || strings.Count(out, "MARKED now") != 2 {
			t.Fatalf("prune --mark:\n%s", out)
		}
	}
	marked := storedObjects(t, ctx, repoURL)
	var dry pruneJSON
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--grace", "0s", "--gc-min-age", "0", "--json")
	if err := json.Unmarshal([]byte(out), &dry); err != nil || !dry.DryRun || dry.Purge == nil || len(dry.Purge.Purged) != 2 {
		t.Fatalf("prune dry run of the purge: %v\n%s", err, out)
	}
	if objectList(storedObjects(t, ctx, repoURL)) != objectList(marked) {
		t.Fatal("the purge's dry run changed the repository")
	}

	var res pruneJSON
	out = expect(t, 0, "", "prune", "--repo", repoURL, "--purge", "--grace", "0s", "--gc-min-age", "0", "--json")
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.DryRun || res.Purge == nil || len(res.Purge.Purged) != 2 || len(res.Purge.Failed)+len(res.Purge.GC.Failed) > 0 {
		t.Fatalf("prune --purge: %v\n%s", err, out)
	}
	for i, m := range res.Purge.Purged {
		if m.Set != purged[i] {
			t.Fatalf("purged %s, want %v", m.Set, purged)
		}
	}
	// Gone: exactly what only the purged sets referenced, their deletion
	// markers (which the purge deletes with their manifests, and its dry
	// run counted as garbage) and their catalogs (one per set).
	gone := maps.Clone(onlyPurged)
	for k := range marked {
		for _, id := range purged {
			if k == vault.MarkKey(id) || (strings.HasPrefix(k, vault.CatalogPrefix) && strings.Contains(k, id)) {
				gone[k] = true
			}
		}
	}
	var wantKept, wantDry, wantCollected []string
	for k := range marked {
		switch {
		case !gone[k]:
			wantKept = append(wantKept, k)
		case k == vault.ManifestKey(purged[0]) || k == vault.ManifestKey(purged[1]):
		case strings.HasPrefix(k, vault.DeletionsPrefix):
			wantDry = append(wantDry, k)
		default:
			wantDry = append(wantDry, k)
			wantCollected = append(wantCollected, k)
		}
	}
	slices.Sort(wantKept)
	slices.Sort(wantDry)
	slices.Sort(wantCollected)
	collected := func(r *pruneJSON) []string {
		var out []string
		for _, g := range r.Purge.GC.Collected {
			out = append(out, g.Key)
		}
		slices.Sort(out)
		return out
	}
	if got := collected(&dry); !slices.Equal(got, wantDry) {
		t.Errorf("the dry run would collect\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantDry, "\n"))
	}
	if got := collected(&res); !slices.Equal(got, wantCollected) {
		t.Errorf("the purge collected\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantCollected, "\n"))
	}
	afterObjs := storedObjects(t, ctx, repoURL)
	if got := slices.Sorted(maps.Keys(afterObjs)); !slices.Equal(got, wantKept) {
		t.Errorf("after the purge the repository holds\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantKept, "\n"))
	}
	for k := range keptRefs {
		if _, ok := afterObjs[k]; !ok {
			t.Errorf("%s, which a kept set references, was deleted", k)
		}
	}
	for k := range onlyPurged {
		if _, ok := afterObjs[k]; ok {
			t.Errorf("%s, referenced only by purged sets, is still stored", k)
		}
	}
	for k := range afterObjs {
		if (strings.Contains(k, purged[0]) || strings.Contains(k, purged[1])) && !keptRefs[k] {
			t.Errorf("%s names a purged set and no kept set references it", k)
		}
	}

	for _, args := range [][]string{{"--read-data"}, {"--read-data", "--identity", identity}} {
		if out := expect(t, 0, "", append([]string{"verify", "--repo", repoURL}, args...)...); !strings.Contains(out, "0 problem(s)") {
			t.Fatalf("verify %v after the purge:\n%s", args, out)
		}
	}
	// One schema at a time from the older kept set, into empty databases:
	// tenant_z's chunks lie in the purged first set's pack.
	for _, s := range []string{splitKept, splitStill} {
		dst := testenv.NewDatabase(t)
		expect(t, 0, "", "restore", "--repo", repoURL, "--target", dst, "--tenant", s, "--snapshot", keptIDs[0], "--create-schema", "--yes", "--identity", identity)
		if got := splitRows(t, ctx, dst, s); got != kept[2][s] {
			t.Errorf("%s from set %s after the purge:\n got %s\nwant %s", s, keptIDs[0], got, kept[2][s])
		}
	}
	out = expect(t, 0, "", "list", "--repo", repoURL, "--identity", identity)
	for i, id := range ids {
		if strings.Contains(out, id) != (i >= 2) {
			t.Fatalf("list after the purge:\n%s", out)
		}
	}
}
